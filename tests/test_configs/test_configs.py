# Copyright (c) mmvheat contributors. All rights reserved.
"""Every config under ``configs/`` loads, builds and wires up.

For each ``.py`` file (found recursively, so configs added later are covered
too): ``Config.fromfile``; the model built in the registry of the library its
``default_scope`` names, with the backbone's pretrained init disabled; the
backbone's output channels matched against the neck or heads; the optimizer
wrapper built on that model; every pipeline (dataloaders, ``*_pipeline``
variables, ``tta_pipeline``) built transform by transform with the library's
``TRANSFORMS``; and ``tta_model`` built around the model. Datasets are built
(lazily) only where their ``data_root`` exists. A config without ``model``
(a fragment such as ``mask-rcnn_tta.py``, meant as a ``_base_``) must build
its pipelines in one of the libraries' scopes.

The vHeat configs are also checked against the published recipes
(``RECIPES`` below, from the project's vHeat facts). Each model is built
once; vHeat-B takes the longest (about 3 s).
"""
import copy
import glob
import importlib
import os.path as osp

import pytest
import torch
from mmengine import Config
from mmengine.registry import DefaultScope

import mmvheat  # noqa: F401  (before mmpretrain)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(ROOT, 'configs')
CONFIGS = sorted(
    osp.relpath(path, CONFIG_DIR)
    for path in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True))
LIBRARIES = ('mmdet', 'mmseg', 'mmpretrain')
#: The detection and segmentation configs: test_tta.py merges their
#: test-time augmentation end to end (test_config fails any other config
#: that has a ``tta_pipeline``).
TTA_CONFIGS = [
    name for name in CONFIGS
    if (osp.basename(name).startswith('mask-rcnn_') or '_upernet_' in name)
    and name != 'vheat/mask-rcnn_tta.py'
]

VHEAT_DIMS = dict(
    tiny=[96, 192, 384, 768],
    small=[96, 192, 384, 768],
    base=[128, 256, 512, 1024])


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores
    yield
    torch.set_num_threads(threads)


def _registry(library, name):
    return getattr(importlib.import_module(f'{library}.registry'), name)


def _load(name):
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def _build_optim_wrapper(model, optim_wrapper):
    """``build_optim_wrapper``; without CUDA, mmengine's AmpOptimWrapper
    (which asserts a GPU) as this project's CPU equivalent."""
    from mmengine.optim import build_optim_wrapper

    import mmvheat.engine  # noqa: F401  (registers CPUAmpOptimWrapper)
    optim_wrapper = copy.deepcopy(optim_wrapper)
    if optim_wrapper.get('type') == 'AmpOptimWrapper' and \
            not torch.cuda.is_available():
        optim_wrapper.type = 'CPUAmpOptimWrapper'
    return build_optim_wrapper(model, optim_wrapper)


