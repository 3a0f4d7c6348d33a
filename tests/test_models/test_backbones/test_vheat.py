# Copyright (c) mmvheat contributors. All rights reserved.
"""Unit tests of the vHeat backbone (``mmvheat.models.backbones.vheat``).

In the spirit of mmpretrain's backbone tests and timm's model tests. All
models but the few arch checks are tiny (``dims=8``) so that the whole file
runs in seconds on a small CPU.
"""
import ast
import copy
import json
import math
import os
import os.path as osp
import warnings

import pytest
import torch
from torch import nn

import mmvheat.models.backbones.vheat as vheat_module
import mmvheat.models.layers.heat_block as heat_block_module
import mmvheat.models.layers.recompute as recompute_module
import mmvheat.ops.spectral as spectral_module
from mmvheat.analysis.benchmark import cpu_allocated_peak
from mmvheat.analysis.saved_tensors import saved_bytes
from mmvheat.models.backbones.deploy import (DeployedHeatBlocks,
                                             FusedHeatBlock,
                                             FusedHeatConduction2d, FusedMlp)
from mmvheat.models.backbones.vheat import VHeat
from mmvheat.models.layers import HeatBlocks, resize_freq_embed

PRE_ARCH = dict(
    depths=[1, 1, 2, 1],
    dims=8,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)
POST_ARCH = dict(
    depths=[1, 1, 2, 1], dims=8, post_norm=True, layer_scale=0.5, mlp_ratio=2.)
SMALL_DIMS = [8, 16, 32, 64]
ALL_OUT = (0, 1, 2, 3)

# Backbone-only parameter counts (stem, stages, freq_embeds, norm3; no
# classifier Linear) at img_size 224. They equal the published classification
# checkpoints minus their classifier Linear (30,853,480 - 769,000 for tiny,
# 52,220,392 - 769,000 for small, 92,132,328 - 1,025,000 for base).
PARAM_COUNTS = dict(tiny=30_084_480, small=51_451_392, base=91_107_328)
ARCHS = dict(
    tiny=dict(
        depths=[2, 2, 6, 2],
        dims=[96, 192, 384, 768],
        post_norm=False,
        layer_scale=None,
        mlp_ratio=4.),
    small=dict(
        depths=[2, 2, 18, 2],
        dims=[96, 192, 384, 768],
        post_norm=True,
        layer_scale=1e-5,
        mlp_ratio=4.),
    base=dict(
        depths=[2, 2, 18, 2],
        dims=[128, 256, 512, 1024],
        post_norm=True,
        layer_scale=1e-5,
        mlp_ratio=4.),
)
ALIASES = {
    'tiny': 'tiny',
    't': 'tiny',
    'TINY': 'tiny',
    'T': 'tiny',
    'Tiny': 'tiny',
    'small': 'small',
    's': 'small',
    'SMALL': 'small',
    'S': 'small',
    'Small': 'small',
    'base': 'base',
    'b': 'base',
    'BASE': 'base',
    'B': 'base',
    'Base': 'base',
}


