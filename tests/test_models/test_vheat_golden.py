# Copyright (c) mmvheat contributors. All rights reserved.
"""VHeat computes the published vHeat function (``vheat_golden.pt``).

Published weights go through :func:`convert_published_vheat` into our
backbone (and an mmpretrain ``ImageClassifier``); logits, last-stage features
and dense outputs must match the published implementation's within 1e-4, in
eval and train mode, and switched to deploy mode (filters folded once and
reused, fused CPU linear layers, sub-batches).
"""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmvheat.converters import convert_published_vheat
from mmvheat.models.backbones.vheat import VHeat

ATOL = 1e-4


@pytest.fixture(scope='module')
def golden(reference_dir):
    return torch.load(
        osp.join(reference_dir, 'vheat_golden.pt'), weights_only=True)


def _arch(case):
    arch = case['arch']
    return dict(
        depths=list(arch['depths']),
        dims=arch['dims'],
        post_norm=arch['post_norm'],
        layer_scale=arch.get('layer_scale'),
        mlp_ratio=4.)


def _split(converted):
    backbone = {
        k[len('backbone.'):]: v
        for k, v in converted.items() if k.startswith('backbone.')
    }
    rest = {
        k: v
        for k, v in converted.items() if not k.startswith('backbone.')
    }
    return backbone, rest


def _assert_close(actual, expected, what):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    assert err <= ATOL, f'{what}: max abs error {err:.3g} > {ATOL}'


def _build_backbone(case, out_indices):
    converted = convert_published_vheat(case['state_dict'])
    backbone_sd, rest = _split(converted)
    model = VHeat(
        arch=_arch(case), img_size=case['img_size'], out_indices=out_indices)
    model.load_state_dict(backbone_sd, strict=True)
    return model.eval(), converted, rest


def _plain_and_deployed(model, x):
    """Outputs in eval and train mode, and deployed (first and cached
    filters)."""
    results = {}
    deployed = copy.deepcopy(model)
    deployed.switch_to_deploy()
    with torch.no_grad():
        results['eval'] = model(x)
        model.train()
        results['train'] = model(x)
        model.eval()
        results['deployed'] = deployed(x)
        assert all(len(stage.blocks.folded) == 1 for stage in deployed.stages)
        results['deployed, folded filters reused'] = deployed(x)
    return results


@pytest.mark.parametrize('name', ['pre_norm', 'post_norm_layer_scale'])
def test_classification_golden(golden, name):
    case = golden[name]
    x = case['input']
    model, converted, head = _build_backbone(case, out_indices=(3, ))
    assert set(head) == {'head.fc.weight', 'head.fc.bias'}

    features = []
    model.stages[3].register_forward_hook(
        lambda mod, args, out: features.append(out.permute(0, 3, 1, 2)))
    for mode, (out, ) in _plain_and_deployed(model, x).items():
        logits = F.linear(
            out.mean((2, 3)), head['head.fc.weight'], head['head.fc.bias'])
        _assert_close(logits, case['logits'], f'{name} logits, {mode}')
        _assert_close(
            features.pop(0), case['features'], f'{name} features, {mode}')

    # The same weights through mmpretrain's ImageClassifier.
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = MODELS.build(
            dict(
                type='ImageClassifier',
                backbone=dict(
                    type='mmvheat.VHeat',
                    arch=_arch(case),
                    img_size=case['img_size'],
                    out_indices=(3, )),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead',
                    num_classes=case['logits'].shape[1],
                    in_channels=case['features'].shape[1])))
    assert isinstance(classifier.backbone, VHeat)
    classifier.load_state_dict(converted, strict=True)
    classifier.eval()
    with torch.no_grad():
        # mode='tensor' runs the head: LinearClsHead returns cls_score.
        logits = classifier(x, mode='tensor')
        _assert_close(logits, case['logits'], f'{name} ImageClassifier')
        logits = classifier.head(classifier.extract_feat(x))
        _assert_close(logits, case['logits'], f'{name} head(extract_feat)')


def test_dense_golden(golden):
    case = golden['dense']
    out_indices = tuple(case['out_indices'])
    assert out_indices == (0, 1, 2, 3)
    model, converted, rest = _build_backbone(case, out_indices=out_indices)
    assert not rest
    for i in out_indices:  # published outnorm{i} -> our norm{i}
        assert torch.equal(
            model.get_submodule(f'norm{i}').weight,
            case['state_dict'][f'outnorm{i}.weight'])

    for input_key, output_key in [('input', 'outputs'),
                                  ('input_same_size', 'outputs_same_size')]:
        x, expected = case[input_key], case[output_key]
        assert len(expected) == 4
        for mode, outs in _plain_and_deployed(model, x).items():
            assert len(outs) == len(expected)
            for i, (out, ref) in enumerate(zip(outs, expected)):
                _assert_close(
                    out, ref, f'dense {output_key}[{i}] ({tuple(x.shape)}), '
                    f'{mode}')
