# Copyright (c) mmvheat contributors. All rights reserved.
"""Unit tests of the MPViT backbone (``mmvheat.models.backbones.mpvit``).

In the spirit of mmpretrain's backbone tests and timm's model tests. All
models but the arch checks are tiny (16-32 channels) so that the whole file
runs in seconds on a small CPU.
"""
import copy
import json
import math
import os.path as osp
import re
import sys

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import mmvheat.models.backbones.mpvit as mpvit_module
from mmvheat.models.backbones.mpvit import MPViT, build_norm, crpe_head_groups

SMALL_ARCH = dict(
    num_path=[1, 2, 2, 2],
    num_layers=[1, 1, 2, 1],
    embed_dims=[16, 16, 24, 32],
    mlp_ratios=2,
    num_heads=8)
SMALL_CHANNELS = (16, 24, 32, 32)
ALL_OUT = (0, 1, 2, 3)
STRIDES = (4, 8, 16, 32)

ARCHS = dict(
    tiny=dict(
        num_path=[2, 3, 3, 3],
        num_layers=[1, 2, 4, 1],
        embed_dims=[64, 96, 176, 216],
        mlp_ratios=[2, 2, 2, 2],
        num_heads=[8, 8, 8, 8]),
    xsmall=dict(
        num_path=[2, 3, 3, 3],
        num_layers=[1, 2, 4, 1],
        embed_dims=[64, 128, 192, 256],
        mlp_ratios=[4, 4, 4, 4],
        num_heads=[8, 8, 8, 8]),
    small=dict(
        num_path=[2, 3, 3, 3],
        num_layers=[1, 3, 6, 3],
        embed_dims=[64, 128, 216, 288],
        mlp_ratios=[4, 4, 4, 4],
        num_heads=[8, 8, 8, 8]),
    base=dict(
        num_path=[2, 3, 3, 3],
        num_layers=[1, 3, 8, 3],
        embed_dims=[128, 224, 368, 480],
        mlp_ratios=[4, 4, 4, 4],
        num_heads=[8, 8, 8, 8]),
)
ALIASES = {
    'tiny': 'tiny',
    't': 'tiny',
    'T': 'tiny',
    'Tiny': 'tiny',
    'xsmall': 'xsmall',
    'xs': 'xsmall',
    'XS': 'xsmall',
    'XSmall': 'xsmall',
    'small': 'small',
    's': 'small',
    'S': 'small',
    'base': 'base',
    'b': 'base',
    'BASE': 'base',
}
# Parameters of the backbone (no classifier) and of the published ImageNet
# model (a 1000-class Linear on top); mpvit.md rounds the latter to
# 5.8M / 10.5M / 22.8M / 74.8M.
BACKBONE_PARAMS = dict(
    tiny=5_626_736, xsmall=10_316_448, small=22_603_400, base=74_364_976)
IMAGENET_PARAMS = dict(
    tiny=5_843_736, xsmall=10_573_448, small=22_892_400, base=74_845_976)
PAPER_PARAMS_M = dict(tiny=5.8, xsmall=10.5, small=22.8, base=74.8)


# -- helpers ------------------------------------------------------------------
def make_model(arch=SMALL_ARCH, seed=0, randomize=True, **kwargs):
    """A small MPViT whose weights all matter (no zero biases, BatchNorm
    statistics away from 0/1)."""
    torch.manual_seed(seed)
    model = MPViT(arch=copy.deepcopy(arch), **kwargs)
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            for name, b in model.named_buffers():
                if name.endswith('running_mean'):
                    b.copy_(0.1 * torch.randn(b.shape, generator=g))
                elif name.endswith('running_var'):
                    b.copy_(1 + 0.5 * torch.rand(b.shape, generator=g))
    return model


