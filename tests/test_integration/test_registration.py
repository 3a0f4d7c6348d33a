# Copyright (c) mmvheat contributors. All rights reserved.
"""VHeat reaches mmdet, mmseg and mmpretrain through their registries.

``mmvheat`` is imported first (also by ``tests/conftest.py``): it makes
torchvision importable for mmpretrain on CPU-only machines.
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import pytest
import torch
from mmengine import Config
from mmengine.registry import DefaultScope

import mmvheat  # noqa: F401  (before mmpretrain)
import mmvheat.registry
from mmvheat.models import VHeat

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SMALL_ARCH = dict(
    depths=[1, 1, 1, 1],
    dims=16,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)
LIBRARIES = ['mmdet', 'mmseg', 'mmpretrain']
DET_BASE = 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
SEG_BASE = 'upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # Tiny models: threads only add contention on the shared CPU cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models_registry(library):
    module = __import__(f'{library}.registry', fromlist=['MODELS'])
    return module.MODELS


def _library_config(library, path):
    """``'<library>::<path>'``, once checked that the package ships it."""
    spec = find_spec(library)
    assert spec is not None and spec.origin, f'{library} is not installed'
    filename = osp.join(osp.dirname(spec.origin), '.mim', 'configs', path)
    assert osp.isfile(filename), f'{library} ships no config {path}'
    return f'{library}::{path}'


def _config_from(tmp_path, base, body):
    filename = tmp_path / 'config.py'
    filename.write_text(f'_base_ = {base!r}\n' + textwrap.dedent(body))
    return Config.fromfile(str(filename))


def _assert_backbone_trained(backbone):
    params = [p for p in backbone.parameters() if p.requires_grad]
    assert params
    assert all(p.grad is not None for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


# -- registry lookups ------------------------------------------------------
def test_mmvheat_registry_holds_the_class():
    assert mmvheat.registry.MODELS.get('VHeat') is VHeat
    assert mmvheat.MODELS is mmvheat.registry.MODELS
    assert mmvheat.registry.MODELS.scope == 'mmvheat'


@pytest.mark.parametrize('library', LIBRARIES)
@pytest.mark.parametrize('type_name', ['mmvheat.VHeat', 'VHeat'])
def test_build_from_library_registry(library, type_name):
    registry = _models_registry(library)
    with DefaultScope.overwrite_default_scope(library):
        assert registry.get(type_name) is VHeat
        backbone = registry.build(
            dict(
                type=type_name,
                arch=SMALL_ARCH,
                img_size=64,
                out_indices=(0, 1, 2, 3)))
    assert type(backbone) is VHeat
    assert backbone.out_channels == (16, 32, 64, 128)
    outs = backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16), (1, 32, 8, 8),
                                              (1, 64, 4, 4), (1, 128, 2, 2)]


# -- a fresh interpreter, outside the repository -----------------------------
_RETINANET = """
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type=BACKBONE, arch=ARCH, out_indices=(1, 2, 3),
                  img_size=64),
    neck=dict(type='FPN', in_channels=[32, 64, 128], out_channels=16,
              start_level=0, add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(
        type='RetinaHead', num_classes=3, in_channels=16, stacked_convs=1,
        feat_channels=16,
        anchor_generator=dict(
            type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                        target_means=[0., 0., 0., 0.],
                        target_stds=[1., 1., 1., 1.]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)))
"""

_SCOPED_SCRIPT = """
import sys
if {block_mmpretrain}:
    # An environment without mmpretrain: mmdet.models imports it when it is
    # installed (reid_data_preprocessor.py), and it imports torchvision.
    sys.modules['mmpretrain'] = None