# -- pipelines ---------------------------------------------------------------
def _pipelines(cfg):
    """``{where: [transform cfgs]}`` for every pipeline in the config."""
    found = {}

    def visit(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                here = f'{where}.{key}' if where else key
                if (key == 'pipeline' or key.endswith('_pipeline')) and \
                        isinstance(value, list):
                    found[here] = value
                else:
                    visit(value, here)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                visit(value, f'{where}[{i}]')

    visit(cfg.to_dict(), '')
    return found


def _build_pipelines(pipelines, library):
    transforms = _registry(library, 'TRANSFORMS')
    with DefaultScope.overwrite_default_scope(library):
        return {
            where: [transforms.build(copy.deepcopy(t)) for t in pipeline]
            for where, pipeline in pipelines.items()
        }


def _datasets_with_data(cfg):
    """Dataset configs of the dataloaders whose ``data_root`` exists."""
    datasets = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg.get(loader, {}).get('dataset')
        root = dataset
        while isinstance(root, dict) and 'data_root' not in root and \
                isinstance(root.get('dataset'), dict):
            root = root['dataset']  # dataset wrappers
        if isinstance(root, dict) and root.get('data_root') and osp.isdir(
                osp.join(ROOT, root['data_root'])):
            datasets.append(dataset)
    return datasets


# -- the published recipes ---------------------------------------------------
def _check_classification(cfg, model, arch, drop_path):
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.img_size,
            tuple(backbone.out_indices)) == ('mmvheat.VHeat', arch, 224, (3, ))
    assert backbone.drop_path_rate == drop_path
    assert cfg.model.neck.type == 'GlobalAveragePooling'
    assert cfg.model.head.type == 'LinearClsHead'
    assert cfg.model.head.num_classes == 1000
    assert cfg.model.head.loss.label_smooth_val == 0.1
    assert [(a.type, a.alpha)
            for a in cfg.model.train_cfg.augments] == [('Mixup', 0.8),
                                                       ('CutMix', 1.0)]
    assert cfg.train_dataloader.batch_size == 128
    assert cfg.auto_scale_lr.base_batch_size == 16 * 128
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW'
    assert optimizer.lr == pytest.approx(5e-4 * 2048 / 512)
    assert (optimizer.betas, optimizer.eps) == ((0.9, 0.999), 1e-8)
    assert optimizer.weight_decay == 0.08
    assert cfg.optim_wrapper.clip_grad.max_norm == 5.0
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.dtype,
            cfg.optim_wrapper.loss_scale) == ('AmpOptimWrapper', 'float16',
                                              'dynamic')
    checkpoint = cfg.default_hooks.checkpoint
    assert (checkpoint.interval, checkpoint.save_best,
            checkpoint.rule) == (10, 'accuracy/top1', 'greater')
    assert cfg.train_cfg.max_epochs == 300
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 20)
    assert optimizer.lr * warmup.start_factor == pytest.approx(5e-7 * 4)
    assert (cosine.type, cosine.begin, cosine.end) == ('CosineAnnealingLR', 20,
                                                       300)
    assert optimizer.lr * cosine.eta_min_ratio == pytest.approx(5e-6 * 4)
    (ema, ) = cfg.custom_hooks
    assert (ema.type, ema.momentum) == ('EMAHook', 1e-4)

    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    rand_augment = train['RandAugment']  # rand-m9-mstd0.5-inc1
    assert (rand_augment.policies, rand_augment.num_policies,
            rand_augment.magnitude_level,
            rand_augment.magnitude_std) == ('timm_increasing', 2, 9, 0.5)
    assert train['RandomErasing'].erase_prob == 0.25
    assert train['RandomResizedCrop'].interpolation == 'bicubic'
    assert model.head.fc.in_features == model.backbone.out_channels[-1]

    # No weight decay on 1-D weights (norms, biases, layer scales); the
    # 3-D frequency embeddings decay.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        wrapper = _build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {
        id(p): group['weight_decay']
        for group in wrapper.optimizer.param_groups
        for p in group['params']
    }
    for name, param in model.named_parameters():
        expected = 0. if param.dim() == 1 else 0.08
        assert decay[id(param)] == pytest.approx(expected), name
    assert any(
        name.endswith('freq_embed') for name, _ in model.named_parameters())


def _check_dense(cfg, arch, drop_path, img_size=512):
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.img_size,
            tuple(backbone.out_indices)) == ('mmvheat.VHeat', arch, img_size,
                                             (0, 1, 2, 3))
    assert backbone.drop_path_rate == drop_path
    # The ImageNet checkpoint, enlarged to the backbone's grid where that
    # is not the pretraining size.
    checkpoint = (f'checkpoints/vheat-{arch}_in1k.pth' if img_size == 224 else
                  f'checkpoints/vheat-{arch}_in1k-{img_size}.pth')
    assert cfg.checkpoint == checkpoint
    assert backbone.init_cfg == dict(
        type='Pretrained', checkpoint=checkpoint, prefix='backbone.')
    assert 'tta_model' in cfg and 'tta_pipeline' in cfg
    # The published 'norm' rule, which misses the downsample norms.
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'downsample.norm': dict(decay_mult=1.),
    }


