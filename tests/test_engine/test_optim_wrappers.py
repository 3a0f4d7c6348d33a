# Copyright (c) mmvheat contributors. All rights reserved.
import pytest
import torch
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

from mmvheat.engine import CPUAmpOptimWrapper
from mmvheat.models import VHeat

ARCH = dict(
    depths=[1, 1, 1, 1],
    dims=8,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)


def test_registered_in_mmengine_root():
    assert OPTIM_WRAPPERS.get('CPUAmpOptimWrapper') is CPUAmpOptimWrapper


@pytest.mark.parametrize('dtype', ['float32', 'float64', torch.int8, 'x'])
def test_only_half_dtypes(dtype):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match='bfloat16 or float16'):
        CPUAmpOptimWrapper(dtype=dtype, optimizer=optimizer)


def test_bad_loss_scale():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match='loss_scale'):
        CPUAmpOptimWrapper(
            dtype='float16', loss_scale='static', optimizer=optimizer)


@pytest.mark.parametrize('loss_scale, init_scale',
                         [('dynamic', 2.**16), (512., 512.),
                          (dict(init_scale=64.), 64.)])
def test_float16_scales_the_loss(loss_scale, init_scale):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    wrapper = CPUAmpOptimWrapper(
        dtype=torch.float16, loss_scale=loss_scale, optimizer=optimizer)
    assert wrapper.loss_scaler.is_enabled()
    assert wrapper.loss_scaler.get_scale() == init_scale
    # The scale is saved and restored with the optimizer state.
    state = wrapper.state_dict()
    assert state['loss_scaler']['scale'] == init_scale
    other = CPUAmpOptimWrapper(
        dtype='float16',
        optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    state['loss_scaler']['scale'] = 8.
    other.load_state_dict(state)
    assert other.loss_scaler.get_scale() == 8.


def test_bfloat16_does_not_scale():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    wrapper = CPUAmpOptimWrapper(optimizer=optimizer)
    assert wrapper.cast_dtype is torch.bfloat16
    assert not wrapper.loss_scaler.is_enabled()
    assert wrapper.state_dict()['loss_scaler'] == {}


def test_float16_skips_steps_with_overflowing_gradients():
    layer = nn.Linear(2, 2)
    before = layer.weight.detach().clone()
    wrapper = CPUAmpOptimWrapper(
        dtype='float16',
        loss_scale=dict(init_scale=2.**10),
        optimizer=torch.optim.SGD(layer.parameters(), lr=0.1))
    with wrapper.optim_context(layer):
        loss = layer(torch.full((1, 2), float('inf'))).float().sum()
    wrapper.update_params(loss)
    assert torch.equal(layer.weight, before)  # step skipped
    assert wrapper.loss_scaler.get_scale() == 2.**9  # and the scale halved


def test_float16_fixed_loss_scale_stays():
    layer = nn.Linear(2, 2)
    wrapper = CPUAmpOptimWrapper(
        dtype='float16',
        loss_scale=2.**10,
        optimizer=torch.optim.SGD(layer.parameters(), lr=0.1))
    for value in (float('inf'), 1.):
        with wrapper.optim_context(layer):
            loss = layer(torch.full((1, 2), value)).float().sum()
        wrapper.update_params(loss)
        assert wrapper.loss_scaler.get_scale() == 2.**10


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_training_steps_in_half_precision_stay_finite(dtype):
    torch.manual_seed(0)
    model = VHeat(ARCH, img_size=32, out_indices=(0, 1, 2, 3))
    model.train()
    wrapper = CPUAmpOptimWrapper(
        dtype=dtype, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    x = torch.randn(2, 3, 64, 48)
    target = [
        torch.randn(2, c, 64 // s, 48 // s)
        for c, s in zip(model.out_channels, model.out_strides)
    ]
    losses = []
    for _ in range(5):
        with wrapper.optim_context(model):
            outs = model(x)
            assert all(o.dtype == dtype for o in outs)
            loss = sum(
                ((o.float() - t)**2).mean() for o, t in zip(outs, target))
        wrapper.update_params(loss)
        losses.append(loss.item())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # parameters stay float32: autocast only casts the computation
    assert all(p.dtype == torch.float32 for p in model.parameters())