# -- helpers ------------------------------------------------------------------
def make_model(arch=PRE_ARCH, img_size=32, seed=0, randomize=True, **kwargs):
    """A small VHeat whose weights all matter (no identity-like filters)."""
    torch.manual_seed(seed)
    model = VHeat(arch=copy.deepcopy(arch), img_size=img_size, **kwargs)
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith('freq_embed'):
                    p.copy_(torch.randn(p.shape, generator=g))
                else:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def rand_input(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def weighted_loss(outs, seed=123):
    """A loss whose gradient is non-trivial (a plain sum of LayerNorm outputs
    has an almost-zero gradient)."""
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


def max_diff(outs, refs):
    return max((o - r).abs().max().item() for o, r in zip(outs, refs))


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
    """Skip the default init of Linear/Conv2d layers: builds of the full-size
    archs are then instant (parameter counts and structure are unaffected)."""
    monkeypatch.setattr(nn.Linear, 'reset_parameters', lambda self: None)
    monkeypatch.setattr(nn.Conv2d, 'reset_parameters', lambda self: None)


# -- 1. arch ------------------------------------------------------------------
@pytest.mark.parametrize('name', list(ALIASES))
def test_arch_names_and_aliases(name, fast_init):
    expected = ARCHS[ALIASES[name]]
    model = VHeat(arch=name, out_indices=ALL_OUT)
    settings = model.arch_settings
    for key in ('depths', 'dims', 'post_norm', 'layer_scale', 'mlp_ratio'):
        assert settings[key] == expected[key], key
    assert model.dims == expected['dims']
    assert model.out_channels == tuple(expected['dims'])
    assert len(model.stages) == 4
    for i, stage in enumerate(model.stages):
        dim = expected['dims'][i]
        assert len(stage.blocks) == expected['depths'][i]
        side = 224 // 4 // 2**i
        assert stage.freq_embed.shape == (side, side, dim)
        assert (stage.downsample is None) == (i == 0)
        for block in stage.blocks:
            assert block.post_norm == expected['post_norm']
            assert block.op.dim == dim
            assert block.mlp.fc1.out_features == int(dim * 4)
            if expected['layer_scale'] is None:
                assert block.gamma1 is None and block.gamma2 is None
            else:
                assert torch.all(block.gamma1 == expected['layer_scale'])
                assert block.gamma2.shape == (dim, )


def test_arch_zoo_entries_are_not_shared():
    """Parsing returns copies: editing one model's settings leaves the zoo."""
    settings = VHeat.parse_arch('tiny')
    settings['depths'][0] = 99
    assert VHeat.arch_zoo['tiny']['depths'][0] == 2
    assert VHeat.parse_arch('t')['depths'] == [2, 2, 6, 2]


@pytest.mark.parametrize('name', ['tiny', 'small', 'base'])
def test_arch_param_counts(name, fast_init):
    model = VHeat(arch=name)
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAM_COUNTS[name]
    # Plausible ranges (vHeat-T/S/B: ~29M/50M/87M with a 1000-class head in
    # the paper; the published checkpoints hold ~30.9M/52.2M/92.1M).
    low, high = dict(
        tiny=(29e6, 31e6), small=(49e6, 53e6), base=(86e6, 93e6))[name]
    assert low < count < high
    # A 1000-class head (LayerNorm is norm3 already) makes the published size.
    head = model.dims[-1] * 1000 + 1000
    assert count + head == dict(
        tiny=30_853_480, small=52_220_392, base=92_132_328)[name]


def test_arch_param_counts_match_reference_shapes(reference_dir, fast_init):
    path = osp.join(reference_dir, 'vheat_official_state_dict_shapes.json')
    with open(path) as f:
        official = json.load(f)
    for name, entry in official.items():
        shapes = entry['state_dict']
        total = sum(math.prod(s) for s in shapes.values())
        classifier = sum(
            math.prod(s) for k, s in shapes.items()
            if k.startswith('classifier') and len(s) in (
                1, 2) and k.split('.')[1] != '0')
        assert PARAM_COUNTS[name] == total - classifier, name


def test_arch_unknown_name():
    with pytest.raises(ValueError) as info:
        VHeat(arch='huge')
    message = str(info.value)
    assert 'huge' in message
    for name in ('tiny', 't', 'small', 's', 'base', 'b'):
        assert repr(name) in message


@pytest.mark.parametrize('missing', VHeat.arch_keys)
def test_arch_dict_missing_key(missing):
    arch = {k: v for k, v in PRE_ARCH.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        VHeat(arch=arch, img_size=32)


def test_arch_dict_bad_entries():
    with pytest.raises(ValueError, match='drop_rate'):
        VHeat(arch=dict(PRE_ARCH, drop_rate=0.1), img_size=32)
    with pytest.raises(ValueError):
        VHeat(arch=dict(PRE_ARCH, depths=[1, 1, 1]), img_size=32)
    with pytest.raises(ValueError):
        VHeat(arch=dict(PRE_ARCH, dims=[8, 16, 32]), img_size=32)
    with pytest.raises(ValueError):
        VHeat(arch=['tiny'], img_size=32)


def test_arch_dims_int_or_list():
    model = VHeat(arch=PRE_ARCH, img_size=32, out_indices=ALL_OUT)
    assert model.dims == SMALL_DIMS
    assert model.out_channels == tuple(SMALL_DIMS)

    dims = [8, 12, 20, 24]
    model = VHeat(
        arch=dict(PRE_ARCH, dims=dims), img_size=32, out_indices=ALL_OUT)
    assert model.dims == dims
    assert model.out_channels == tuple(dims)
    for stage, dim in zip(model.stages, dims):
        assert stage.freq_embed.shape[-1] == dim
    outs = model(rand_input(1, 3, 64, 32))
    assert [o.shape[1] for o in outs] == dims


@pytest.mark.parametrize('img_size', [0, -32, 16, 48, 100, 224 + 16])
def test_bad_img_size(img_size):
    with pytest.raises(ValueError, match='img_size'):
        VHeat(arch=PRE_ARCH, img_size=img_size)


@pytest.mark.parametrize('img_size', [32, 64, 96])
def test_good_img_size(img_size):
    model = VHeat(arch=PRE_ARCH, img_size=img_size)
    assert [s.freq_embed.shape[0] for s in model.stages
            ] == [img_size // 4 // 2**i for i in range(4)]


@pytest.mark.parametrize('out_indices', [4, -5, (0, 4), (1, -5), [7]])
def test_out_indices_out_of_range(out_indices):
    with pytest.raises(ValueError, match='out_indices'):
        VHeat(arch=PRE_ARCH, img_size=32, out_indices=out_indices)


@pytest.mark.parametrize('out_indices, expected', [
    (-1, (3, )),
    ((-1, ), (3, )),
    ((-4, -1), (0, 3)),
    ((0, -3, 2), (0, 1, 2)),
    (2, (2, )),
])
def test_negative_and_int_out_indices(out_indices, expected):
    model = VHeat(arch=PRE_ARCH, img_size=32, out_indices=out_indices)
    assert model.out_indices == expected
    assert model.out_channels == tuple(SMALL_DIMS[i] for i in expected)
    for i in range(4):
        assert hasattr(model, f'norm{i}') == (i in expected)
    outs = model(rand_input(1, 3, 64, 64))
    assert [o.shape for o in outs] == [
        (1, SMALL_DIMS[i], 64 // 4 // 2**i, 64 // 4 // 2**i) for i in expected
    ]


def test_out_channels_tiny(fast_init):
    model = VHeat(arch='tiny', out_indices=ALL_OUT)
    assert model.out_channels == (96, 192, 384, 768)
    assert model.out_strides == (4, 8, 16, 32)
    assert VHeat(arch='tiny').out_channels == (768, )
    assert VHeat(arch='tiny').out_strides == (32, )


def test_registry_build():
    from mmengine.registry import MODELS as ROOT_MODELS

    from mmvheat.registry import MODELS
    cfg = dict(arch=PRE_ARCH, img_size=32, out_indices=(1, 2))
    scoped = MODELS.build(dict(type='VHeat', **cfg))
    prefixed = ROOT_MODELS.build(dict(type='mmvheat.VHeat', **cfg))
    plain = ROOT_MODELS.build(dict(type='VHeat', **cfg))
    for model in (scoped, prefixed, plain):
        assert type(model) is VHeat
        assert model.out_channels == (16, 32)


# -- 2. shapes ----------------------------------------------------------------
@pytest.mark.parametrize('out_indices', [(0, ), (1, ), (2, ), (3, ), ALL_OUT,
                                         (-1, )])
def test_forward_shapes(out_indices):
    model = make_model(out_indices=out_indices)
    outs = model(rand_input(2, 3, 64, 96))
    assert isinstance(outs, tuple)
    assert len(outs) == len(out_indices)
    assert len(model.out_channels) == len(model.out_strides) == len(outs)
    for out, channels, stride in zip(outs, model.out_channels,
                                     model.out_strides):
        assert out.shape == (2, channels, 64 // stride, 96 // stride)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('size', [(65, 47), (33, 31), (32, 32), (17, 9)])
def test_forward_odd_and_tiny_inputs(size):
    model = make_model(out_indices=ALL_OUT)
    h, w = size
    outs = model(rand_input(1, 3, h, w))
    for out, channels, stride in zip(outs, SMALL_DIMS, (4, 8, 16, 32)):
        assert out.shape == (1, channels, grid(h, stride), grid(w, stride))
        assert torch.isfinite(out).all()
    if size == (32, 32):
        assert outs[-1].shape[-2:] == (1, 1)


@pytest.mark.parametrize('form', ['train', 'eval', 'deployed'])
def test_forward_empty_batch(form):
    # An empty batch passes the input check; every form maps it to empty
    # maps of the shapes a one-image batch gets (and trains through it).
    model = make_model(out_indices=ALL_OUT).train(form == 'train')
    if form == 'deployed':
        model.switch_to_deploy()
    with torch.set_grad_enabled(form == 'train'):
        one = model(rand_input(1, 3, 64, 48))
        outs = model(rand_input(0, 3, 64, 48))
    assert [o.shape for o in outs] == [(0, ) + o.shape[1:] for o in one]
    if form == 'train':
        weighted_loss(outs).backward()


@pytest.mark.parametrize('form', ['train', 'with_cp', 'eval', 'deployed'])
def test_forward_on_the_meta_device(form):
    # A model built on the meta device (no memory, no values) maps shapes
    # as on the CPU, and trains through them: nothing asks for autocast on
    # a device that has none.
    model = make_model(out_indices=ALL_OUT, with_cp=form == 'with_cp')
    model.train(form in ('train', 'with_cp'))
    if form == 'deployed':
        model.switch_to_deploy()
    shapes = [o.shape for o in model(rand_input(2, 3, 64, 48))]
    model.to('meta')
    outs = model(torch.empty(2, 3, 64, 48, device='meta'))
    assert [o.device.type for o in outs] == ['meta'] * len(ALL_OUT)
    assert [o.shape for o in outs] == shapes
    if form in ('train', 'with_cp'):
        sum(o.sum() for o in outs).backward()
        assert all(p.grad is not None and p.grad.device.type == 'meta'
                   for p in model.parameters())


def test_forward_input_larger_than_img_size():
    model = make_model(img_size=64, out_indices=ALL_OUT)
    assert model.stages[0].freq_embed.shape[:2] == (16, 16)
    outs = model(rand_input(2, 3, 128, 96))
    assert [tuple(o.shape) for o in outs] == [
        (2, c, 128 // s, 96 // s) for c, s in zip(SMALL_DIMS, (4, 8, 16, 32))
    ]
    assert all(torch.isfinite(o).all() for o in outs)
    # Resampling does not alter the parameters.
    assert model.stages[0].freq_embed.shape[:2] == (16, 16)


def test_in_channels():
    model = make_model(in_channels=1)
    assert model(rand_input(1, 1, 32, 64))[0].shape == (1, 64, 1, 2)


# -- 3. frozen stages ---------------------------------------------------------
def test_frozen_stages():
    model = make_model(frozen_stages=2, out_indices=ALL_OUT)
    model.train()
    frozen = [
        model.patch_embed, model.stages[0], model.stages[1], model.norm0,
        model.norm1
    ]
    trainable = [model.stages[2], model.stages[3], model.norm2, model.norm3]
    for module in frozen:
        assert all(not m.training for m in module.modules())
        assert all(not p.requires_grad for p in module.parameters())
    for module in trainable:
        assert all(m.training for m in module.modules())
        assert all(p.requires_grad for p in module.parameters())
    assert model.training

    # eval() then train() keeps them frozen.
    model.eval()
    model.train()
    assert not model.stages[1].training and model.stages[2].training

    x = rand_input(2, 3, 64, 64)
    weighted_loss(model(x)).backward()
    for module in frozen:
        for p in module.parameters():
            assert p.grad is None
    for module in trainable:
        for name, p in module.named_parameters():
            assert p.grad is not None, name


@pytest.mark.parametrize('frozen_stages', [0, -1])
def test_frozen_stages_none(frozen_stages):
    model = make_model(frozen_stages=frozen_stages, out_indices=ALL_OUT)
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# -- 4. norm_eval -------------------------------------------------------------
def test_norm_eval():
    model = make_model(norm_eval=True, out_indices=ALL_OUT)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    others = [m for m in model.modules() if not isinstance(m, nn.LayerNorm)]
    assert len(norms) > 0 and len(others) > 0
    assert all(not m.training for m in norms)
    assert all(m.training for m in others)
    # Parameters of the norms still train.
    assert all(p.requires_grad for p in model.parameters())

    model = make_model(norm_eval=False, out_indices=ALL_OUT)
    model.train()
    assert all(m.training for m in model.modules())


# -- 5. gradient checkpointing ------------------------------------------------
@pytest.mark.parametrize('arch, drop_path_rate', [(PRE_ARCH, 0.),
                                                  (POST_ARCH, 0.),
                                                  (PRE_ARCH, 0.4),
                                                  (POST_ARCH, 0.4)])
def test_with_cp_matches(arch, drop_path_rate, monkeypatch):
    kwargs = dict(
        arch=arch, out_indices=ALL_OUT, drop_path_rate=drop_path_rate)
    plain = make_model(**kwargs)
    ckpt = make_model(with_cp=True, seed=5, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    plain.train()
    ckpt.train()

    calls = []
    checkpoint = heat_block_module.cp.checkpoint

    def counting_checkpoint(function, *args, **kw):
        calls.append(type(function.__self__).__name__)
        return checkpoint(function, *args, **kw)

    monkeypatch.setattr(heat_block_module.cp, 'checkpoint',
                        counting_checkpoint)

    x = rand_input(2, 3, 64, 48)
    results = []
    for model in (plain, ckpt):
        inp = x.clone().requires_grad_()
        torch.manual_seed(7)
        outs = model(inp)
        weighted_loss(outs).backward()
        results.append((outs, inp.grad, {
            n: p.grad
            for n, p in model.named_parameters()
        }))
    # The blocks of the with_cp model only; the stem of both.
    assert calls.count('HeatBlock') == sum(arch['depths'])
    assert calls.count('Stem') == 2 and len(calls) == sum(arch['depths']) + 2

    (outs_a, gin_a, grads_a), (outs_b, gin_b, grads_b) = results
    assert_outs_close(outs_b, outs_a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gin_b, gin_a, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert grads_a[name] is not None and grads_b[name] is not None, name
        torch.testing.assert_close(
            grads_b[name], grads_a[name], atol=1e-5, rtol=1e-5, msg=name)


def test_stem_keeps_only_the_image_for_backward():
    """In training the stem keeps its input image for the backward pass
    and redoes its layers there, instead of keeping conv1's output, the
    two maps after it and conv2's output (three maps of conv1's width
    and resolution, one at stride 4): in float64 its outputs and every
    gradient agree with the layers run plainly, to 1e-12 (relative)."""
    torch.manual_seed(0)
    stem = vheat_module.Stem(3, 16).double()
    for param in stem.parameters():
        nn.init.normal_(param, std=0.5)
    image = torch.randn(2, 3, 24, 20, dtype=torch.float64, requires_grad=True)
    saved = saved_bytes(stem, image, exclude=stem.parameters())
    assert saved <= image.numel() * image.element_size()

    def run(forward):
        out = forward(image)
        grads = torch.autograd.grad(
            out, [image, *stem.parameters()],
            torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        return [out] + list(grads)

    plain = run(
        lambda x: stem._maps(x.contiguous(memory_format=torch.channels_last)))
    for got, expected in zip(run(stem), plain):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_stem_without_a_graph_holds_its_widest_map_once(monkeypatch):
    """Without a graph the stem writes its LayerNorm and GELU over conv1's
    output (its widest map) a chunk of rows at a time: it holds at most
    that map and conv2's output (half of it) at once, and the buffers the
    convolutions take for themselves (a quarter of it, measured), where
    the layers run plainly hold three times that map; the outputs agree."""
    # Chunks of 8 KiB of conv1's output.
    monkeypatch.setattr(recompute_module, 'MLP_CHUNK_BYTES', 4 * 8192)
    torch.manual_seed(0)
    stem = vheat_module.Stem(3, 96)
    image = rand_input(1, 3, 128, 128)
    widest = 48 * 64 * 64 * 4

    def peak():
        stem(image)  # oneDNN's first-call state
        return cpu_allocated_peak(lambda: stem(image))

    with torch.no_grad():
        out, in_place = stem(image), peak()
        monkeypatch.setattr(vheat_module, 'may_overwrite', lambda *t: False)
        plain = peak()
        torch.testing.assert_close(stem(image), out, rtol=1e-6, atol=1e-6)
    assert in_place <= 1.8 * widest < 2.5 * widest <= plain, (in_place, plain)


def test_with_cp_skipped_without_grad(monkeypatch):
    model = make_model(with_cp=True)

    def fail(*args, **kwargs):
        raise AssertionError('checkpoint used without grad')

    monkeypatch.setattr(heat_block_module.cp, 'checkpoint', fail)
    with torch.no_grad():
        model(rand_input(1, 3, 32, 32))


# -- 6. gradients and finiteness ---------------------------------------------
@pytest.mark.parametrize('arch', [PRE_ARCH, POST_ARCH])
def test_every_parameter_gets_a_finite_gradient(arch):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    model.train()
    weighted_loss(model(rand_input(2, 3, 64, 48))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('arch', [PRE_ARCH, POST_ARCH])
def test_outputs_finite(arch):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    x = 10 * rand_input(2, 3, 64, 80)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            outs = model(x)
        assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('arch', [PRE_ARCH, POST_ARCH])
def test_bf16_autocast_finite(arch):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    x = rand_input(2, 3, 64, 48)
    model.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
    assert [tuple(o.shape[1:])
            for o in outs] == [(c, grid(64, s), grid(48, s))
                               for c, s in zip(SMALL_DIMS, (4, 8, 16, 32))]
    assert all(torch.isfinite(o.float()).all() for o in outs)

    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
        loss = weighted_loss(outs)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_drop_path_inactive_in_eval():
    with_drop = make_model(drop_path_rate=0.5, out_indices=ALL_OUT)
    no_drop = make_model(drop_path_rate=0., out_indices=ALL_OUT)
    no_drop.load_state_dict(with_drop.state_dict())
    rates = [b.drop_path.drop_prob for s in with_drop.stages for b in s.blocks]
    assert rates[0] == 0. and rates[-1] == pytest.approx(0.5)
    assert rates == sorted(rates)
    with_drop.eval()
    no_drop.eval()
    x = rand_input(2, 3, 64, 64)
    with torch.no_grad():
        assert_outs_close(with_drop(x), no_drop(x), atol=0, rtol=0)


# -- 7. init_weights ----------------------------------------------------------
def test_init_weights():
    model = make_model(img_size=128, out_indices=ALL_OUT)
    linears = {
        n: m
        for n, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    with torch.no_grad():
        for stage in model.stages:
            stage.freq_embed.fill_(5.)
    assert any((m.weight != 1).any() for m in norms)

    model.init_weights()
    for name, module in linears.items():
        assert not torch.equal(module.weight, before[name]), name
        if '.mlp.' in name:
            # PyTorch's own initialisation, as the published 1x1
            # convolutions: uniform in +-1/sqrt(fan_in), bias too.
            bound = module.in_features**-0.5
            assert module.weight.abs().max() <= bound, name
            assert module.weight.std() > 0.8 * bound / 3**0.5, name
            assert module.bias.abs().max() <= bound, name
            assert module.bias.any(), name
        else:
            assert module.weight.abs().max() <= 2.
            assert module.weight.std() < 0.05, name
            assert torch.all(module.bias == 0), name
    for module in norms:
        assert torch.all(module.weight == 1)
        assert torch.all(module.bias == 0)
    embeds = torch.cat([s.freq_embed.detach().flatten() for s in model.stages])
    assert embeds.numel() > 10000
    assert embeds.std().item() == pytest.approx(0.02, abs=0.002)
    assert embeds.mean().abs() < 0.002
    assert embeds.abs().max() <= 2.


def test_freq_embed_initialised_at_construction():
    model = VHeat(arch=PRE_ARCH, img_size=128)
    embeds = torch.cat([s.freq_embed.detach().flatten() for s in model.stages])
    assert embeds.std().item() == pytest.approx(0.02, abs=0.002)


def test_two_models_init_differently():
    a = make_model()
    b = make_model(seed=3)
    b.load_state_dict(a.state_dict())
    a.init_weights()
    b.init_weights()
    linears_b = dict(b.named_modules())
    for name, module in a.named_modules():
        if isinstance(module, nn.Linear):
            assert not torch.equal(module.weight, linears_b[name].weight), name
    for sa, sb in zip(a.stages, b.stages):
        assert not torch.equal(sa.freq_embed, sb.freq_embed)


# -- 8. inference specialisation (switch_to_deploy) ---------------------------
# A deployed model must compute what the plain model computes: the plain
# eval model is the reference (eager PyTorch ops, filters computed at every
# call, whole batches; itself checked against the published outputs in
# test_vheat_golden.py). Outputs are LayerNorm-ed, of order 1; the fused
# oneDNN kernels sum in another order and the folded filters come from the
# same float32 ops, so the two agree to a few float32 ulps per layer: 1e-5.
PRE_LS_ARCH = dict(PRE_ARCH, layer_scale=0.5)
DEPLOY_ARCHS = [PRE_ARCH, POST_ARCH, PRE_LS_ARCH]
DEPLOY_SIZES = [(64, 64), (96, 64), (48, 80), (65, 47)]


def deployed(model):
    """A deployed copy of ``model`` (in eval mode)."""
    copy_ = copy.deepcopy(model).eval()
    copy_.switch_to_deploy()
    return copy_


def plain_outputs(model, x):
    """Eval-mode outputs of the plain model under ``no_grad``."""
    assert not model.deploy
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize('arch', DEPLOY_ARCHS)
def test_deploy_leaves_outputs_unchanged(arch):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    fast = deployed(model)
    for i, (h, w) in enumerate(DEPLOY_SIZES):
        x = rand_input(3, 3, h, w, seed=i)
        ref = plain_outputs(model, x)
        with torch.no_grad():
            assert_outs_close(fast(x), ref)
            assert_outs_close(fast(x), ref)  # the folded filters reused
    assert len(fast.stages[0].blocks.folded) == len(DEPLOY_SIZES)


@pytest.mark.parametrize('arch', DEPLOY_ARCHS)
def test_deploy_keeps_the_state_dict(arch):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.switch_to_deploy()
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert model.deploy and all(not p.requires_grad
                                for p in model.parameters())
    model.switch_to_deploy()  # a second call changes nothing
    assert list(model.state_dict()) == list(before)


@pytest.mark.parametrize('form', ['train', 'eval', 'deployed'])
def test_torch_compile_captures_the_backbone_whole(form):
    """``torch.compile`` captures the backbone as one graph, training, in
    eval mode and deployed: no graph break (each splits the model, and past
    Dynamo's recompile limit leaves frames to run eagerly) and no warning
    about our code. Compiled through AOTAutograd (``aot_eager``: inductor's
    code generation takes minutes on a CPU and compiles the same graph), it
    gives the eager outputs and gradients."""
    model = make_model(out_indices=ALL_OUT)
    if form == 'deployed':
        model = deployed(model)
    elif form == 'eval':
        model.eval()
    x = rand_input(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with warnings.catch_warnings(record=True) as caught, \
            torch.set_grad_enabled(form == 'train'):
        warnings.simplefilter('always')
        got = compiled(x)
        ours = [str(w.message) for w in caught if 'mmvheat' in str(w.message)]
        assert not ours
        ref = model(x)
    # The compiled graph runs the plain ops (no oneDNN fusions, chunks or
    # sub-batches); float32 round-off through five blocks stays below 1e-5.
    assert_outs_close(got, ref, atol=1e-5, rtol=1e-5)
    if form == 'train':
        grads = [
            torch.autograd.grad(weighted_loss(outs), model.parameters())
            for outs in (got, ref)
        ]
        assert_outs_close(*grads, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize('form', ['eval', 'deployed'])
def test_torch_export_keeps_the_eager_outputs(form):
    """``torch.export`` of the backbone in eval mode and deployed runs like
    the eager model, and lifts no tensor that still requires a gradient (a
    deployed model's prepared weights are constants)."""
    model = make_model(out_indices=ALL_OUT).eval()
    if form == 'deployed':
        model.switch_to_deploy()
    x = rand_input(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        exported = torch.export.export(model, (x, )).module()
    assert not [str(w.message) for w in caught if 'gradient' in str(w.message)]
    with torch.no_grad():
        # The exported graph runs the plain ops (no oneDNN fusions, chunks
        # or sub-batches): float32 round-off through five blocks.
        assert_outs_close(exported(x), model(x), atol=1e-5, rtol=1e-5)


def test_train_mode_is_for_the_plain_model():
    model = make_model()
    model.switch_to_deploy()
    model.eval()  # allowed
    with pytest.raises(RuntimeError, match='deploy'):
        model.train()


def test_plain_model_has_no_inference_machinery():
    model = make_model()
    assert not hasattr(model.stages[0].blocks, 'folded')
    model.eval()
    with torch.no_grad():
        model(rand_input(1, 3, 32, 32))
    assert not hasattr(model.stages[0].blocks, 'folded')
    assert type(model.stages[0].blocks) is HeatBlocks


@pytest.mark.parametrize('arch', DEPLOY_ARCHS)
def test_deploy_equals_the_plain_model_in_float64(arch, monkeypatch):
    """In float64 the deployed model computes the plain model's function
    to rounding: the same eager ops (oneDNN fuses float32 only), but for
    layer scales folded into a weight, which rounds each product once more
    (3e-15 measured on these unit-scale, LayerNorm-ed maps). 1e-12 leaves
    a factor of 300 for that and is below anything else a deployed model
    could differ by: filters folded in float32 are off by 1e-7, a wrong
    sub-batch, filter or scale by 1e-3 and more. The weights get noise
    that float32 cannot hold, and one image per sub-batch makes the
    sub-batches run too."""
    monkeypatch.setattr(DeployedHeatBlocks, 'cpu_sub_batch_bytes', 1)
    model = make_model(arch=arch, out_indices=ALL_OUT).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    fast = deployed(model)
    # Other sizes resample the embeddings (in float32, plain or deployed);
    # at the pretraining size, 32, they are used as they are.
    for i, (h, w) in enumerate(DEPLOY_SIZES + [(32, 32)]):
        x = rand_input(3, 3, h, w, seed=i).double()
        ref = plain_outputs(model, x)
        with torch.no_grad():
            assert_outs_close(fast(x), ref, atol=1e-12, rtol=0)
            assert_outs_close(fast(x), ref, atol=1e-12, rtol=0)


def test_deploy_builds_modules_and_retypes_none():
    """Deploy puts new modules in place of each stage's blocks and their
    operators and MLPs; no module the model held changes its class, and the
    stages, the stem and the output norms stay as they are."""
    model = make_model(arch=PRE_LS_ARCH, out_indices=ALL_OUT)
    held = [(module, type(module)) for module in model.modules()]
    kept = [model.patch_embed, model.norm0, *model.stages]
    model.switch_to_deploy()
    assert [type(module) for module, _ in held] == [cls for _, cls in held]
    assert all(any(m is module for m in model.modules()) for module in kept)
    for stage in model.stages:
        assert type(stage.blocks) is DeployedHeatBlocks
        for block in stage.blocks:
            assert type(block) is FusedHeatBlock
            assert type(block.op) is FusedHeatConduction2d
            assert type(block.mlp) is FusedMlp
            assert not any(block is module for module, _ in held)


def _sets_class(node: ast.AST) -> bool:
    """Whether ``node`` sets an object's ``__class__``: by assignment, or
    by ``setattr(obj, '__class__', cls)``."""
    if isinstance(node, ast.Call):
        return any(
            isinstance(arg, ast.Constant) and arg.value == '__class__'
            for arg in node.args)
    targets = getattr(node, 'targets', [getattr(node, 'target', None)])
    return any(
        isinstance(target, ast.Attribute) and target.attr == '__class__'
        for target in targets)


def test_no_class_assignment_in_the_models():
    """Nothing in ``mmvheat.models`` changes a live object's class."""
    root = osp.dirname(osp.dirname(vheat_module.__file__))  # models/
    found = []
    for folder, _, files in os.walk(root):
        for name in (n for n in files if n.endswith('.py')):
            path = osp.join(folder, name)
            with open(path, encoding='utf-8') as f:
                tree = ast.parse(f.read())
            found += [
                f'{path}:{node.lineno}' for node in ast.walk(tree)
                if _sets_class(node)
            ]
    assert not found


def test_deploy_keeps_the_parameters_themselves():
    """The inference forms hold the trained parameters, not copies: an
    optimizer or an EMA holding them still holds the model's."""
    model = make_model(arch=PRE_LS_ARCH, out_indices=ALL_OUT)
    before = list(model.named_parameters())
    model.switch_to_deploy()
    after = list(model.named_parameters())
    assert [name for name, _ in after] == [name for name, _ in before]
    assert all(a is b for (_, a), (_, b) in zip(after, before))


def test_stage_deploy_keeps_requires_grad():
    """A stage switched on its own leaves its parameters' ``requires_grad``
    as it was (VHeat.switch_to_deploy then freezes them all)."""
    model = make_model(frozen_stages=1)
    for stage in model.stages[:2]:
        stage.switch_to_deploy()
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())


def test_deployed_weights_get_no_gradient():
    """Right after ``switch_to_deploy()`` (its linear weights prepared while
    the parameters still required gradients, and not prepared again by an
    ``eval()`` or a load), a pass with autograd records nothing through the
    weights: an input without gradient gives an output without one,
    computed as under ``no_grad`` to the bit, and an input's gradient
    leaves every parameter's ``grad`` None."""
    model = make_model(out_indices=ALL_OUT).eval()
    model.switch_to_deploy()
    x = rand_input(2, 3, 32, 32)
    outs = model(x)
    assert not any(o.requires_grad for o in outs)
    with torch.no_grad():
        assert_outs_close(outs, model(x), atol=0, rtol=0)
    xg = x.clone().requires_grad_()
    weighted_loss(model(xg)).backward()
    assert xg.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.grad is not None] == []


@pytest.mark.parametrize('arch', DEPLOY_ARCHS)
def test_deployed_state_dict_loads_into_a_plain_model(arch):
    """A deployed model's state dict is a training one: it loads strictly
    into a VHeat that was never deployed, which then computes the same
    outputs as the model it came from, to the bit."""
    source = make_model(arch=arch, out_indices=ALL_OUT)
    fast = deployed(source)
    plain = make_model(arch=arch, out_indices=ALL_OUT, seed=7)
    plain.load_state_dict(fast.state_dict(), strict=True)
    x = rand_input(2, 3, 64, 48)
    ref = plain_outputs(source, x)
    assert_outs_close(plain_outputs(plain, x), ref, atol=0, rtol=0)
    with torch.no_grad():
        assert_outs_close(fast(x), ref)


@pytest.mark.parametrize('arch', [PRE_ARCH, POST_ARCH, PRE_LS_ARCH])
def test_deploy_fuses_activations_and_residuals(arch, onednn_spy):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    x = rand_input(2, 3, 64, 48)
    ref = plain_outputs(model, x)
    assert onednn_spy.calls == []  # the plain model: eager ops only
    fast = deployed(model)
    with torch.no_grad():
        assert_outs_close(fast(x), ref)
    blocks = sum(arch['depths'])
    # Per block: u, gate (SiLU), out_linear and the MLP's fc1 (GELU), fc2.
    # Pre-norm blocks end both branches in a fused add (layer scale folded
    # into the weights); post-norm ones normalise after the linear layer.
    last = 'add' if not arch['post_norm'] else 'none'
    assert sorted(
        onednn_spy.calls) == sorted(['none', 'swish', 'gelu'] * blocks +
                                    [last] * 2 * blocks)


@pytest.mark.parametrize('pack', [True, False])
def test_deploy_packs_the_linear_weights(pack, onednn_spy, monkeypatch):
    """Each oneDNN call of a deployed model gets its weight packed (the
    default), or the weight itself with ``pack_weights`` off."""
    monkeypatch.setattr(FusedHeatBlock, 'pack_weights', pack)
    model = make_model(arch=PRE_LS_ARCH, out_indices=ALL_OUT)
    x = rand_input(2, 3, 64, 48)
    ref = plain_outputs(model, x)
    fast = deployed(model)
    with torch.no_grad():
        assert_outs_close(fast(x), ref)
    assert len(onednn_spy.packed) == 5 * sum(PRE_LS_ARCH['depths'])
    assert set(onednn_spy.packed) == {pack}


def test_deployed_model_copies_and_pickles(tmp_path):
    """A deployed model that has run (packed weights, folded filters) can
    be deep-copied and saved whole; the copies prepare their own."""
    fast = deployed(make_model(arch=PRE_LS_ARCH, out_indices=ALL_OUT))
    x = rand_input(2, 3, 64, 48)
    with torch.no_grad():
        ref = fast(x)
        torch.save(fast, tmp_path / 'model.pth')
        copies = [
            copy.deepcopy(fast),
            torch.load(tmp_path / 'model.pth', weights_only=False)
        ]
        for other in copies:
            assert_outs_close(other(x), ref, atol=0, rtol=0)


@pytest.mark.parametrize('arch', [PRE_ARCH, POST_ARCH])
@pytest.mark.parametrize('sub_batch', [1, 2, 4])
def test_deploy_runs_cpu_sub_batches(arch, sub_batch, monkeypatch):
    model = make_model(arch=arch, out_indices=ALL_OUT)
    x = rand_input(5, 3, 64, 32)
    ref = plain_outputs(model, x)
    fast = deployed(model)
    seen = {i: [] for i in range(4)}
    for i, stage in enumerate(fast.stages):
        for block in stage.blocks:
            block.register_forward_pre_hook(
                lambda m, args, i=i: seen[i].append(args[0].shape[0]))
    stem = []
    fast.patch_embed.conv1.register_forward_pre_hook(
        lambda m, args: stem.append(args[0].shape[0]))
    # A budget of `sub_batch` images of stage 0's 16 x 8 x 8 float map; each
    # later stage's map is half as large, so twice as many images fit. The
    # stem's widest map, conv1's 32 x 16 x 4, is twice stage 0's.
    monkeypatch.setattr(DeployedHeatBlocks, 'cpu_sub_batch_bytes',
                        sub_batch * 16 * 8 * 8 * 4)
    with torch.no_grad():
        out = fast(x)
    assert_outs_close(out, ref)
    for i, depth in enumerate(arch['depths']):
        parts = torch.ones(5).split(sub_batch * 2**i)
        assert seen[i] == [len(p) for p in parts for _ in range(depth)]
    assert stem == [
        len(p) for p in torch.ones(5).split(max(1, sub_batch // 2))
    ]


def test_deployed_forward_copies_only_the_image_and_outputs():
    """On the CPU a deployed forward copies no weight and no map between
    its layers: the image once into the channels-last layout of the first
    convolution, and the outputs into NCHW. (A convolution's weight of
    another layout than its input is copied at every call; a LayerNorm
    copies a strided input.)"""
    fast = deployed(make_model(arch=PRE_LS_ARCH, out_indices=ALL_OUT))
    x = rand_input(3, 3, 64, 48)
    with torch.no_grad():
        fast(x)
        with torch.profiler.profile(record_shapes=True) as prof:
            outs = fast(x)
    copied = [
        e.input_shapes[0] for e in prof.events() if e.name == 'aten::copy_'
    ]
    assert sorted(copied) == sorted([list(x.shape)] +
                                    [list(out.shape) for out in outs])


@pytest.mark.parametrize('chunked', [False, True])
def test_deployed_operator_holds_two_maps(chunked, monkeypatch):
    """Without a graph a deployed block's operator holds two maps of its
    input's size at once (the depth-wise conv's output and ``u``) besides
    buffers within its budgets: the transforms write over ``u`` (through
    one buffer of at most ``OVERWRITE_BUFFER_BYTES``), the gate, the
    LayerNorm and ``out_linear`` run in chunks of rows within
    ``MLP_CHUNK_BYTES`` (of a ``4C`` row), each written over ``u``. Its
    norm's output is dropped once used. With autograd (the plain ops) it
    holds more, and gives the same output."""
    dim, h, w = 16, 24, 20
    torch.manual_seed(0)
    trained = heat_block_module.HeatConduction2d(dim)
    op, norm = FusedHeatConduction2d.from_trained(trained), nn.LayerNorm(dim)
    x, transfer = torch.randn(1, h, w, dim), torch.rand(h, w, dim)
    map_bytes = x.nbytes
    # Budgets of an eighth of a map: several slabs and chunks. A chunk's
    # three maps (the gate, the norm's output, out_linear's) are each a
    # quarter of the budget (C of the 4C channels it counts). Unchunked:
    # a map-sized buffer, then those three maps whole.
    budget = map_bytes // 8 if chunked else 1 << 30
    monkeypatch.setattr(spectral_module, 'OVERWRITE_BUFFER_BYTES', budget)
    monkeypatch.setattr(recompute_module, 'MLP_CHUNK_BYTES', budget)
    buffers = budget + 3 * budget / 4 if chunked else 3 * map_bytes

    def run():
        return op(x, transfer, residual=x, norm=norm)

    with torch.no_grad():
        expected = run()  # the DCT bases are made and cached here
        peak = cpu_allocated_peak(run)
    # A quarter of a map more: a LayerNorm's mean and deviation per pixel
    # (two of the 16 values of a row) and small buffers.
    assert peak <= 2 * map_bytes + buffers + map_bytes / 4, peak / map_bytes
    with torch.enable_grad():
        assert cpu_allocated_peak(run) > 4 * map_bytes
        torch.testing.assert_close(run(), expected, rtol=1e-6, atol=1e-6)


def test_deployed_stage_writes_over_its_input_only_when_given_up(monkeypatch):
    """A deployed stage leaves its input as it is, unless the caller gives
    it up (``overwrite_input``, as the backbone does with the stem's
    output): each block (where its MLP runs in several chunks), and so the
    stage, then writes its output over it, with the same result, and the
    input is not held beside the blocks' maps (one map less at the peak).
    A stage with a downsample writes over the downsample's output, never
    over its input."""
    monkeypatch.setattr(recompute_module, 'MLP_CHUNK_BYTES', 4096)
    model = deployed(
        make_model(arch=dict(PRE_ARCH, depths=[3, 1, 1, 1]), img_size=64))
    stage = model.stages[0]
    x = rand_input(1, 16, 16, 8)
    given = x.clone()
    with torch.no_grad():
        expected = stage(x)
        assert torch.equal(x, given)
        out = stage(given, overwrite_input=True)
        assert torch.equal(out, expected) and not torch.equal(given, x)
        kept = cpu_allocated_peak(lambda: stage(x))
        peak = cpu_allocated_peak(
            lambda: stage(x.clone(), overwrite_input=True))
    # Counted with the given-up input (a clone made in the call), no more
    # than the maps held besides the kept input.
    assert peak <= kept, (peak, kept, x.nbytes)

    # The backbone gives up the stem's output, which only it holds.
    given_up = []
    model.stages[0].register_forward_pre_hook(
        lambda module, args, kwargs: given_up.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        model(rand_input(1, 3, 64, 64))
    assert given_up == [dict(overwrite_input=True)]

    down = model.stages[1]
    x = rand_input(1, 8, 8, 8)
    given = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(
            down(given, overwrite_input=True), down(x), rtol=0, atol=0)
    assert torch.equal(given, x)


def test_fold_cache_is_bounded_lru():
    model = deployed(make_model())
    assert all(s.blocks.fold_cache_size == 4 for s in model.stages)
    widths = [32, 64, 96, 128]
    with torch.no_grad():
        for w in widths:
            model(rand_input(1, 3, 32, w))
            for s in model.stages:
                assert len(s.blocks.folded) <= s.blocks.fold_cache_size
    stage = model.stages[0]
    assert list(stage.blocks.folded) == [(8, w // 4) for w in widths]
    with torch.no_grad():
        model(rand_input(1, 3, 32, 32))  # a hit: now most recent
        model(rand_input(1, 3, 32, 160))  # evicts the least recent (64)
    for s in model.stages:
        assert len(s.blocks.folded) == 4
    assert list(stage.blocks.folded) == [(8, 24), (8, 32), (8, 8), (8, 40)]
    assert list(model.stages[3].blocks.folded) == [(1, 3), (1, 4), (1, 1),
                                                   (1, 5)]

    for s in model.stages:
        s.blocks.fold_cache_size = 2
    with torch.no_grad():
        model(rand_input(1, 3, 32, 192))
    assert all(len(s.blocks.folded) == 2 for s in model.stages)

    model.clear_folded()
    assert all(len(s.blocks.folded) == 0 for s in model.stages)


def test_fold_reuses_cached_filters(monkeypatch):
    model = deployed(make_model(out_indices=ALL_OUT))
    calls = []
    original = HeatBlocks.heat_transfers

    def counting(self, freq_embed, size):
        calls.append(size)
        return original(self, freq_embed, size)

    monkeypatch.setattr(HeatBlocks, 'heat_transfers', counting)
    x1 = rand_input(2, 3, 64, 48, seed=1)
    x2 = rand_input(2, 3, 64, 48, seed=2)
    with torch.no_grad():
        out1 = model(x1)
        assert len(calls) == 4
        cached = [dict(s.blocks.folded) for s in model.stages]
        out2 = model(x2)
        again = model(x1)
    assert len(calls) == 4  # no new folding
    for stage, before in zip(model.stages, cached):
        assert stage.blocks.folded.keys() == before.keys()
        for key, transfers in before.items():
            assert len(transfers) == len(stage.blocks)
            assert all(a is b
                       for a, b in zip(stage.blocks.folded[key], transfers))
            assert all(not t.requires_grad for t in transfers)
    assert_outs_close(again, out1, atol=0, rtol=0)
    assert max_diff(out2, out1) > 1e-3


def test_fold_cached_filters_are_the_stage_filters():
    model = deployed(make_model())
    with torch.no_grad():
        model(rand_input(1, 3, 64, 96))
        for stage, size in zip(model.stages, [(16, 24), (8, 12), (4, 6),
                                              (2, 3)]):
            (key, folded), = stage.blocks.folded.items()
            assert key == size
            for f, ref in zip(folded, stage.heat_transfers(size)):
                assert f.shape == (*size, stage.freq_embed.shape[-1])
                torch.testing.assert_close(f, ref, atol=0, rtol=0)


@pytest.mark.parametrize('load', ['torch', 'mmengine'])
def test_deployed_model_loads_a_checkpoint(load, tmp_path):
    """Loading refolds: the deployed model then computes what a plain model
    with the loaded weights computes."""
    model = deployed(make_model(out_indices=ALL_OUT))
    other = make_model(out_indices=ALL_OUT, seed=10)
    x = rand_input(2, 3, 64, 48)
    with torch.no_grad():
        before = model(x)
        if load == 'torch':
            model.load_state_dict(other.state_dict())
        else:
            from mmengine.runner import load_checkpoint
            path = tmp_path / 'other.pth'
            torch.save({'state_dict': other.state_dict()}, path)
            load_checkpoint(model, str(path), strict=True)
        after = model(x)
    assert max_diff(after, before) > 1e-3
    assert_outs_close(after, plain_outputs(other, x))


def test_deploy_then_pretrained_init(tmp_path):
    source = make_model(out_indices=ALL_OUT)
    path = save_checkpoint(source, tmp_path / 'ckpt.pth')
    model = make_model(out_indices=ALL_OUT, seed=4, init_cfg=pretrained(path))
    model.switch_to_deploy()
    x = rand_input(1, 3, 64, 48)
    with torch.no_grad():
        model(x)  # folds the random weights' filters
    model.init_weights()
    with torch.no_grad():
        assert_outs_close(model(x), plain_outputs(source, x))


def test_eval_refreshes_after_ema_style_data_copy():
    """mmengine's EMAHook swaps weights with ``p.data.copy_(...)``; its loops
    call ``model.eval()`` right after, and that (or ``clear_folded()``)
    must refresh a deployed model's filters."""
    x = rand_input(2, 3, 64, 48)
    expected = plain_outputs(make_model(out_indices=ALL_OUT, seed=10), x)
    for refresh in ('eval', 'clear_folded'):
        model = deployed(make_model(out_indices=ALL_OUT))
        ema = make_model(out_indices=ALL_OUT, seed=10)
        with torch.no_grad():
            before = model(x)
            # EMAHook._swap_ema_parameters, verbatim.
            for p_avg, p_src in zip(ema.parameters(), model.parameters()):
                tmp = p_avg.data.clone()
                p_avg.data.copy_(p_src.data)
                p_src.data.copy_(tmp)
            getattr(model, refresh)()
            after = model(x)
        assert max_diff(expected, before) > 1e-3, refresh
        assert_outs_close(after, expected)


def test_deployed_dtype_move_refolds():
    model = make_model(out_indices=ALL_OUT)
    x = rand_input(2, 3, 64, 48)
    fast = deployed(model)
    with torch.no_grad():
        fast(x)
        fast.double()
        out = fast(x.double())
    assert all(o.dtype == torch.float64 for o in out)
    assert all(t.dtype == torch.float64 for s in fast.stages
               for t in next(iter(s.blocks.folded.values())))
    ref = plain_outputs(model.double(), x.double())
    assert_outs_close(out, ref, atol=1e-10, rtol=1e-10)


def test_fp32_after_bf16_autocast_deployed():
    """Filters folded under bf16 autocast must not be reused, with bf16
    precision, by a later float32 forward at the same input size."""
    model = make_model(out_indices=ALL_OUT)
    x = rand_input(2, 3, 64, 48)
    fast = deployed(model)
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            fast(x)
        out = fast(x)
    assert_outs_close(out, plain_outputs(model, x))


@pytest.mark.parametrize(
    'target',
    ['blocks.0.op.to_k.weight', 'blocks.1.op.to_k.bias', 'freq_embed'])
def test_plain_eval_follows_inplace_updates(target):
    """The plain model keeps nothing between calls: an in-place update of a
    filter weight shows in the next eval output."""
    model = make_model(out_indices=ALL_OUT)
    x = rand_input(2, 3, 64, 48)
    before = plain_outputs(model, x)
    with torch.no_grad():
        param = model.stages[2].get_parameter(target)
        param.add_(0.1 if target != 'freq_embed' else 1.)
    fresh = make_model(out_indices=ALL_OUT, seed=3)
    fresh.load_state_dict(model.state_dict())
    after = plain_outputs(model, x)
    assert max_diff(after, before) > 1e-4
    assert_outs_close(after, plain_outputs(fresh, x), atol=0, rtol=0)


def _grad_after_inference_mode(model, size):
    """A forward under ``inference_mode``, then one with autograd."""
    x = rand_input(2, 3, *size)
    with torch.inference_mode():
        model(x)
    xg = x.clone().requires_grad_()
    weighted_loss(model(xg)).backward()
    return xg.grad


@pytest.mark.parametrize('deploy', [False, True])
def test_inference_mode_does_not_leak_into_autograd(deploy):
    """Nothing made under ``inference_mode`` is kept for a later pass with
    autograd. Input sizes no other test uses: the DCT bases
    ``mmvheat.ops`` caches per size are first made here."""
    model = make_model(out_indices=ALL_OUT).eval()
    if deploy:
        model.switch_to_deploy()
    grad = _grad_after_inference_mode(model, (76, 52))
    assert grad.abs().sum() > 0
    if not deploy:
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_folded_filters_are_no_inference_tensors():
    model = deployed(make_model(out_indices=ALL_OUT))
    # The bases of mmvheat.ops for these sizes are made outside inference
    # mode first, so that only the folded filters are under test here.
    x = rand_input(1, 3, 64, 48)
    with torch.no_grad():
        plain_outputs(make_model(out_indices=ALL_OUT), x)
    with torch.inference_mode():
        model(x)
    folded = [
        t for s in model.stages for t in next(iter(s.blocks.folded.values()))
    ]
    assert folded and not any(t.is_inference() for t in folded)
    grad = _grad_after_inference_mode(model, (64, 48))
    assert grad.abs().sum() > 0


def test_prepared_linears_are_no_inference_tensors():
    """Weights with the layer scales folded in, prepared again under
    ``inference_mode`` after ``clear_folded()``, serve a later pass with
    autograd (which cannot save inference tensors)."""
    model = deployed(make_model(arch=PRE_LS_ARCH, out_indices=ALL_OUT))
    model.clear_folded()
    grad = _grad_after_inference_mode(model, (64, 48))
    assert grad.abs().sum() > 0


@pytest.mark.parametrize('deploy', [False, True])
def test_eval_with_grad(deploy):
    """Under autograd in eval mode the plain model gives every weight a
    gradient; a deployed one (weights frozen) gives the input its
    gradient, through the folded filters."""
    model = make_model(out_indices=ALL_OUT).eval()
    x = rand_input(2, 3, 64, 48)
    ref = plain_outputs(model, x)
    if deploy:
        model.switch_to_deploy()
    xg = x.clone().requires_grad_()
    outs = model(xg)
    assert_outs_close(outs, ref)
    weighted_loss(outs).backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert (p.grad is None) == deploy, name


# -- 9. pretrained init -------------------------------------------------------
def save_checkpoint(model, path, prefix='backbone.', drop=()):
    state_dict = {
        prefix + k: v.clone()
        for k, v in model.state_dict().items() if k not in drop
    }
    torch.save({'state_dict': state_dict, 'meta': {}}, str(path))
    return str(path)


def pretrained(path, prefix='backbone.'):
    cfg = dict(type='Pretrained', checkpoint=path)
    if prefix:
        cfg['prefix'] = prefix
    return cfg


def assert_state_dicts_equal(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if key not in skip:
            torch.testing.assert_close(
                sa[key], sb[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize('arch', [PRE_ARCH, POST_ARCH])
def test_pretrained_roundtrip(arch, tmp_path):
    source = make_model(arch=arch, out_indices=ALL_OUT)
    path = save_checkpoint(source, tmp_path / 'ckpt.pth')
    target = make_model(
        arch=arch, out_indices=ALL_OUT, seed=4, init_cfg=pretrained(path))
    target.init_weights()
    assert_state_dicts_equal(target, source)
    x = rand_input(1, 3, 64, 48)
    source.eval()
    target.eval()
    with torch.no_grad():
        assert_outs_close(target(x), source(x), atol=0, rtol=0)


def test_pretrained_without_prefix(tmp_path):
    source = make_model()
    path = save_checkpoint(source, tmp_path / 'plain.pth', prefix='')
    target = make_model(seed=4, init_cfg=pretrained(path, prefix=None))
    target.init_weights()
    assert_state_dicts_equal(target, source)


@pytest.mark.parametrize('missing', [
    'stages.2.blocks.1.op.to_k.weight', 'stages.1.freq_embed',
    'patch_embed.conv1.weight', 'stages.3.blocks.0.mlp.fc2.bias'
])
def test_pretrained_missing_weight_raises(missing, tmp_path):
    source = make_model(out_indices=ALL_OUT)
    path = save_checkpoint(source, tmp_path / 'ckpt.pth', drop=(missing, ))
    target = make_model(out_indices=ALL_OUT, init_cfg=pretrained(path))
    with pytest.raises(RuntimeError) as info:
        target.init_weights()
    assert missing in str(info.value)


def test_pretrained_wrong_checkpoint_raises(tmp_path):
    source = make_model(out_indices=ALL_OUT)
    # Only the output norms match: everything else would stay random.
    keep = {k for k in source.state_dict() if k.startswith('norm')}
    drop = [k for k in source.state_dict() if k not in keep]
    path = save_checkpoint(source, tmp_path / 'norms.pth', drop=drop)
    target = make_model(out_indices=ALL_OUT, init_cfg=pretrained(path))
    with pytest.raises(RuntimeError, match='stages.0.freq_embed'):
        target.init_weights()
    # A prefix that matches nothing is refused by mmengine.
    path = save_checkpoint(source, tmp_path / 'ckpt.pth', prefix='model.')
    target = make_model(init_cfg=pretrained(path, prefix='backbone.'))
    with pytest.raises((RuntimeError, AssertionError)):
        target.init_weights()


def test_pretrained_classification_into_dense(tmp_path):
    cls_model = make_model(out_indices=(3, ))
    assert not torch.all(cls_model.norm3.weight == 1)
    path = save_checkpoint(cls_model, tmp_path / 'cls.pth')
    dense = make_model(
        out_indices=ALL_OUT,
        seed=4,
        randomize=False,
        init_cfg=pretrained(path))
    dense.init_weights()
    dense_sd, cls_sd = dense.state_dict(), cls_model.state_dict()
    for key, value in cls_sd.items():
        torch.testing.assert_close(
            dense_sd[key], value, atol=0, rtol=0, msg=key)
    for i in range(3):
        norm = getattr(dense, f'norm{i}')
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    outs = dense(rand_input(1, 3, 64, 64))
    assert len(outs) == 4


def test_pretrained_dense_into_classification(tmp_path):
    """Extra output norms in the checkpoint are unexpected keys, not errors."""
    dense = make_model(out_indices=ALL_OUT)
    path = save_checkpoint(dense, tmp_path / 'dense.pth')
    cls_model = make_model(
        out_indices=(3, ), seed=4, init_cfg=pretrained(path))
    cls_model.init_weights()
    torch.testing.assert_close(cls_model.norm3.weight, dense.norm3.weight)


def test_pretrained_resizes_freq_embed(tmp_path):
    small = make_model(img_size=32, out_indices=ALL_OUT)
    path = save_checkpoint(small, tmp_path / 'ckpt32.pth')
    large = make_model(
        img_size=64, out_indices=ALL_OUT, seed=4, init_cfg=pretrained(path))
    large.init_weights()
    for i, (s, l) in enumerate(zip(small.stages, large.stages)):
        side = 64 // 4 // 2**i
        assert l.freq_embed.shape == (side, side, SMALL_DIMS[i])
        expected = resize_freq_embed(s.freq_embed.detach(), (side, side))
        torch.testing.assert_close(
            l.freq_embed.detach(), expected, atol=1e-6, rtol=1e-6)
    assert_state_dicts_equal(
        large, small, skip=[f'stages.{i}.freq_embed' for i in range(4)])


@pytest.mark.parametrize('deploy', [False, True])
def test_load_state_dict_resizes_freq_embed(deploy):
    large = make_model(img_size=64)
    small = make_model(img_size=32, seed=9)
    if deploy:
        large = deployed(large)
        with torch.no_grad():
            large(rand_input(1, 3, 64, 64))
        assert all(len(s.blocks.folded) == 1 for s in large.stages)
    large.load_state_dict(small.state_dict())
    if deploy:
        assert all(len(s.blocks.folded) == 0 for s in large.stages)
    for i, (s, l) in enumerate(zip(small.stages, large.stages)):
        side = 64 // 4 // 2**i
        expected = resize_freq_embed(s.freq_embed.detach(), (side, side))
        torch.testing.assert_close(l.freq_embed.detach(), expected)
    # The checkpoint dict given by the caller is left alone.
    sd = small.state_dict()
    large.load_state_dict(sd)
    assert sd['stages.0.freq_embed'].shape == (8, 8, 8)


def test_load_state_dict_wrong_channels_fails():
    model = make_model()
    sd = model.state_dict()
    sd['stages.0.freq_embed'] = torch.zeros(4, 4, 5)
    with pytest.raises(RuntimeError, match='freq_embed'):
        model.load_state_dict(sd)


def test_pretrained_missing_file_names_the_tools(tmp_path):
    path = str(tmp_path / 'no-such-checkpoint.pth')
    model = VHeat(
        PRE_ARCH,
        img_size=32,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    with pytest.raises(FileNotFoundError) as info:
        model.init_weights()
    message = str(info.value)
    assert path in message
    assert 'tools/interpolate4downstream.py' in message
    assert 'vheat_to_mmvheat.py' in message