def _check_detection(cfg, arch, drop_path, epochs, milestones, img_size=512):
    _check_dense(cfg, arch, drop_path, img_size)
    assert cfg.model.neck.in_channels == VHEAT_DIMS[arch]
    assert (cfg.val_dataloader.batch_size,
            cfg.test_dataloader.batch_size) == (2, 1)
    assert cfg.train_cfg.max_epochs == epochs
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR', 1000,
                                                          False)
    assert (steps.type, steps.milestones) == ('MultiStepLR', milestones)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr,
            optimizer.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.tta_model.type == 'mmvheat.MaskDetTTAModel'
    tta = cfg.tta_pipeline[-1]
    assert tta.type == 'TestTimeAug'
    scales, flips = tta.transforms[:2]
    assert len({t.scale for t in scales}) > 1
    assert sorted(t.prob for t in flips) == [0., 1.]
    if epochs == 36:  # DETR-style multi-scale resize / crop
        train = [t.type for t in cfg.train_dataloader.dataset.pipeline]
        assert 'RandomChoice' in train
        choice = cfg.train_dataloader.dataset.pipeline[train.index(
            'RandomChoice')]
        shorter = {s[0] for s in choice.transforms[0][0].scales}
        assert (min(shorter), max(shorter)) == (480, 800)


def _check_segmentation(cfg, arch, drop_path):
    _check_dense(cfg, arch, drop_path)
    dims = VHEAT_DIMS[arch]
    assert cfg.model.decode_head.in_channels == dims
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.model.auxiliary_head.in_channels == dims[2]
    assert cfg.model.auxiliary_head.num_classes == 150
    assert cfg.model.test_cfg == dict(
        mode='slide', crop_size=(512, 512), stride=(341, 341))
    assert cfg.train_cfg.max_iters == 160000
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr,
            optimizer.weight_decay) == ('AdamW', 6e-5, 0.01)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin,
            warmup.end) == ('LinearLR', 1e-6, 0, 1500)
    assert (poly.type, poly.begin, poly.end, poly.power,
            poly.eta_min) == ('PolyLR', 1500, 160000, 1., 0.)
    assert (cfg.train_cfg.val_interval,
            cfg.default_hooks.checkpoint.interval) == (16000, 16000)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.crop_size == (512, 512)
    assert cfg.tta_model.type == 'SegTTAModel'
    scales = cfg.tta_pipeline[-1].transforms[0]
    assert [t.scale_factor
            for t in scales] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


MPVIT_DIMS = dict(
    tiny=[96, 176, 216, 216],
    xsmall=[128, 192, 256, 256],
    small=[128, 216, 288, 288],
    base=[224, 368, 480, 480])


def _decay_of_every_parameter(cfg, model, library):
    """Weight decay of each parameter of ``model`` under the config's
    optimizer."""
    with DefaultScope.overwrite_default_scope(library):
        wrapper = _build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {
        id(p): group['weight_decay']
        for group in wrapper.optimizer.param_groups
        for p in group['params']
    }
    return {name: decay[id(p)] for name, p in model.named_parameters()}


def _check_mpvit_backbone(cfg, model, library, arch, drop_path):
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, tuple(backbone.out_indices),
            backbone.norm_cfg.type) == ('mmvheat.MPViT', arch, (0, 1, 2, 3),
                                        'SyncBN')
    assert backbone.drop_path_rate == drop_path
    assert backbone.init_cfg == dict(
        type='Pretrained',
        checkpoint=f'checkpoints/mpvit-{arch}_in1k_mmvheat.pth',
        prefix='backbone.')
    # Weight decay on every parameter, norms and biases included.
    assert cfg.optim_wrapper.paramwise_cfg == {}
    decay = _decay_of_every_parameter(cfg, model, library)
    base = cfg.optim_wrapper.optimizer.weight_decay
    assert set(decay.values()) == {base}
    assert any('norm' in name for name in decay)


