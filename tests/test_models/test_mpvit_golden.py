# Copyright (c) mmvheat contributors. All rights reserved.
"""MPViT computes the published MPViT function (``mpvit_golden.pt``).

The published weights go through :func:`convert_published_mpvit` into our
backbone (and into an mmpretrain ``ImageClassifier``); logits and the four
stage outputs must match the published implementation's within 1e-4 (max
abs), in eval mode.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmvheat.converters import convert_published_mpvit
from mmvheat.models.backbones.mpvit import MPViT

ATOL = 1e-4


@pytest.fixture(autouse=True, scope='module')
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def golden(reference_dir):
    return torch.load(
        osp.join(reference_dir, 'mpvit_golden.pt'), weights_only=True)


@pytest.fixture(scope='module')
def converted(golden):
    return convert_published_mpvit(golden['state_dict'])


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


def test_fixture_is_what_we_expect(golden):
    assert golden['arch']['num_stages'] == 4
    assert golden['num_classes'] == 10
    assert tuple(golden['input'].shape) == (2, 3, 64, 96)
    assert [tuple(o.shape)
            for o in golden['stage_outputs']] == [(2, 32, 16, 24),
                                                  (2, 48, 8, 12),
                                                  (2, 64, 4, 6), (2, 64, 2, 3)]
    # No normalization of the outputs in the published model.
    assert not any('norm' in k for k in golden['state_dict']
                   if not k.startswith(('mhca_stages', 'patch_embed')))


def test_conversion_merges_shared_encodings(golden, converted):
    published = golden['state_dict']
    backbone, head = _split(converted)
    assert set(head) == {'head.fc.weight', 'head.fc.bias'}
    copies = [
        k for k in published
        if '.MHCA_layers.' in k and ('.cpe.' in k or '.crpe.' in k)
    ]
    assert copies and len(converted) == len(published) - len(copies)
    torch.testing.assert_close(
        backbone['stages.2.encoders.1.crpe.convs.2.weight'],
        published['mhca_stages.2.mhca_blks.1.MHCA_layers.1.factoratt_crpe.'
                  'crpe.conv_list.2.weight'],
        atol=0,
        rtol=0)


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (3, )])
def test_backbone_golden(golden, converted, out_indices):
    backbone_sd, head = _split(converted)
    model = MPViT(arch=golden['arch'], out_indices=out_indices)
    model.load_state_dict(backbone_sd, strict=True)
    model.eval()
    with torch.no_grad():
        outs = model(golden['input'])
    assert len(outs) == len(out_indices)
    for i, out in zip(out_indices, outs):
        _assert_close(out, golden['stage_outputs'][i], f'stage output {i}')
    logits = F.linear(outs[-1].mean((2, 3)), head['head.fc.weight'],
                      head['head.fc.bias'])
    _assert_close(logits, golden['logits'], 'logits (backbone + head)')


def test_image_classifier_golden(golden, converted):
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        classifier = MODELS.build(
            dict(
                type='ImageClassifier',
                backbone=dict(
                    type='mmvheat.MPViT',
                    arch=golden['arch'],
                    out_indices=(3, )),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead',
                    num_classes=golden['num_classes'],
                    in_channels=golden['arch']['embed_dims'][-1])))
    assert isinstance(classifier.backbone, MPViT)
    classifier.load_state_dict(converted, strict=True)
    classifier.eval()
    x = golden['input']
    with torch.no_grad():
        # mode='tensor' runs the head: LinearClsHead returns cls_score.
        _assert_close(
            classifier(x, mode='tensor'), golden['logits'],
            'ImageClassifier logits')
        features = classifier.backbone(x)
        _assert_close(features[0], golden['stage_outputs'][3],
                      'ImageClassifier backbone output')