def rand_input(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def weighted_loss(outs, seed=123):
    g = torch.Generator().manual_seed(seed)
    return sum(
        (o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)


def grid(n, stride):
    """Size after ``log2(stride)`` stride-2, pad-1, 3x3 convolutions."""
    for _ in range(int(math.log2(stride))):
        n = (n + 1) // 2
    return n


def assert_outs_close(outs, refs, atol=1e-5, rtol=1e-5):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


def batch_norms(module):
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


@pytest.fixture(autouse=True, scope='module')
def single_thread():
    """One intra-op thread: the models are tiny, and OpenMP threads spinning
    on a busy machine make the file many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fast_init(monkeypatch):
    """Skip PyTorch's default init of Linear/Conv2d layers: builds of the
    full-size archs are then instant (structure and counts unaffected)."""
    monkeypatch.setattr(nn.Linear, 'reset_parameters', lambda self: None)
    monkeypatch.setattr(nn.Conv2d, 'reset_parameters', lambda self: None)
    monkeypatch.setattr(mpvit_module, '_init_conv_norm', lambda module: None)


# -- 1. arch ------------------------------------------------------------------
@pytest.mark.parametrize('name', list(ALIASES))
def test_arch_names_and_aliases(name, fast_init):
    expected = ARCHS[ALIASES[name]]
    model = MPViT(arch=name)
    assert model.arch_settings == expected
    dims = expected['embed_dims']
    assert model.out_indices == ALL_OUT
    assert model.out_channels == (dims[1], dims[2], dims[3], dims[3])
    assert model.out_strides == STRIDES
    assert model.stem[0].conv.out_channels == dims[0] // 2
    assert model.stem[1].conv.out_channels == dims[0]
    assert len(model.stages) == 4
    for i, stage in enumerate(model.stages):
        dim = dims[i]
        num_path = expected['num_path'][i]
        assert len(stage.patch_embed.convs) == num_path
        assert stage.patch_embed.convs[0].depthwise.stride == ((1, 1) if i == 0
                                                               else (2, 2))
        assert all(c.depthwise.stride == (1, 1)
                   for c in stage.patch_embed.convs[1:])
        assert len(stage.encoders) == num_path
        assert stage.aggregate.conv.in_channels == dim * (num_path + 1)
        assert stage.aggregate.conv.out_channels == model.stage_channels[i]
        for encoder in stage.encoders:
            assert len(encoder.blocks) == expected['num_layers'][i]
            head_dim = dim // 8
            assert [c.out_channels for c in encoder.crpe.convs
                    ] == [2 * head_dim, 3 * head_dim, 3 * head_dim]
            assert [c.kernel_size for c in encoder.crpe.convs] == [(3, 3),
                                                                   (5, 5),
                                                                   (7, 7)]
            for block in encoder.blocks:
                assert block.attn.num_heads == 8
                assert block.attn.scale == pytest.approx(head_dim**-0.5)
                assert block.mlp.fc1.out_features == (
                    dim * expected['mlp_ratios'][i])


def test_arch_zoo_entries_are_not_shared():
    settings = MPViT.parse_arch('tiny')
    settings['num_layers'][0] = 99
    assert MPViT.arch_zoo['tiny']['num_layers'][0] == 1
    assert MPViT.parse_arch('t')['num_layers'] == [1, 2, 4, 1]


@pytest.mark.parametrize('name', list(ARCHS))
def test_arch_param_counts(name, fast_init):
    model = MPViT(arch=name)
    count = sum(p.numel() for p in model.parameters())
    assert count == BACKBONE_PARAMS[name]
    head = model.embed_dims[-1] * 1000 + 1000
    assert count + head == IMAGENET_PARAMS[name]
    # mpvit.md gives the ImageNet models in millions, rounded (the xsmall
    # entry, 10.5M, is 10.57M: the paper's figure, not a rounding of ours).
    assert abs((count + head) / 1e6 - PAPER_PARAMS_M[name]) < 0.1


def test_param_counts_match_published_shapes(reference_dir):
    """The published checkpoints list every shared position encoding once
    per user; parameters are the keys minus BatchNorm buffers and minus
    those copies."""
    path = osp.join(reference_dir, 'mpvit_official_state_dict_shapes.json')
    with open(path) as f:
        official = json.load(f)
    buffers = ('running_mean', 'running_var', 'num_batches_tracked')
    copies = re.compile(r'\.MHCA_layers\.\d+\.(cpe|crpe|factoratt_crpe\.crpe)'
                        r'\.')
    for key, entry in official.items():
        name = key[len('mpvit_'):]
        shapes = entry['state_dict']
        params = sum(
            math.prod(s) for k, s in shapes.items()
            if not k.endswith(buffers) and not copies.search(k))
        assert params == entry['num_params'] == IMAGENET_PARAMS[name], name
        assert entry['num_params'] - sum(
            math.prod(shapes[f'cls_head.cls.{p}'])
            for p in ('weight', 'bias')) == BACKBONE_PARAMS[name]


def test_arch_unknown_name():
    with pytest.raises(ValueError) as info:
        MPViT(arch='huge')
    message = str(info.value)
    assert 'huge' in message
    for name in ('tiny', 't', 'xsmall', 'xs', 'small', 's', 'base', 'b'):
        assert repr(name) in message


@pytest.mark.parametrize('missing', MPViT.arch_keys)
def test_arch_dict_missing_key(missing):
    arch = {k: v for k, v in SMALL_ARCH.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        MPViT(arch=arch)


@pytest.mark.parametrize('arch, match', [
    (dict(SMALL_ARCH, depths=[1, 1, 1, 1]), 'depths'),
    (dict(SMALL_ARCH, num_stages=3), 'num_stages'),
    (dict(SMALL_ARCH, num_path=[1, 2, 2]), 'num_path'),
    (dict(SMALL_ARCH, embed_dims=[16, 16, 24, 32, 40]), 'embed_dims'),
    (dict(SMALL_ARCH, mlp_ratios=[2, 2]), 'mlp_ratios'),
    (dict(SMALL_ARCH, mlp_ratios=0), 'mlp_ratios'),
    (dict(SMALL_ARCH, num_heads=[8, 8, 8]), 'num_heads'),
    (dict(SMALL_ARCH, num_layers=[1, 0, 1, 1]), 'num_layers'),
    (dict(SMALL_ARCH, num_path=[1, 2, 2.5, 2]), 'num_path'),
    (dict(SMALL_ARCH, embed_dims=[16, 16, 20, 32]), 'num_heads'),
    (dict(SMALL_ARCH, embed_dims=[15, 16, 24, 32], num_heads=1), 'even'),
    (['tiny'], 'str or a dict'),
])
def test_arch_dict_bad_entries(arch, match):
    with pytest.raises(ValueError, match=match):
        MPViT(arch=arch)


def test_arch_golden_form_and_scalars():
    """The reference fixture's form (per-stage lists and ``num_stages``)
    and the scalar shorthand give the same model."""
    lists = dict(
        SMALL_ARCH, mlp_ratios=[2] * 4, num_heads=[8] * 4, num_stages=4)
    a, b = MPViT(arch=lists), MPViT(arch=SMALL_ARCH)
    assert a.arch_settings == b.arch_settings
    assert 'num_stages' not in a.arch_settings
    assert {
        k: v.shape
        for k, v in a.state_dict().items()
    } == {
        k: v.shape
        for k, v in b.state_dict().items()
    }


@pytest.mark.parametrize('num_heads, expected', [
    (8, [(3, 2), (5, 3), (7, 3)]),
    (16, [(3, 4), (5, 6), (7, 6)]),
    (4, [(3, 2), (5, 1), (7, 1)]),
    (3, [(3, 1), (5, 1), (7, 1)]),
    (2, [(3, 2)]),
    (1, [(3, 1)]),
])
def test_crpe_head_groups(num_heads, expected):
    groups = crpe_head_groups(num_heads)
    assert groups == expected
    assert sum(h for _, h in groups) == num_heads


def test_per_stage_heads_and_ratios():
    arch = dict(SMALL_ARCH, num_heads=[1, 2, 4, 8], mlp_ratios=[1, 2, 3, 4.5])
    model = make_model(arch=arch)
    for i, stage in enumerate(model.stages):
        dim = arch['embed_dims'][i]
        heads = arch['num_heads'][i]
        for encoder in stage.encoders:
            assert sum(c.out_channels for c in encoder.crpe.convs) == dim
            assert len(encoder.crpe.convs) == len(crpe_head_groups(heads))
            for block in encoder.blocks:
                assert block.attn.num_heads == heads
                assert block.mlp.fc1.out_features == int(dim *
                                                         arch['mlp_ratios'][i])
    outs = model(rand_input(1, 3, 64, 32))
    assert [o.shape[1] for o in outs] == list(SMALL_CHANNELS)


@pytest.mark.parametrize('out_indices', [4, -5, (0, 4), (1, -5), [7]])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises(ValueError, match='out_indices'):
        MPViT(arch=SMALL_ARCH, out_indices=out_indices)


@pytest.mark.parametrize('out_indices, expected', [
    (-1, (3, )),
    ((-1, ), (3, )),
    ((-4, -1), (0, 3)),
    ((0, -3, 2), (0, 1, 2)),
    (2, (2, )),
])
def test_negative_and_int_out_indices(out_indices, expected):
    model = MPViT(arch=SMALL_ARCH, out_indices=out_indices)
    assert model.out_indices == expected
    assert model.out_channels == tuple(SMALL_CHANNELS[i] for i in expected)
    assert model.out_strides == tuple(STRIDES[i] for i in expected)
    outs = model(rand_input(1, 3, 64, 64))
    assert [o.shape for o in outs] == [(1, SMALL_CHANNELS[i], 64 // STRIDES[i],
                                        64 // STRIDES[i]) for i in expected]


def test_out_channels_tiny(fast_init):
    model = MPViT(arch='tiny')
    assert model.out_channels == (96, 176, 216, 216)
    assert model.out_strides == (4, 8, 16, 32)
    cls_model = MPViT(arch='tiny', out_indices=(3, ))
    assert cls_model.out_channels == (216, )
    assert cls_model.out_strides == (32, )


def test_registry_build():
    from mmengine.registry import MODELS as ROOT_MODELS

    from mmvheat.registry import MODELS
    cfg = dict(arch=SMALL_ARCH, out_indices=(1, 2))
    scoped = MODELS.build(dict(type='MPViT', **cfg))
    prefixed = ROOT_MODELS.build(dict(type='mmvheat.MPViT', **cfg))
    plain = ROOT_MODELS.build(dict(type='MPViT', **cfg))
    for model in (scoped, prefixed, plain):
        assert type(model) is MPViT
        assert model.out_channels == (24, 32)


# -- 2. shapes ----------------------------------------------------------------
@pytest.mark.parametrize('out_indices', [(0, ), (1, ), (2, ), (3, ), ALL_OUT,
                                         (-1, )])
def test_forward_shapes(out_indices):
    model = make_model(out_indices=out_indices)
    model.eval()
    with torch.no_grad():
        outs = model(rand_input(2, 3, 64, 96))
    assert isinstance(outs, tuple)
    assert len(outs) == len(out_indices)
    assert len(model.out_channels) == len(model.out_strides) == len(outs)
    for out, channels, stride in zip(outs, model.out_channels,
                                     model.out_strides):
        assert out.shape == (2, channels, 64 // stride, 96 // stride)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('size', [(65, 47), (33, 31), (32, 32), (17, 9),
                                  (1, 1)])
def test_forward_odd_and_tiny_inputs(size):
    model = make_model()
    model.eval()
    h, w = size
    with torch.no_grad():
        outs = model(rand_input(1, 3, h, w))
    for out, channels, stride in zip(outs, SMALL_CHANNELS, STRIDES):
        assert out.shape == (1, channels, grid(h, stride), grid(w, stride))
        assert torch.isfinite(out).all()


def test_in_channels():
    model = make_model(in_channels=1, out_indices=(3, ))
    model.eval()
    assert model(rand_input(1, 1, 32, 64))[0].shape == (1, 32, 1, 2)


def test_outputs_are_stage_outputs():
    """No output normalization: a classification and a dense backbone with
    the same weights return the same maps."""
    dense = make_model()
    single = make_model(out_indices=(3, ), seed=5)
    single.load_state_dict(dense.state_dict())
    assert dense.state_dict().keys() == single.state_dict().keys()
    dense.eval()
    single.eval()
    x = rand_input(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(single(x)[0], dense(x)[3], atol=0, rtol=0)


# -- 3. frozen stages ---------------------------------------------------------
def test_frozen_stages():
    model = make_model(frozen_stages=2)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    trainable = [model.stages[2], model.stages[3]]
    for module in frozen:
        assert all(not m.training for m in module.modules())
        assert all(not p.requires_grad for p in module.parameters())
    for module in trainable:
        assert all(m.training for m in module.modules())
        assert all(p.requires_grad for p in module.parameters())
    assert model.training

    # eval() then train() keeps them frozen; running statistics stay put.
    model.eval()
    model.train()
    assert all(not m.training for m in model.stages[1].modules())
    stats = {k: v.clone() for k, v in model.stem.state_dict().items()}
    stats.update({
        f's1.{k}': v.clone()
        for k, v in model.stages[1].state_dict().items()
    })
    outs = model(rand_input(2, 3, 32, 32))
    weighted_loss(outs).backward()
    for k, v in model.stem.state_dict().items():
        assert torch.equal(v, stats[k]), k
    for k, v in model.stages[1].state_dict().items():
        assert torch.equal(v, stats[f's1.{k}']), k
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for m in trainable for p in m.parameters())


@pytest.mark.parametrize('frozen_stages', [0, -1])
def test_no_frozen_stages(frozen_stages):
    model = make_model(frozen_stages=frozen_stages)
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_all_stages_frozen():
    model = make_model(frozen_stages=4)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training
                   for m in model.modules() if m not in (model, model.stages))


@pytest.mark.parametrize('frozen_stages', [5, -2])
def test_bad_frozen_stages(frozen_stages):
    with pytest.raises(ValueError, match='frozen_stages'):
        MPViT(arch=SMALL_ARCH, frozen_stages=frozen_stages)


# -- 4. norm_eval and norm_cfg ------------------------------------------------
def test_norm_eval():
    model = make_model(norm_eval=True)
    model.train()
    assert model.training
    norms = batch_norms(model)
    assert len(norms) > 20
    assert all(not m.training for m in norms)
    assert all(m.training for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))
    stats = {
        k: v.clone()
        for k, v in model.state_dict().items() if 'running' in k
    }
    weighted_loss(model(rand_input(2, 3, 32, 32))).backward()
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    # The affine weights still train.
    assert all(m.weight.grad is not None for m in norms)

    # Without norm_eval, training updates the statistics.
    model = make_model(norm_eval=False)
    model.train()
    assert all(m.training for m in batch_norms(model))
    before = model.stem[0].norm.running_mean.clone()
    model(rand_input(2, 3, 32, 32))
    assert not torch.equal(model.stem[0].norm.running_mean, before)


def test_syncbn_config_builds():
    """SyncBN from a config (not run: it needs a process group)."""
    from mmvheat.registry import MODELS
    model = MODELS.build(
        dict(
            type='MPViT',
            arch=SMALL_ARCH,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            norm_eval=True))
    norms = batch_norms(model)
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert all(m.weight.requires_grad for m in norms)
    model.train()
    assert all(not m.training for m in norms)
    # Same keys as a BN model: BN checkpoints load into SyncBN models.
    assert model.state_dict().keys() == MPViT(
        arch=SMALL_ARCH).state_dict().keys()


def test_norm_cfg_options():
    model = MPViT(
        arch=SMALL_ARCH,
        norm_cfg=dict(type='BN', requires_grad=False, eps=1e-3, momentum=0.05))
    norms = batch_norms(model)
    assert all(type(m) is nn.BatchNorm2d for m in norms)
    assert all(m.eps == 1e-3 and m.momentum == 0.05 for m in norms)
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    others = [
        p for n, p in model.named_parameters()
        if not any(p is q for m in norms for q in m.parameters())
    ]
    assert others and all(p.requires_grad for p in others)


@pytest.mark.parametrize(
    'norm_cfg',
    [dict(type='GN'),
     dict(type='NoSuchNorm'),
     dict(eps=1e-5), 'BN'])
def test_bad_norm_cfg(norm_cfg):
    with pytest.raises(ValueError, match='norm_cfg'):
        MPViT(arch=SMALL_ARCH, norm_cfg=norm_cfg)
    with pytest.raises(ValueError):
        build_norm(norm_cfg, 4)


def test_norm_cfg_is_mmcv_s():
    """Any normalization mmcv's ``build_norm_layer`` builds: GroupNorm."""
    model = MPViT(arch=SMALL_ARCH, norm_cfg=dict(type='GN', num_groups=4))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 4 for m in norms)
    assert not batch_norms(model)
    outs = model(rand_input(2, 3, 32, 32))
    assert all(torch.isfinite(o).all() for o in outs)


def test_without_mmcv_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmcv.cnn', None)
    with pytest.raises(ImportError, match='MPViT .*mmcv'):
        MPViT(arch=SMALL_ARCH)


# -- 5. gradient checkpointing ------------------------------------------------
def test_with_cp_same_outputs_and_grads(monkeypatch):
    plain = make_model(drop_path_rate=0.3)
    ckpt = make_model(drop_path_rate=0.3, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    checkpoint = mpvit_module.cp.checkpoint

    def counting_checkpoint(*args, **kw):
        calls.append(1)
        return checkpoint(*args, **kw)

    monkeypatch.setattr(mpvit_module.cp, 'checkpoint', counting_checkpoint)
    x = rand_input(2, 3, 64, 48)
    results = []
    for model in (plain, ckpt):
        model.train()
        inp = x.clone().requires_grad_()
        torch.manual_seed(7)  # the same drop-path masks
        outs = model(inp)
        weighted_loss(outs).backward()
        results.append((outs, inp.grad, {
            n: p.grad
            for n, p in model.named_parameters()
        }))
    # One checkpoint per MHCA block: num_path x num_layers per stage.
    assert len(calls) == sum(
        p * n
        for p, n in zip(SMALL_ARCH['num_path'], SMALL_ARCH['num_layers']))

    (outs_a, gin_a, grads_a), (outs_b, gin_b, grads_b) = results
    assert_outs_close(outs_b, outs_a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gin_b, gin_a, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name] is not None and grads_b[name] is not None, name
        torch.testing.assert_close(
            grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4, msg=name)


def test_with_cp_skipped_without_grad(monkeypatch):
    model = make_model(with_cp=True)

    def fail(*args, **kwargs):
        raise AssertionError('checkpoint used without grad')

    monkeypatch.setattr(mpvit_module.cp, 'checkpoint', fail)
    model.train()
    with torch.no_grad():
        model(rand_input(2, 3, 32, 32))


# -- 6. gradients and finiteness ---------------------------------------------
def test_every_parameter_gets_a_finite_gradient():
    model = make_model()
    model.train()
    weighted_loss(model(rand_input(2, 3, 64, 48))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_outputs_finite():
    model = make_model()
    x = 10 * rand_input(2, 3, 64, 80)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            outs = model(x)
        assert all(torch.isfinite(o).all() for o in outs)


def test_bf16_autocast_finite():
    model = make_model()
    x = rand_input(2, 3, 64, 48)
    model.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
    assert [tuple(o.shape[1:]) for o in outs] == [
        (c, grid(64, s), grid(48, s)) for c, s in zip(SMALL_CHANNELS, STRIDES)
    ]
    assert all(torch.isfinite(o.float()).all() for o in outs)


def test_drop_path_rates_and_eval():
    with_drop = make_model(drop_path_rate=0.5)
    no_drop = make_model(drop_path_rate=0.)
    no_drop.load_state_dict(with_drop.state_dict())
    # Linear in the block's depth; the parallel paths of a stage share it.
    per_stage = [[[b.drop_path.drop_prob for b in e.blocks]
                  for e in s.encoders] for s in with_drop.stages]
    for paths in per_stage:
        assert all(p == paths[0] for p in paths)
    rates = [r for paths in per_stage for r in paths[0]]
    assert len(rates) == sum(SMALL_ARCH['num_layers'])
    assert rates == pytest.approx(
        [0.5 * i / (len(rates) - 1) for i in range(len(rates))])
    with_drop.eval()
    no_drop.eval()
    x = rand_input(2, 3, 64, 64)
    with torch.no_grad():
        assert_outs_close(with_drop(x), no_drop(x), atol=0, rtol=0)
    # ... and active in training.
    with_drop.train()
    no_drop.train()
    torch.manual_seed(0)
    a = with_drop(x)
    b = no_drop(x)
    assert max((o - r).abs().max().item() for o, r in zip(a, b)) > 1e-3


# -- 7. init_weights ----------------------------------------------------------
def test_init_weights():
    model = make_model()
    linears = {
        n: m
        for n, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    layer_norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    norms = batch_norms(model)
    convs = [
        m for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.bias is None
    ]
    assert any((m.weight != 1).any() for m in layer_norms + norms)

    model.init_weights()
    for name, module in linears.items():
        assert not torch.equal(module.weight, before[name]), name
        assert module.weight.abs().max() <= 2.
        assert module.weight.std() < 0.05, name
        assert torch.all(module.bias == 0), name
    for module in layer_norms + norms:
        assert torch.all(module.weight == 1)
        assert torch.all(module.bias == 0)
    # Conv-norm units: normal with std sqrt(2 / (k * k * out_channels)).
    weights = torch.cat([
        m.weight.detach().flatten() /
        (2. / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))**0.5
        for m in convs
    ])
    assert weights.numel() > 5000
    assert weights.std().item() == pytest.approx(1., abs=0.05)
    assert weights.mean().abs() < 0.05


def test_two_models_init_differently():
    a = make_model()
    b = make_model(seed=3)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    a.init_weights()
    torch.manual_seed(2)
    b.init_weights()
    assert not torch.equal(a.stages[2].encoders[0].blocks[0].attn.qkv.weight,
                           b.stages[2].encoders[0].blocks[0].attn.qkv.weight)


# -- 8. pretrained init -------------------------------------------------------
def save_checkpoint(model, path, prefix='backbone.', drop=(), extra=None):
    state_dict = {
        prefix + k: v.clone()
        for k, v in model.state_dict().items() if k not in drop
    }
    state_dict.update(extra or {})
    torch.save({'state_dict': state_dict, 'meta': {}}, str(path))
    return str(path)


def pretrained(path, prefix='backbone.'):
    cfg = dict(type='Pretrained', checkpoint=path)
    if prefix:
        cfg['prefix'] = prefix
    return cfg


def assert_state_dicts_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=0, rtol=0, msg=key)


def test_pretrained_roundtrip(tmp_path):
    source = make_model()
    path = save_checkpoint(source, tmp_path / 'ckpt.pth')
    target = make_model(seed=4, randomize=False, init_cfg=pretrained(path))
    target.init_weights()
    assert_state_dicts_equal(target, source)  # BN statistics included
    x = rand_input(1, 3, 64, 48)
    source.eval()
    target.eval()
    with torch.no_grad():
        assert_outs_close(target(x), source(x), atol=0, rtol=0)


def test_pretrained_without_prefix(tmp_path):
    source = make_model(out_indices=(3, ))
    path = save_checkpoint(source, tmp_path / 'plain.pth', prefix='')
    target = make_model(seed=4, init_cfg=pretrained(path, prefix=None))
    target.init_weights()
    assert_state_dicts_equal(target, source)


@pytest.mark.parametrize('missing', [
    'stem.0.conv.weight', 'stages.1.patch_embed.convs.1.norm.running_var',
    'stages.2.encoders.1.crpe.convs.2.bias',
    'stages.2.encoders.0.blocks.1.attn.qkv.weight',
    'stages.3.local_block.conv2.norm.weight', 'stages.0.aggregate.conv.weight'
])
def test_pretrained_missing_weight_raises(missing, tmp_path):
    source = make_model()
    path = save_checkpoint(source, tmp_path / 'ckpt.pth', drop=(missing, ))
    target = make_model(init_cfg=pretrained(path))
    with pytest.raises(RuntimeError, match='1 weights unset') as info:
        target.init_weights()
    assert missing in str(info.value)


def test_pretrained_unexpected_weight_raises(tmp_path):
    source = make_model()
    path = save_checkpoint(
        source,
        tmp_path / 'ckpt.pth',
        extra={'backbone.norm3.weight': torch.ones(32)})
    target = make_model(init_cfg=pretrained(path))
    with pytest.raises(RuntimeError, match='1 unexpected') as info:
        target.init_weights()
    assert 'norm3.weight' in str(info.value)


def test_pretrained_wrong_arch_raises(tmp_path):
    source = make_model(arch=dict(SMALL_ARCH, num_layers=[1, 1, 3, 1]))
    path = save_checkpoint(source, tmp_path / 'deeper.pth')
    target = make_model(init_cfg=pretrained(path))
    with pytest.raises(RuntimeError, match='unexpected') as info:
        target.init_weights()
    assert 'stages.2.encoders.0.blocks.2.' in str(info.value)
    # A prefix that matches nothing is refused by mmengine.
    path = save_checkpoint(source, tmp_path / 'model.pth', prefix='model.')
    target = make_model(init_cfg=pretrained(path))
    with pytest.raises((RuntimeError, AssertionError)):
        target.init_weights()


def test_pretrained_published_layout_names_the_converter(tmp_path):
    torch.save(
        {
            'model': {
                'stem.0.conv.weight':
                torch.zeros(8, 3, 3, 3),
                'mhca_stages.0.aggregate.conv.weight':
                torch.zeros(1),
                'patch_embed_stages.0.patch_embeds.0.patch_conv.bn.bias':
                torch.zeros(1),
            }
        }, tmp_path / 'mpvit_tiny.pth')
    target = make_model(
        init_cfg=pretrained(str(tmp_path / 'mpvit_tiny.pth'), prefix=None))
    with pytest.raises(RuntimeError, match='mpvit_to_mmvheat'):
        target.init_weights()
