# Copyright (c) mmvheat contributors. All rights reserved.
"""What the backbones share (``mmvheat.models.backbones.base``): layer depths
for mmpretrain's layer-wise learning-rate decay, and the common arguments."""
import inspect
import re

import pytest
import torch

from mmvheat.models import MPViT, VHeat, switch_to_deploy

VHEAT_ARCH = dict(
    depths=[1, 1, 2, 1],
    dims=8,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)
MPVIT_ARCH = dict(
    num_path=[1, 2, 2, 2],
    num_layers=[1, 1, 2, 1],
    embed_dims=[16, 16, 24, 32],
    mlp_ratios=2,
    num_heads=8)

# Layer of each parameter of the two tiny models above, written out by
# hand (5 blocks: the stem is layer 0, the blocks 1..5, and the output norms
# and everything after the backbone layer 6, of 7).
VHEAT_LAYERS = [
    (r'patch_embed\.', 0),
    (r'stages\.0\.', 1),
    (r'stages\.1\.', 2),
    (r'stages\.2\.(downsample|freq_embed|blocks\.0\.)', 3),
    (r'stages\.2\.blocks\.1\.', 4),
    (r'stages\.3\.', 5),
    (r'norm3\.', 6),
]
MPVIT_LAYERS = [
    (r'stem\.', 0),
    (r'stages\.0\.', 1),
    (r'stages\.1\.', 2),
    (r'stages\.2\.(patch_embed|local_block|encoders\.\d\.(cpe|crpe)'
     r'|encoders\.\d\.blocks\.0\.)', 3),
    (r'stages\.2\.(encoders\.\d\.blocks\.1\.|aggregate\.)', 4),
    (r'stages\.3\.', 5),
]


def _expected(layers, name):
    found = [layer for pattern, layer in layers if re.match(pattern, name)]
    assert len(found) == 1, (name, found)
    return found[0]


@pytest.mark.parametrize('cls, arch, layers',
                         [(VHeat, VHEAT_ARCH, VHEAT_LAYERS),
                          (MPViT, MPVIT_ARCH, MPVIT_LAYERS)])
def test_get_layer_depth(cls, arch, layers):
    model = cls(arch=arch)
    for name, _ in model.named_parameters():
        assert model.get_layer_depth(name) == (_expected(layers, name), 7)
        assert model.get_layer_depth('backbone.' + name,
                                     'backbone.') == (_expected(layers,
                                                                name), 7)
    # Outside the backbone (a neck, a head): the last layer.
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (6, 7)


@pytest.mark.parametrize('backbone, layers, channels', [
    (dict(type='mmvheat.VHeat', arch=VHEAT_ARCH,
          img_size=32), VHEAT_LAYERS, 64),
    (dict(type='mmvheat.MPViT', arch=MPVIT_ARCH,
          out_indices=(3, )), MPVIT_LAYERS, 32),
])
def test_layer_decay_in_an_image_classifier(backbone, layers, channels):
    """mmpretrain's LearningRateDecayOptimWrapperConstructor gives each
    parameter ``lr * rate ** (7 - layer - 1)``."""
    import mmpretrain.engine  # noqa: F401  (registers the constructor)
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(
            dict(
                type='ImageClassifier',
                backbone=backbone,
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead', num_classes=3,
                    in_channels=channels)))
        constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
            dict(
                type='LearningRateDecayOptimWrapperConstructor',
                optim_wrapper_cfg=dict(
                    type='OptimWrapper',
                    optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05)),
                paramwise_cfg=dict(layer_decay_rate=0.5)))
        optimizer = constructor(model).optimizer
    groups = {g['param_name']: g for g in optimizer.param_groups}
    assert len(groups) == len(list(model.parameters()))
    for name, group in groups.items():
        if name.startswith('backbone.'):
            layer = _expected(layers, name[len('backbone.'):])
        else:
            layer = 6
        assert group['layer_id'] == layer, name
        assert group['lr'] == pytest.approx(0.5**(7 - layer - 1)), name


@pytest.mark.parametrize('name', [
    'arch', 'in_channels', 'out_indices', 'drop_path_rate', 'frozen_stages',
    'norm_eval', 'with_cp', 'init_cfg'
])
def test_shared_arguments(name):
    """The arguments whose meaning is the same have the same name and, but
    for ``arch`` and ``out_indices``, the same default."""
    vheat = inspect.signature(VHeat).parameters
    mpvit = inspect.signature(MPViT).parameters
    assert name in vheat and name in mpvit
    if name not in ('arch', 'out_indices', 'init_cfg'):
        assert vheat[name].default == mpvit[name].default


@pytest.mark.parametrize('frozen_stages', [5, -2])
def test_bad_frozen_stages(frozen_stages):
    for cls, arch in ((VHeat, VHEAT_ARCH), (MPViT, MPVIT_ARCH)):
        with pytest.raises(ValueError, match='frozen_stages'):
            cls(arch=arch, frozen_stages=frozen_stages)


def test_switch_to_deploy_finds_the_backbones():
    model = torch.nn.ModuleDict(
        dict(
            vheat=VHeat(arch=VHEAT_ARCH, img_size=32),
            mpvit=MPViT(arch=MPVIT_ARCH),
            other=torch.nn.Linear(2, 2)))
    assert switch_to_deploy(model) == ['vheat', 'mpvit']
    assert model['vheat'].deploy and model['mpvit'].deploy
    assert switch_to_deploy(model) == []  # once only
