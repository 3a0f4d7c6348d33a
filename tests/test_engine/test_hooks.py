# Copyright (c) mmvheat contributors. All rights reserved.
"""``SwitchToDeployHook``: the test tool's step into deploy mode."""
from types import SimpleNamespace

import torch
from mmengine.registry import HOOKS

from mmvheat.models import MPViT, VHeat

ARCH = dict(
    depths=[1, 1, 1, 1],
    dims=8,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)


class Wrapper(torch.nn.Module):
    """Stands in for a TTA model around a classifier."""

    def __init__(self):
        super().__init__()
        self.module = torch.nn.Module()
        self.module.backbone = VHeat(arch=ARCH, img_size=32)
        self.module.head = torch.nn.Linear(64, 3)


def test_before_test_deploys_the_backbones():
    runner = SimpleNamespace(model=Wrapper())
    hook = HOOKS.build(dict(type='SwitchToDeployHook'))
    backbone = runner.model.module.backbone
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        plain = backbone(x)
    hook.before_val(runner)  # validation during training: untouched
    hook.before_train(runner)
    assert not backbone.deploy
    hook.before_test(runner)
    assert backbone.deploy
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), plain, atol=1e-5, rtol=1e-5)
    hook.before_test(runner)  # a second test run: nothing more to do
    assert backbone.deploy


def test_before_test_leaves_other_models_alone():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    HOOKS.build(dict(type='SwitchToDeployHook')).before_test(
        SimpleNamespace(model=model))
    assert model[0].weight.requires_grad


def test_mpvit_deploy_is_a_no_op():
    model = MPViT(
        arch=dict(
            num_path=[1, 1, 1, 1],
            num_layers=[1, 1, 1, 1],
            embed_dims=[16, 16, 16, 16],
            mlp_ratios=2,
            num_heads=8)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.switch_to_deploy()
        after = model(x)
    assert model.deploy
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
