# Copyright (c) mmvheat contributors. All rights reserved.
"""What the configs must share with the published runs beyond their fields.

* Which parameters get weight decay: the published vHeat detection and
  segmentation configs exempt every parameter whose name contains ``norm``;
  applied to the published dense models' own key names
  (``vheat_official_dense_state_dict_shapes.json``), that rule must give the
  same set as our configs give on our model.
* A published dense checkpoint, converted, loads strictly into the matching
  config's model with no embedding resampled, so that the model computes
  what the published one computed (see ``test_vheat_golden.py``).
* The MPViT UperNet learning rate follows the published (mmcv 1.x) poly
  schedule with its warm-up, step by step.
* vHeat trained from scratch starts as the published model does.
"""
import bisect
import copy
import json
import math
import os.path as osp
import re
from collections import OrderedDict

import pytest
import torch
from mmengine import Config
from mmengine.registry import DefaultScope

import mmvheat  # noqa: F401  (before mmdet/mmseg/mmpretrain)
from mmvheat.converters import convert_vheat_checkpoint

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# published dense model -> (our config, library)
DENSE = {
    'det_tiny_1x': ('vheat/mask-rcnn_vheat-t_fpn_1x_coco.py', 'mmdet'),
    'det_tiny_ms3x':
    ('vheat/mask-rcnn_vheat-t_fpn_ms-crop-3x_coco.py', 'mmdet'),
    'seg_tiny_upernet': ('vheat/vheat-tiny_upernet_8xb2-160k_ade20k-512x512'
                         '.py', 'mmseg'),
}
# mmdet's and mmseg's Swin configs, which the published ones extend.
PUBLISHED_NO_DECAY_KEYS = ('absolute_pos_embed',
                           'relative_position_bias_table', 'norm')
_BUFFER = re.compile(r'\.(running_mean|running_var|num_batches_tracked)$')


def _load_config(name):
    return Config.fromfile(osp.join(ROOT, 'configs', name))


def _build(cfg, library):
    from importlib import import_module
    models = import_module(f'{library}.registry').MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(library):
        return models.build(model_cfg)