import torch
from mmengine.registry import init_default_scope
from mmdet.registry import MODELS
assert 'mmvheat' not in sys.modules
init_default_scope('mmdet')
BACKBONE = 'mmvheat.VHeat'
ARCH = {arch!r}
{model}
detector = MODELS.build(model)
from mmvheat.models import VHeat
assert type(detector.backbone) is VHeat, type(detector.backbone)
feats = detector(torch.rand(1, 3, 64, 64), mode='tensor')
assert len(feats) == 2 and len(feats[0]) == 5, feats
print('BUILT', type(detector).__name__)
"""

_CUSTOM_IMPORTS_SCRIPT = """
import sys
import torch
from mmengine import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from mmengine.utils import import_modules_from_strings
BACKBONE = 'VHeat'
ARCH = {arch!r}
{model}
cfg = Config(dict(
    custom_imports=dict(imports=['mmvheat'], allow_failed_imports=False),
    model=model))
# Without the plugin imported, the plain name is unknown.
assert 'mmvheat' not in sys.modules
assert 'VHeat' not in ROOT_MODELS.module_dict
# What Config.fromfile and the runner do with custom_imports, first thing.
import_modules_from_strings(**cfg.custom_imports)
from mmdet.registry import MODELS
init_default_scope('mmdet')
detector = MODELS.build(cfg.model)
from mmvheat.models import VHeat
assert type(detector.backbone) is VHeat, type(detector.backbone)
feats = detector(torch.rand(1, 3, 64, 64), mode='tensor')
assert len(feats) == 2 and len(feats[0]) == 5, feats
print('BUILT', type(detector).__name__)
"""


def _run_outside_repo(tmp_path, source):
    (tmp_path / 'build_detector.py').write_text(source)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    env['OMP_NUM_THREADS'] = '1'
    proc = subprocess.run([sys.executable, 'build_detector.py'],
                          cwd=str(tmp_path),
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    return proc


def _assert_built(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'BUILT RetinaNet' in proc.stdout


def test_custom_imports_plain_type_fresh_interpreter(tmp_path):
    _assert_built(
        _run_outside_repo(
            tmp_path,
            _CUSTOM_IMPORTS_SCRIPT.format(arch=SMALL_ARCH, model=_RETINANET)))


def test_scoped_type_fresh_interpreter_without_mmpretrain(tmp_path):
    """``type='mmvheat.VHeat'`` alone, nothing imports mmvheat beforehand."""
    _assert_built(
        _run_outside_repo(
            tmp_path,
            _SCOPED_SCRIPT.format(
                block_mmpretrain=True, arch=SMALL_ARCH, model=_RETINANET)))


def test_scoped_type_fresh_interpreter(tmp_path):
    """The same, with mmpretrain installed, as in this environment.

    mmdet.models imports mmpretrain, which imports torchvision; on a CPU-only
    torch with a CUDA torchvision wheel that import raises ``RuntimeError:
    operator torchvision::nms does not exist`` unless ``import mmvheat``
    (allow_torchvision_without_ops) ran first, which nothing does here: the
    mmdet registry imports ``mmdet.models`` before it looks at the scope
    prefix, so mmvheat cannot get in first. Configs for such an environment
    need ``custom_imports=dict(imports=['mmvheat'])``.
    """
    proc = _run_outside_repo(
        tmp_path,
        _SCOPED_SCRIPT.format(
            block_mmpretrain=False, arch=SMALL_ARCH, model=_RETINANET))
    if (proc.returncode != 0
            and 'operator torchvision::nms does not exist' in proc.stderr
            and 'mmpretrain' in proc.stderr):
        pytest.xfail('torchvision cannot be imported in this environment '
                     'before mmvheat is; mmdet.models imports it through '
                     'mmpretrain')
    _assert_built(proc)


# -- full models from the libraries' own configs -----------------------------
def test_mask_rcnn(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmdet.testing import demo_mm_inputs

    cfg = _config_from(
        tmp_path, _library_config('mmdet', DET_BASE), f"""
        model = dict(
            backbone=dict(_delete_=True, type='mmvheat.VHeat',
                          arch={SMALL_ARCH!r}, out_indices=(0, 1, 2, 3),
                          img_size=64),
            neck=dict(in_channels=[16, 32, 64, 128], out_channels=16),
            rpn_head=dict(in_channels=16, feat_channels=16),
            roi_head=dict(
                bbox_roi_extractor=dict(out_channels=16),
                bbox_head=dict(in_channels=16, fc_out_channels=32,
                               num_classes=3),
                mask_roi_extractor=dict(out_channels=16),
                mask_head=dict(in_channels=16, conv_out_channels=16,
                               num_classes=3)))
        """)
    assert cfg.model.type == 'MaskRCNN' and cfg.default_scope == 'mmdet'
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'MaskRCNN'
    assert type(model.backbone) is VHeat

    torch.manual_seed(0)
    packed = demo_mm_inputs(
        2, [(3, 64, 64), (3, 64, 64)],
        num_items=[2, 3],
        num_classes=3,
        with_mask=True)
    sample = packed['data_samples'][0]
    assert isinstance(sample, DetDataSample)
    assert isinstance(sample.gt_instances.masks, BitmapMasks)

    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    assert {
        'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'
    } <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_backbone_trained(model.backbone)

    model.eval()
    with torch.no_grad():
        results = model(
            **model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2
    for result in results:
        assert isinstance(result, DetDataSample)
        pred = result.pred_instances
        assert pred.bboxes.shape[-1] == 4
        assert len(pred.masks) == len(pred.bboxes) == len(pred.scores)
        assert tuple(pred.masks.shape[-2:]) == tuple(result.ori_shape)


def test_upernet(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = _config_from(
        tmp_path, _library_config('mmseg', SEG_BASE), f"""
        norm_cfg = dict(type='BN', requires_grad=True)
        model = dict(
            pretrained=None,
            data_preprocessor=dict(size=(64, 64)),
            backbone=dict(_delete_=True, type='mmvheat.VHeat',
                          arch={SMALL_ARCH!r}, out_indices=(0, 1, 2, 3),
                          img_size=64),
            decode_head=dict(in_channels=[16, 32, 64, 128], channels=16,
                             num_classes=4, norm_cfg=norm_cfg),
            auxiliary_head=dict(in_channels=64, channels=16, num_classes=4,
                                norm_cfg=norm_cfg))
        """)
    assert cfg.model.decode_head.type == 'UPerHead'
    assert cfg.default_scope == 'mmseg'
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'EncoderDecoder'
    assert type(model.backbone) is VHeat

    torch.manual_seed(0)
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, 4, (1, 64, 64))))
        sample.set_metainfo(
            dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(sample)
    packed = dict(
        inputs=[
            torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
            for _ in range(2)
        ],
        data_samples=samples)

    model.train()
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_backbone_trained(model.backbone)

    model.eval()
    with torch.no_grad():
        results = model(
            **model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2
    for result in results:
        assert isinstance(result, SegDataSample)
        seg = result.pred_sem_seg.data
        assert tuple(seg.shape) == (1, 64, 64)
        assert 0 <= int(seg.min()) and int(seg.max()) < 4


def test_image_classifier():
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample

    cfg = dict(
        type='ImageClassifier',
        data_preprocessor=dict(
            type='ClsDataPreprocessor',
            num_classes=5,
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            to_rgb=True),
        backbone=dict(
            type='mmvheat.VHeat',
            arch=SMALL_ARCH,
            out_indices=(3, ),
            img_size=64),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=5,
            in_channels=128,
            loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg)
    assert type(model.backbone) is VHeat

    torch.manual_seed(0)
    packed = dict(
        inputs=[
            torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
            for _ in range(2)
        ],
        data_samples=[DataSample().set_gt_label(label) for label in (1, 3)])

    model.train()
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    _assert_backbone_trained(model.backbone)

    model.eval()
    with torch.no_grad():
        results = model(
            **model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2
    for result in results:
        assert isinstance(result, DataSample)
        assert tuple(result.pred_score.shape) == (5, )
        assert torch.allclose(result.pred_score.sum(), torch.tensor(1.))