def _check_mpvit_detection(cfg, model, arch, drop_path, iterations,
                           milestones):
    _check_mpvit_backbone(cfg, model, 'mmdet', arch, drop_path)
    assert cfg.model.neck.in_channels == MPVIT_DIMS[arch]
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.betas,
            optimizer.weight_decay) == ('AdamW', 1e-4, (0.9, 0.999), 0.05)
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0, norm_type=2)
    # Iterations of 16 images, as published (detectron2 counts iterations).
    assert (cfg.train_cfg.type,
            cfg.train_cfg.max_iters) == ('IterBasedTrainLoop', iterations)
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end,
            warmup.by_epoch) == ('LinearLR', 0.01, 0, 1001, False)
    assert (steps.type, steps.milestones, steps.gamma, steps.end,
            steps.by_epoch) == ('MultiStepLR', milestones, 0.1, iterations,
                                False)
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    assert cfg.default_hooks.checkpoint.by_epoch is False
    assert cfg.log_processor.by_epoch is False
    # Images without annotations are kept, and none is dropped for its size.
    assert cfg.train_dataloader.dataset.filter_cfg == dict(
        filter_empty_gt=False, min_size=0)
    if iterations == 270000:  # DETR-style multi-scale resize / crop
        assert 'RandomChoice' in [
            t.type for t in cfg.train_dataloader.dataset.pipeline
        ]


def _check_mpvit_segmentation(cfg, model, arch, drop_path):
    _check_mpvit_backbone(cfg, model, 'mmseg', arch, drop_path)
    warmup, poly = cfg.param_scheduler  # see test_published_recipes.py
    assert (warmup.type, warmup.start_factor, warmup.begin,
            warmup.end) == ('LinearLR', 1e-6, 0, 1501)
    assert (poly.type, poly.begin, poly.end, poly.power,
            poly.eta_min) == ('PolyLR', 0, 160001, 1., 0.)
    assert cfg.model.decode_head.in_channels == MPVIT_DIMS[arch]
    assert cfg.model.test_cfg.mode == 'whole'
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr,
            optimizer.weight_decay) == ('AdamW', 6e-5, 0.01)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_cfg.val_interval == 16000
    assert cfg.train_dataloader.batch_size == 2


def _recipes():
    recipes = {}
    for arch, drop_path in (('tiny', .1), ('xsmall', .1), ('small', .2),
                            ('base', .4)):
        short = {'xsmall': 'xs'}.get(arch, arch[0])
        recipes[f'mpvit/mask-rcnn_mpvit-{short}_fpn_1x_coco.py'] = (
            _check_mpvit_detection, arch, drop_path, 90000, [60000, 80000])
        recipes[f'mpvit/mask-rcnn_mpvit-{short}_fpn_ms-crop-3x_coco.py'] = (
            _check_mpvit_detection, arch, drop_path, 270000, [210000, 250000])
    for arch, drop_path in (('small', .2), ('base', .4)):
        recipes[f'mpvit/mpvit-{arch}_upernet_8xb2-160k_ade20k-512x512.py'] = (
            _check_mpvit_segmentation, arch, drop_path)
    for arch, drop_path in (('tiny', .1), ('small', .3), ('base', .5)):
        recipes[f'vheat/vheat-{arch}_16xb128_in1k.py'] = (
            _check_classification, arch, drop_path)
        recipes[f'vheat/mask-rcnn_vheat-{arch[0]}_fpn_1x_coco.py'] = (
            _check_detection, arch, drop_path, 12, [8, 11])
    # The published vHeat-T 3x config sets no img_size: 224.
    for arch, drop_path, img_size in (('tiny', .2, 224), ('small', .4, 512)):
        recipes[f'vheat/mask-rcnn_vheat-{arch[0]}_fpn_ms-crop-3x_coco.py'] = (
            _check_detection, arch, drop_path, 36, [27, 33], img_size)
    for arch, drop_path in (('tiny', .3), ('small', .4), ('base', .5)):
        recipes[f'vheat/vheat-{arch}_upernet_8xb2-160k_ade20k-512x512.py'] = (
            _check_segmentation, arch, drop_path)
    return recipes


RECIPES = _recipes()


def test_recipes_name_existing_configs():
    assert sorted(set(RECIPES) - set(CONFIGS)) == []


