# Copyright (c) mmvheat contributors. All rights reserved.
"""ONNX export (``mmvheat.apis.onnx_export`` and
``tools/deployment/export_onnx.py``): tiny vHeat models exported and
checked."""
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

import mmvheat  # noqa: F401  (before mmpretrain)
from mmvheat.apis import CheckpointMismatchError
from mmvheat.apis.onnx_export import ExportError, export_onnx

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SMALL_ARCH = dict(
    depths=[1, 1, 1, 1],
    dims=16,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)
SEG_BASE = 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'
TOOL = 'tools/deployment/export_onnx.py'


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
    return _write(
        tmp_path, 'cls.py', f"""
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
    return _write(
        tmp_path, 'seg.py', f"""
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
    return _write(
        tmp_path, 'det.py', f"""
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


def _export(config, out, shape, **kwargs):
    """The largest error of every output against PyTorch."""
    _, report = export_onnx(config, None, shape, str(out), **kwargs)
    return max(err for _, _, err in report)


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


@pytest.mark.parametrize('shape', [(64, 64), (64, 96)])
def test_classifier(tmp_path, shape):
    config = _cls_config(tmp_path)
    out = tmp_path / 'backbone.onnx'
    assert _export(config, out, shape) <= 1e-4
    model = _check_file(out)
    assert len(model.graph.output) == 1

    full = tmp_path / 'full.onnx'
    assert _export(config, full, shape, full=True) <= 1e-4
    model = _check_file(full)
    dims = [
        d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    assert dims == [1, 5]


@pytest.mark.parametrize('shape', [(64, 64), (64, 96)])
def test_segmentor(tmp_path, shape):
    config = _seg_config(tmp_path)
    out = tmp_path / 'backbone.onnx'
    assert _export(config, out, shape, opset=17) <= 1e-4
    model = _check_file(out)
    h, w = shape
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in model.graph.output]
    assert shapes == [[1, 16, h // 4, w // 4], [1, 32, h // 8, w // 8],
                      [1, 64, h // 16, w // 16], [1, 128, h // 32, w // 32]]

    full = tmp_path / 'full.onnx'
    assert _export(config, full, shape, full=True) <= 1e-4
    model = _check_file(full)
    dims = [
        d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    assert dims == [1, 4, h // 4, w // 4]


def _no_leftovers(tmp_path):
    assert list(tmp_path.glob('*.onnx')) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_detector_full_refused(tmp_path):
    config = _det_config(tmp_path)
    with pytest.raises(ExportError) as info:
        _export(config, tmp_path / 'det.onnx', (64, 64), full=True)
    assert '--full is not supported for mmdet' in str(info.value)
    assert 'only the backbone' in str(info.value)
    _no_leftovers(tmp_path)


def test_unexportable_op_fails_cleanly(tmp_path):
    config = _seg_config(tmp_path, pool_scales=(1, 2, 3, 6))
    with pytest.raises(ExportError) as info:
        _export(config, tmp_path / 'seg.onnx', (64, 64), full=True)
    message = str(info.value)
    assert 'torch.onnx.export failed' in message
    assert 'adaptive_avg_pool2d' in message
    _no_leftovers(tmp_path)


def test_bad_shape(tmp_path):
    config = _cls_config(tmp_path)
    with pytest.raises(ExportError, match='multiples of 32'):
        _export(config, tmp_path / 'bad.onnx', (64, 50))
    _no_leftovers(tmp_path)


def test_error_above_tolerance_leaves_no_file(tmp_path):
    config = _cls_config(tmp_path)
    with pytest.raises(ExportError, match='exceeds'):
        _export(config, tmp_path / 'strict.onnx', (64, 64), atol=-1)
    assert list(tmp_path.iterdir()) == [tmp_path / 'cls.py']


def _checkpoint_of_another_model(tmp_path):
    """A classifier checkpoint of a vHeat with one more block in stage 3."""
    from mmengine.runner import save_checkpoint

    from mmvheat.apis import build_model
    deeper = dict(SMALL_ARCH, depths=[1, 1, 1, 2])
    model = build_model(
        _cls_config(tmp_path), cfg_options={'model.backbone.arch': deeper})
    path = str(tmp_path / 'deeper.pth')
    save_checkpoint({'state_dict': model.state_dict()}, path)
    return path


def test_checkpoint_of_another_model_refused(tmp_path):
    config = _cls_config(tmp_path)
    checkpoint = _checkpoint_of_another_model(tmp_path)
    out = tmp_path / 'model.onnx'
    with pytest.raises(CheckpointMismatchError) as info:
        export_onnx(config, checkpoint, (64, 64), str(out))
    # The second block of stage 4: 9 layers of 2 weights the model lacks.
    assert str(info.value).startswith(
        f'{checkpoint} does not fit the ImageClassifier: 18 unexpected '
        '[backbone.stages.3.blocks.1.norm1.weight, '
        'backbone.stages.3.blocks.1.norm1.bias, ')
    assert str(info.value).endswith(
        '... 8 more]; load it anyway with --non-strict (strict=False in '
        'Python)')
    assert not out.exists()
    # Loaded anyway on request: the weights that fit are used.
    _, report = export_onnx(
        config, checkpoint, (64, 64), str(out), strict=False)
    assert max(err for _, _, err in report) <= 1e-4 and out.exists()


def test_cli(tmp_path):
    """The command line, end to end: what it prints and its exit codes."""
    config = _cls_config(tmp_path)
    checkpoint = _checkpoint_of_another_model(tmp_path)
    tool = osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py')

    def run(*args):
        return subprocess.Popen(
            [sys.executable, tool, config, *args, '--shape', '64', '64'],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True)

    runs = [
        run('--random-weights', '--out', str(tmp_path / 'ok.onnx')),
        run(checkpoint, '--out', str(tmp_path / 'refused.onnx')),
    ]
    (ok, _), (out, refused) = (p.communicate(timeout=300) for p in runs)
    assert [p.returncode for p in runs] == [0, 1]
    assert ('exported the backbone of ImageClassifier (mmpretrain, random '
            'weights)') in ok
    error = float(ok.split('max abs error vs PyTorch: ')[1].split()[0])
    assert error <= 1e-4
    assert f'saved {tmp_path / "ok.onnx"}' in ok
    assert out == '' and refused.count('\n') == 1
    assert refused.startswith(f'error: {checkpoint} does not fit')
    assert '--non-strict' in refused
    assert not (tmp_path / 'refused.onnx').exists()


def test_cli_bad_inputs(tmp_path, tool_main, capsys):
    """One line and the exit status, and no file written or replaced."""
    config = _cls_config(tmp_path)
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint')
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    out = tmp_path / 'model.onnx'
    shape = ['--shape', '64', '64']
    cases = [
        ([config, '--out', out, *shape], 2, 'a CHECKPOINT is required'),
        ([config, 'none', '--out', out,
          *shape], 2, "CHECKPOINT 'none': pass --random-weights"),
        ([config, corrupt, '--random-weights', '--out', out,
          *shape], 2, 'give a CHECKPOINT or --random-weights, not both'),
        ([config, corrupt, '--out', out,
          *shape], 1, f'{corrupt}: is not a PyTorch checkpoint'),
        ([config, corrupt, '--out', corrupt,
          *shape], 1, f'the output {corrupt} is the input {corrupt}'),
        ([config, '--random-weights', '--out', config,
          *shape], 1, f'the output {config} is the input {config}'),
        ([config, '--random-weights', '--out', a_file / 'x.onnx', *shape], 1,
         f'cannot write {a_file}/x.onnx: {a_file} is not a directory'),
        ([config, '--random-weights', '--out', out, '--shape', '64',
          '50'], 1, '--shape 64 50: height and width must be multiples of 32'),
        ([tmp_path / 'nope.py', '--random-weights', '--out', out,
          *shape], 1, f'{tmp_path}/nope.py: no such config file'),
    ]
    for argv, status, message in cases:
        got_status, err = tool_main(TOOL, argv, capsys)
        assert got_status == status, (argv, err)
        assert err.startswith(f'error: {message}'), (argv, err)
        assert err.count('\n') == 1, err
    # argparse refuses a side of 0 itself.
    status, err = tool_main(
        TOOL, [config, '--random-weights', '--out', out, '--shape', '0', '64'],
        capsys)
    assert status == 2 and 'argument --shape: must be at least 1, got 0' in err
    assert not out.exists()
    assert corrupt.read_bytes() == b'not a checkpoint'
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'a_file', 'cls.py', 'corrupt.pth'
    ]