@pytest.fixture(scope='module')
def published_dense(reference_dir):
    with open(
            osp.join(reference_dir,
                     'vheat_official_dense_state_dict_shapes.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def dense_models():
    """Our model of each published dense config, built once."""
    torch.manual_seed(0)
    models = {}
    for name, (config, library) in DENSE.items():
        cfg = _load_config(config)
        models[name] = (cfg, library, _build(cfg, library))
    return models


def _stand_in(key_shapes, seed):
    """Random tensors of the published shapes (BatchNorm counters as
    integers), as the published checkpoint holds them."""
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (key,
         torch.tensor(7) if key.endswith('num_batches_tracked') else torch.
         randn(shape, generator=generator))
        for key, shape in key_shapes.items())


@pytest.mark.parametrize('name', sorted(DENSE))
def test_published_dense_checkpoint_loads_strictly(name, published_dense,
                                                   dense_models):
    cfg, library, model = dense_models[name]
    published = published_dense[name]
    assert published['published_config'].endswith({
        'det_tiny_1x':
        'mask_rcnn_fpn_coco_tiny.py',
        'det_tiny_ms3x':
        'mask_rcnn_fpn_coco_tiny_ms_3x.py',
        'seg_tiny_upernet':
        'upernet_vheat_160k_ade20k_512x512_tiny.py'
    }[name])
    # The grid the published backbone was built at is our config's.
    assert cfg.model.backbone.img_size == published['backbone_img_size']

    source = _stand_in(published['state_dict'], seed=len(name))
    converted = convert_vheat_checkpoint({'state_dict': source}).state_dict
    own = model.state_dict()
    # Same keys, and the same shape everywhere: the load hook that resamples
    # a freq_embed of another size has nothing to do.
    assert sorted(converted) == sorted(own)
    mismatched = [k for k, v in converted.items() if v.shape != own[k].shape]
    assert mismatched == []
    model.load_state_dict(converted, strict=True)
    loaded = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key
    side = published['backbone_img_size'] // 4
    assert loaded['backbone.stages.0.freq_embed'].shape == (side, side, 96)


def _our_names(published_keys):
    """``{published key: our key}``, through the converter (which maps the
    keys of a vHeat state dict one to one, in order)."""
    converted = convert_vheat_checkpoint({
        'state_dict':
        OrderedDict((key, torch.zeros(1, 1, 1, 1)) for key in published_keys)
    }).state_dict
    assert len(converted) == len(published_keys)
    return dict(zip(published_keys, converted))


@pytest.mark.parametrize('name', sorted(DENSE))
def test_weight_decay_follows_the_published_rule(name, published_dense,
                                                 dense_models):
    cfg, library, model = dense_models[name]
    published = [
        k for k in published_dense[name]['state_dict'] if not _BUFFER.search(k)
    ]
    ours_for = _our_names(published)
    exempt = {
        ours_for[k]
        for k in published if any(key in k for key in PUBLISHED_NO_DECAY_KEYS)
    }
    # The rule misses the downsample norms (``layers.<i>.<depth>.1``).
    assert 'backbone.stages.1.downsample.norm.weight' not in exempt
    assert 'backbone.stages.0.blocks.0.op.out_norm.bias' in exempt

    from mmengine.optim import build_optim_wrapper
    with DefaultScope.overwrite_default_scope(library):
        wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    decay = {
        id(p): group['weight_decay']
        for group in wrapper.optimizer.param_groups
        for p in group['params']
    }
    base = cfg.optim_wrapper.optimizer.weight_decay
    ours = {n for n, p in model.named_parameters() if decay[id(p)] == 0}
    assert ours == exempt
    assert {
        decay[id(p)]
        for n, p in model.named_parameters() if n not in ours
    } == {base}
    assert len(published) == len(list(model.parameters()))


def _lr_trace(config, steps):
    """The learning rate at each of the first ``steps`` iterations, as
    mmengine's schedulers from the config set it."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = _load_config(config)
    wrapper = build_optim_wrapper(
        torch.nn.Linear(1, 1), copy.deepcopy(cfg.optim_wrapper))
    schedulers = [
        PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper))
        for s in copy.deepcopy(cfg.param_scheduler)
    ]
    trace = []
    for _ in range(steps):
        trace.append(wrapper.optimizer.param_groups[0]['lr'])
        for scheduler in schedulers:
            scheduler.step()
    return trace


def _detectron2_lr(step, milestones):
    """detectron2: linear warm-up over 1000 iterations from factor 0.01
    (``0.01 * (1 - t / 1000) + t / 1000``), steps of 0.1."""
    warmup = 0.01 * (1 - step / 1000) + step / 1000 if step < 1000 else 1.
    return 1e-4 * warmup * 0.1**bisect.bisect_right(milestones, step)


def _mmcv_poly_lr(step):
    """mmcv 1.x under mmseg 0.x: ``poly`` over all 160k iterations,
    multiplied during the first 1500 by ``1 - (1 - t / 1500) * (1 -
    1e-6)``."""
    lr = 6e-5 * (1 - step / 160000)
    if step < 1500:
        lr *= 1 - (1 - step / 1500) * (1 - 1e-6)
    return lr


@pytest.mark.parametrize(
    'config, steps, published', [
        ('mpvit/mask-rcnn_mpvit-t_fpn_1x_coco.py', 90000,
         lambda t: _detectron2_lr(t, [60000, 80000])),
        ('mpvit/mask-rcnn_mpvit-s_fpn_ms-crop-3x_coco.py', 1200,
         lambda t: _detectron2_lr(t, [210000, 250000])),
        ('mpvit/mpvit-small_upernet_8xb2-160k_ade20k-512x512.py', 160000,
         _mmcv_poly_lr),
    ],
    ids=['det-1x', 'det-3x-warmup', 'upernet'])
def test_mpvit_lr_follows_the_published_schedule(config, steps, published):
    """Step by step, against the published frameworks' formulas."""
    for step, lr in enumerate(_lr_trace(config, steps)):
        # mmengine multiplies in a factor per step, each rounded to a few
        # float64 ulps (2.2e-16): over 90k steps, well below 1e-10.
        assert math.isclose(lr, published(step), rel_tol=1e-10), (step, lr)


def _default_linear_bound(layer):
    """PyTorch's default init of a layer with ``fan_in`` inputs (and of a
    1x1 convolution of as many channels): weights and biases uniform in
    +-1/sqrt(fan_in)."""
    return 1 / math.sqrt(layer.in_features)


def test_vheat_from_scratch_initialisation():
    """Published: every ``nn.Linear`` truncated normal 0.02 with zero bias,
    except the MLPs, two 1x1 convolutions left at PyTorch's default
    (kaiming-uniform with a=sqrt(5): uniform in +-1/sqrt(fan_in), and so is
    the bias).

    Checked by distribution, each over >= 36k weights (384 biases) of a
    block, so a tolerance of 10% (20% for biases) on the standard deviation
    is many standard errors wide."""
    from mmpretrain.registry import MODELS
    cfg = _load_config('vheat/vheat-tiny_16xb128_in1k.py')
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = MODELS.build(cfg.model)
    classifier.init_weights()
    block = classifier.backbone.stages[0].blocks[0]
    for layer in (block.mlp.fc1, block.mlp.fc2):
        bound = _default_linear_bound(layer)
        uniform_std = bound / math.sqrt(3)
        assert layer.weight.abs().max() <= bound
        assert layer.weight.std().item() == pytest.approx(uniform_std, rel=0.1)
        assert layer.bias.abs().max() <= bound
        assert layer.bias.std().item() == pytest.approx(uniform_std, rel=0.2)
    for layer in (block.op.linear, block.op.out_linear, block.op.to_k,
                  classifier.head.fc):
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert not layer.bias.any()
