# Copyright (c) mmvheat contributors. All rights reserved.
"""Every parameter's gradient comes in the parameter's own layout.

DistributedDataParallel lays its gradient buckets out as the parameters;
a gradient with other strides is copied into its bucket at every step, with
a warning ("Grad strides do not match bucket view strides"). Strides of
dimensions of size 1 count too: they are what the CPU's depth-wise
convolutions, run on channels-last views, change.
"""
import pytest
import torch

from mmvheat.models import MPViT, VHeat

ARCHS = dict(
    vheat=lambda: VHeat(
        arch=dict(
            depths=[1, 1, 1, 1],
            dims=16,
            post_norm=False,
            layer_scale=None,
            mlp_ratio=2.),
        img_size=64,
        out_indices=(0, 1, 2, 3)),
    mpvit=lambda: MPViT(
        arch=dict(
            num_stages=4,
            num_path=[1, 2, 2, 2],
            num_layers=[1, 1, 1, 1],
            embed_dims=[16, 32, 32, 32],
            mlp_ratios=[2, 2, 2, 2],
            num_heads=[2, 2, 2, 2]),
        out_indices=(0, 1, 2, 3)))


@pytest.mark.parametrize('name', list(ARCHS))
def test_gradients_come_in_the_parameters_layout(name):
    torch.manual_seed(0)
    model = ARCHS[name]().train()
    outputs = model(torch.randn(2, 3, 64, 64))
    sum(out.mean() for out in outputs).backward()
    different = {
        key: (tuple(param.stride()), tuple(param.grad.stride()))
        for key, param in model.named_parameters()
        if param.grad is not None and param.grad.stride() != param.stride()
    }
    assert not different
    assert all(p.grad is not None for p in model.parameters())