# -- every config ------------------------------------------------------------
def _check_channels(cfg, model):
    """The backbone's outputs are what the neck or heads expect."""
    out_channels = getattr(
        getattr(model, 'backbone', None), 'out_channels', None)
    if not isinstance(out_channels, (list, tuple)):
        return
    out_channels = list(out_channels)
    neck = cfg.model.get('neck')
    if isinstance(neck, dict) and 'in_channels' in neck:
        assert list(neck.in_channels) == out_channels
    decode = cfg.model.get('decode_head')
    if isinstance(decode, dict) and 'in_channels' in decode and not neck:
        index = decode.get('in_index', -1)
        expected = ([out_channels[i] for i in index] if isinstance(
            index, (list, tuple)) else out_channels[index])
        assert decode.in_channels == expected
        auxiliary = cfg.model.get('auxiliary_head')
        if isinstance(auxiliary, dict):
            assert auxiliary.in_channels == out_channels[auxiliary.in_index]
    head = cfg.model.get('head')
    if isinstance(head, dict) and 'in_channels' in head:
        assert head.in_channels == out_channels[-1]


@pytest.mark.parametrize('name', CONFIGS)
def test_config(name):
    cfg = _load(name)
    pipelines = _pipelines(cfg)
    if 'model' not in cfg:
        assert 'default_scope' not in cfg, \
            f'{name} sets default_scope but has no model'
        assert pipelines, f'{name} has neither a model nor a pipeline'
        errors = {}
        for library in LIBRARIES:
            try:
                _build_pipelines(pipelines, library)
                return
            except Exception as exc:  # noqa: BLE001  (tried in every scope)
                errors[library] = f'{type(exc).__name__}: {exc}'
        pytest.fail(f'{name}: pipelines build in no library scope: {errors}')

    if 'tta_pipeline' in cfg:
        assert name in TTA_CONFIGS, \
            f'{name} has a tta_pipeline that test_tta.py does not run'
    # The scope a ``mmdet::`` (etc.) base leaves on the model, failing that.
    library = cfg.get('default_scope') or cfg.model.get('_scope_')
    assert library in LIBRARIES, f'{name}: default_scope {library!r}'
    model_cfg = copy.deepcopy(cfg.model)
    if 'backbone' in model_cfg:
        model_cfg.backbone.init_cfg = None  # no pretrained weights here
    models = _registry(library, 'MODELS')
    with DefaultScope.overwrite_default_scope(library):
        model = models.build(model_cfg)
        if 'tta_model' in cfg:
            tta_model = models.build(dict(cfg.tta_model, module=model))
            assert tta_model.module is model
    _check_channels(cfg, model)

    if 'optim_wrapper' in cfg:
        with DefaultScope.overwrite_default_scope(library):
            wrapper = _build_optim_wrapper(model, cfg.optim_wrapper)
        # Every parameter in exactly one group.
        grouped = [
            id(p) for group in wrapper.optimizer.param_groups
            for p in group['params']
        ]
        assert len(grouped) == len(set(grouped))
        assert set(grouped) == {id(p) for p in model.parameters()}

    built = _build_pipelines(pipelines, library)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader):
            assert any(where.startswith(loader) for where in built), loader
    for dataset in _datasets_with_data(cfg):
        with DefaultScope.overwrite_default_scope(library):
            _registry(library, 'DATASETS').build(
                dict(copy.deepcopy(dataset), lazy_init=True))

    if name in RECIPES:
        check, *args = RECIPES[name]
        if check in (_check_classification, _check_mpvit_detection,
                     _check_mpvit_segmentation):
            check(cfg, model, *args)
        else:
            check(cfg, *args)


def test_missing_pretrained_checkpoint_names_the_tools(tmp_path, monkeypatch):
    """A detector built from a config fails to initialise without the file."""
    cfg = _load('vheat/mask-rcnn_vheat-t_fpn_1x_coco.py')
    monkeypatch.chdir(tmp_path)  # the relative checkpoint path is absent
    models = _registry('mmdet', 'MODELS')
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = models.build(cfg.model)
    with pytest.raises(FileNotFoundError) as info:
        model.init_weights()
    message = str(info.value)
    assert cfg.checkpoint in message
    assert 'tools/interpolate4downstream.py' in message


