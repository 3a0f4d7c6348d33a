# Copyright (c) mmvheat contributors. All rights reserved.
import pytest
import torch
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

from mmvheat.engine import CPUAmpOptimWrapper
from mmvheat.models import VHeat

ARCH = dict(depths=[1, 1, 1, 1], dims=8, post_norm=False, layer_scale=None,
            mlp_ratio=2.)


def test_registered_in_mmengine_root():
    assert OPTIM_WRAPPERS.get('CPUAmpOptimWrapper') is CPUAmpOptimWrapper


def test_only_bfloat16():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match='bfloat16'):
        CPUAmpOptimWrapper(dtype='float16', optimizer=optimizer)


def test_training_steps_in_bfloat16_stay_finite():
    torch.manual_seed(0)
    model = VHeat(ARCH, img_size=32, out_indices=(0, 1, 2, 3))
    model.train()
    wrapper = CPUAmpOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    x = torch.randn(2, 3, 64, 48)
    target = [torch.randn(2, c, 64 // s, 48 // s)
              for c, s in zip(model.out_channels, model.out_strides)]
    losses = []
    for _ in range(5):
        with wrapper.optim_context(model):
            outs = model(x)
            assert all(o.dtype == torch.bfloat16 for o in outs)
            loss = sum(((o.float() - t)**2).mean()
                       for o, t in zip(outs, target))
        wrapper.update_params(loss)
        losses.append(loss.item())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # parameters stay float32: autocast only casts the computation
    assert all(p.dtype == torch.float32 for p in model.parameters())
