# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/deployment/export_onnx.py: tiny vHeat models exported and checked."""
import importlib.util
import os.path as osp
import textwrap

import mmvheat  # noqa: F401  (before mmpretrain)
import pytest
import torch

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SMALL_ARCH = dict(depths=[1, 1, 1, 1], dims=16, post_norm=False,
                  layer_scale=None, mlp_ratio=2.)
SEG_BASE = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        'export_onnx', osp.join(ROOT, 'tools', 'deployment',
                                'export_onnx.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _cls_config(tmp_path):
    return _write(tmp_path, 'cls.py', f"""
        default_scope = 'mmpretrain'
        model = dict(
            type='ImageClassifier',
            backbone=dict(type='mmvheat.VHeat', arch={SMALL_ARCH!r},
                          img_size=64, out_indices=(3, )),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=5, in_channels=128,
                      loss=dict(type='CrossEntropyLoss')))
        """)


def _seg_config(tmp_path, pool_scales=(1, )):
    # UPerHead's pooling to 2, 3, 6 does not divide the 2x2 (2x3) last map:
    # the TorchScript exporter refuses adaptive_avg_pool2d there.
    return _write(tmp_path, 'seg.py', f"""
        _base_ = {SEG_BASE!r}
        norm_cfg = dict(type='BN', requires_grad=True)
        model = dict(
            pretrained=None,
            data_preprocessor=dict(size=(64, 64)),
            backbone=dict(_delete_=True, type='mmvheat.VHeat',
                          arch={SMALL_ARCH!r}, out_indices=(0, 1, 2, 3),
                          img_size=64),
            decode_head=dict(in_channels=[16, 32, 64, 128], channels=16,
                             pool_scales={pool_scales!r}, num_classes=4,
                             norm_cfg=norm_cfg),
            auxiliary_head=dict(in_channels=64, channels=16, num_classes=4,
                                norm_cfg=norm_cfg))
        """)


def _det_config(tmp_path):
    return _write(tmp_path, 'det.py', f"""
        default_scope = 'mmdet'
        model = dict(
            type='RetinaNet',
            data_preprocessor=dict(
                type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                pad_size_divisor=32),
            backbone=dict(type='mmvheat.VHeat', arch={SMALL_ARCH!r},
                          out_indices=(1, 2, 3), img_size=64),
            neck=dict(type='FPN', in_channels=[32, 64, 128],
                      out_channels=16, start_level=0,
                      add_extra_convs='on_input', num_outs=5),
            bbox_head=dict(
                type='RetinaHead', num_classes=3, in_channels=16,
                stacked_convs=1, feat_channels=16,
                anchor_generator=dict(
                    type='AnchorGenerator', octave_base_scale=4,
                    scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                    strides=[8, 16, 32, 64, 128]),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                                target_means=[0., 0., 0., 0.],
                                target_stds=[1., 1., 1., 1.]),
                loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                              alpha=0.25, loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0)))
        """)


def _export(config, out, shape, *extra):
    return tool.main([config, 'none', '--shape', *map(str, shape),
                      '--out', str(out), *extra])


def _check_file(out):
    assert osp.isfile(out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ['input']
    # The folded filters decay ** k are constants: neither freq_embed's
    # resampling nor to_k's exponential is left in the backbone's stages.
    ops = {n.op_type for n in model.graph.node if 'stages.' in n.name}
    assert ops and not ops & {'Exp', 'Resize', 'Relu'}, ops
    # The folded filters are constants: no leftover temporary files.
    assert [p.name for p in out.parent.iterdir()
            if p.name.startswith('.')] == []
    return model


def _error(capsys):
    out = capsys.readouterr()
    return float(out.out.split('max abs error vs PyTorch: ')[1].split()[0])


@pytest.mark.parametrize('shape', [(64, 64), (64, 96)])
def test_classifier(tmp_path, capsys, shape):
    config = _cls_config(tmp_path)
    out = tmp_path / 'backbone.onnx'
    assert _export(config, out, shape) == 0
    model = _check_file(out)
    assert len(model.graph.output) == 1
    assert _error(capsys) <= 1e-4

    full = tmp_path / 'full.onnx'
    assert _export(config, full, shape, '--full') == 0
    model = _check_file(full)
    dims = [d.dim_value
            for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 5]
    assert _error(capsys) <= 1e-4


@pytest.mark.parametrize('shape', [(64, 64), (64, 96)])
def test_segmentor(tmp_path, capsys, shape):
    config = _seg_config(tmp_path)
    out = tmp_path / 'backbone.onnx'
    assert _export(config, out, shape, '--opset', '17') == 0
    model = _check_file(out)
    h, w = shape
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in model.graph.output]
    assert shapes == [[1, 16, h // 4, w // 4], [1, 32, h // 8, w // 8],
                      [1, 64, h // 16, w // 16], [1, 128, h // 32, w // 32]]
    assert _error(capsys) <= 1e-4

    full = tmp_path / 'full.onnx'
    assert _export(config, full, shape, '--full') == 0
    model = _check_file(full)
    dims = [d.dim_value
            for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 4, h // 4, w // 4]
    assert _error(capsys) <= 1e-4


def test_detector_full_refused(tmp_path, capsys):
    config = _det_config(tmp_path)
    out = tmp_path / 'det.onnx'
    assert _export(config, out, (64, 64), '--full') == 1
    err = capsys.readouterr().err
    assert '--full is not supported for mmdet' in err
    assert 'only the backbone' in err
    assert list(tmp_path.glob('*.onnx')) == []
    assert [p.name for p in tmp_path.iterdir()
            if p.name.startswith('.')] == []


def test_unexportable_op_fails_cleanly(tmp_path, capsys):
    config = _seg_config(tmp_path, pool_scales=(1, 2, 3, 6))
    out = tmp_path / 'seg.onnx'
    assert _export(config, out, (64, 64), '--full') == 1
    err = capsys.readouterr().err
    assert 'torch.onnx.export failed' in err and 'adaptive_avg_pool2d' in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()
            if p.name.startswith('.')] == []


def test_bad_shape(tmp_path, capsys):
    config = _cls_config(tmp_path)
    out = tmp_path / 'bad.onnx'
    assert _export(config, out, (64, 50)) == 1
    assert 'multiples of 32' in capsys.readouterr().err
    assert not out.exists()


def test_error_above_tolerance_leaves_no_file(tmp_path, capsys):
    config = _cls_config(tmp_path)
    out = tmp_path / 'strict.onnx'
    assert _export(config, out, (64, 64), '--atol', '-1') == 1
    assert 'exceeds' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / 'cls.py']
