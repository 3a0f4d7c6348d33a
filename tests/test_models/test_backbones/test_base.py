# Copyright (c) mmvheat contributors. All rights reserved.
"""What the backbones share (``mmvheat.models.backbones.base``): layer depths
for mmpretrain's layer-wise learning-rate decay, the common arguments and
the check of the input (``mmvheat.models.backbones.input_check``)."""
import copy
import inspect
import re
import warnings

import pytest
import torch

from mmvheat.models import MPViT, VHeat, switch_to_deploy
from mmvheat.models.backbones.input_check import check_images

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


# -- the input check ---------------------------------------------------------
BACKBONES = [(VHeat, dict(arch=VHEAT_ARCH, img_size=32)),
             (MPViT, dict(arch=MPVIT_ARCH))]


@pytest.fixture(scope='module', params=BACKBONES, ids=['VHeat', 'MPViT'])
def backbone(request):
    cls, kwargs = request.param
    torch.manual_seed(0)
    return cls(out_indices=(0, 1, 2, 3), **kwargs).eval()


BAD_INPUTS = [
    ('3-D', (3, 32, 32), torch.float32,
     'got a 3-D input of shape (3, 32, 32)'),
    ('5-D', (1, 1, 3, 32, 32), torch.float32, 'got a 5-D input'),
    ('4 channels', (1, 4, 32, 32), torch.float32,
     'got C=4 (shape (1, 4, 32, 32))'),
    ('gray', (2, 1, 32, 32), torch.float32, 'got C=1'),
    ('0 rows', (1, 3, 0, 32), torch.float32,
     'with sides of at least 1 pixel; got 0 x 32'),
    ('0 columns', (1, 3, 32, 0), torch.float32, 'got 32 x 0'),
    ('uint8', (1, 3, 32, 32), torch.uint8,
     "of a floating dtype; got torch.uint8: normalise integer images with "
     "the model's data preprocessor, or convert them with .float()"),
    ('int64', (1, 3, 32, 32), torch.int64, 'got torch.int64'),
    ('float64', (1, 3, 32, 32), torch.float64,
     'got torch.float64 for weights in torch.float32: convert the input '
     '(.to(torch.float32)) or the model (e.g. .double() to run in float64)'),
    ('float16', (1, 3, 32, 32), torch.float16,
     'got torch.float16 for weights in torch.float32'),
]


@pytest.mark.parametrize(
    'shape, dtype, words', [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_named(backbone, shape, dtype, words):
    x = torch.zeros(shape, dtype=dtype)
    with pytest.raises(ValueError) as info:
        backbone(x)
    message = str(info.value)
    assert message.startswith(
        f'{type(backbone).__name__} takes images (B, 3, H, W)')
    assert words in message


def test_not_a_tensor(backbone):
    with pytest.raises(TypeError, match=r'takes images .*; got a list'):
        backbone([torch.zeros(3, 32, 32)])


@pytest.mark.parametrize('h, w', [(1, 1), (7, 31)])
def test_sides_below_the_total_stride(backbone, h, w):
    """Every side of at least one pixel runs: each stride-2 convolution
    (3x3, padding 1) maps a side n to ceil(n / 2), so stage i has
    ceil(n / (4 * 2**i)) pixels, at least one."""
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, h, w))
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape[2:] == (-(-h // stride), -(-w // stride))
        assert torch.isfinite(out).all()


def test_float64_runs_with_float64_weights(backbone):
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        single = backbone(x)
        double = copy.deepcopy(backbone).double()(x.double())
    for a, b in zip(single, double):
        assert b.dtype == torch.float64
        # float32 rounding through a few normalised layers: 1e-6 on the
        # unit-scale maps; a dtype mix-up or a skipped cast is O(1).
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-4)


def test_autocast_casts_other_dtypes(backbone):
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = backbone(x.half())
    assert all(torch.isfinite(out.float()).all() for out in outs)


def test_tracing_records_no_shape_check():
    """While tracing, the shape checks are skipped: a check on the traced
    sizes would warn that it turns a traced value into a Python bool."""
    backbone = VHeat(arch=VHEAT_ARCH, img_size=32).eval()
    x = torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        traced = torch.jit.trace(backbone, x, check_trace=False)
    check_file = inspect.getsourcefile(check_images)
    assert [w for w in caught if w.filename == check_file] == []
    with torch.no_grad():
        for a, b in zip(traced(x), backbone(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('cls, arch', [(VHeat, VHEAT_ARCH),
                                       (MPViT, MPVIT_ARCH)])
def test_construction_draws_from_the_global_generator(cls, arch):
    # Building a backbone draws its initial weights from torch's global
    # generator as it finds it, and leaves it running: another seed gives
    # other weights, every one that is drawn at random (a tensor filled
    # with one value, a norm's ones or a bias's zeros, is the same), and
    # the draws after it differ too. A constructor that reseeds would give
    # every model the same weights and every run the same later draws.
    models, after = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(cls(arch=copy.deepcopy(arch)))
        after.append(torch.rand(8))
    assert not torch.equal(*after)
    random_init = 0
    for (name, p0), p1 in zip(models[0].state_dict().items(),
                              models[1].state_dict().values()):
        if p0.is_floating_point() and p0.numel() > 1 and \
                not torch.all(p0 == p0.flatten()[0]):
            random_init += 1
            assert not torch.equal(p0, p1), name
        else:
            assert torch.equal(p0, p1), name
    assert random_init > 10