def test_detection_tta_runs_on_mask_rcnn(tmp_path, monkeypatch):
    """``tools/test.py --tta`` on a Mask R-CNN config, on a small image.

    The config's ``tta_model`` merges masks (mmdet 3.3's ``DetTTAModel``
    refuses them), which is the path checked here: the config's TTA
    pipeline with two small scales
    instead of its three large ones, and few proposals, to stay fast.
    """
    import cv2
    import numpy as np
    from mmengine.dataset import Compose, pseudo_collate
    runner_utils = pytest.importorskip('mmvheat.apis.runner_utils')

    name = osp.join(CONFIG_DIR, 'vheat/mask-rcnn_vheat-t_fpn_1x_coco.py')
    monkeypatch.setenv('LOCAL_RANK', '0')
    args = runner_utils.parse_test_args([name, 'unused.pth', '--tta'])
    cfg = runner_utils.load_config(args)
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rpn.update(nms_pre=50, max_per_img=10)
    cfg = runner_utils.setup_test_cfg(cfg, args, 'mmdet')
    assert cfg.model.module.type == 'MaskRCNN'

    tta = copy.deepcopy(cfg.tta_pipeline)
    stages = tta[-1].transforms
    assert [t.type for t in stages[0]] == ['Resize'] * len(stages[0])
    stages[0] = [
        dict(type='Resize', scale=s, keep_ratio=True)
        for s in ((64, 48), (96, 72))
    ]
    # No annotations to load for a generated image.
    tta[-1].transforms = [
        stage for stage in stages if stage[0]['type'] != 'LoadAnnotations'
    ]
    image = np.random.default_rng(0).integers(
        0, 255, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'image.png'), image)

    with DefaultScope.overwrite_default_scope('mmdet'):
        tta_model = _registry('mmdet', 'MODELS').build(cfg.model).eval()
        data = Compose(tta)(
            dict(img_path=str(tmp_path / 'image.png'), img_id=0))
        assert len(data['inputs']) == 4  # 2 scales x 2 flips
        with torch.no_grad():
            (result, ) = tta_model.test_step(pseudo_collate([data]))
    pred = result.pred_instances
    assert pred.masks.shape[1:] == (48, 64)  # the original image
    assert len(pred.masks) == len(pred.bboxes) == len(pred.scores)


@pytest.mark.parametrize('name', [
    'vheat/demo/mask-rcnn_vheat-t_fpn_demo-shapes-128.py',
    'mpvit/demo/mask-rcnn_mpvit-t_fpn_demo-shapes-128.py'
])
def test_demo_tta_views_start_at_the_training_scale(name):
    """The TTA merge keeps the most confident box of each cluster, whichever
    view it comes from. On the demo's small shapes a view below the training
    scale is the weakest, and where it wins the merged AP can fall below the
    plain test's (docs/demo.md), so the demo's views start at that scale."""
    cfg = _load(name)
    train_scale = next(t.scale for t in cfg.train_dataloader.dataset.pipeline
                       if t.type == 'Resize')
    test_scale = next(t.scale for t in cfg.test_dataloader.dataset.pipeline
                      if t.type == 'Resize')
    scales, flips = cfg.tta_pipeline[-1].transforms[:2]
    sides = sorted(min(t.scale) for t in scales)
    assert test_scale == train_scale
    assert sides[0] == min(train_scale) and len(sides) > 1
    assert all(t.keep_ratio for t in scales)
    assert sorted(t.prob for t in flips) == [0., 1.]


@pytest.mark.parametrize(
    'name',
    [name for name in CONFIGS if osp.basename(osp.dirname(name)) == 'demo'])
def test_demo_configs_use_the_fused_adamw(name):
    """The demo trains on the CPU, where AdamW's loop over the parameters
    makes a pass over memory per elementwise step; the fused kernel makes
    one per parameter (docs/demo.md). Built as the training tool builds
    it."""
    from mmengine.optim import build_optim_wrapper
    cfg = _load(name)
    model = torch.nn.Linear(2, 2)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)
    assert wrapper.optimizer.defaults['fused'] is True
