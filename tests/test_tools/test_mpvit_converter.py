# Copyright (c) mmvheat contributors. All rights reserved.
"""Published MPViT checkpoints into the mmvheat layout.

:mod:`mmvheat.converters.mpvit` is tested in-process on every published key
layout; ``tools/model_converters/mpvit_to_mmvheat.py`` runs as a user runs
it (subprocesses started together) for its output, one-line errors and the
files it leaves alone.

Published checkpoints are synthesised from ``mpvit_official_state_dict_shapes
.json``: every tensor is a single distinct value broadcast to its shape
(``expand``: files stay a few KB, yet each key's value can be traced through
the conversion). The copies of a shared position encoding get the value of
the encoder's own key, as in a real checkpoint.
"""
import argparse
import json
import os
import os.path as osp
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

import mmvheat
import mmvheat.models.backbones.mpvit as mpvit_module
from mmvheat.converters import (CheckpointError, NotAnMPViTCheckpoint,
                                convert_mpvit_checkpoint, infer_mpvit_arch)
from mmvheat.models.backbones.mpvit import MPViT

ARCHS = ('tiny', 'xsmall', 'small', 'base')
TOOL = osp.join('tools', 'model_converters', 'mpvit_to_mmvheat.py')
_COPY = re.compile(r'^(.*mhca_blks\.\d+\.)MHCA_layers\.\d+\.'
                   r'(?:factoratt_crpe\.)?((?:cpe|crpe)\..+)$')


@pytest.fixture(scope='module')
def shapes(reference_dir):
    with open(
            osp.join(reference_dir,
                     'mpvit_official_state_dict_shapes.json')) as f:
        return {
            k[len('mpvit_'):]: v['state_dict']
            for k, v in json.load(f).items()
        }


def owner(key):
    """The encoder-level key a copy of a shared position encoding repeats."""
    match = _COPY.match(key)
    return match[1] + match[2] if match else key


def marked_state_dict(key_shapes, start=0., sign=1.):
    """Every key gets its own value ``sign * (start + index)``; copies of a
    shared weight get their owner's (real checkpoints share them)."""
    values = OrderedDict()
    for i, key in enumerate(key_shapes):
        values[key] = sign * (start + i)
    return OrderedDict((key, torch.tensor(values[owner(key)]).expand(shape))
                       for key, shape in key_shapes.items())


def marker(tensor):
    """The one value a marked tensor holds (a few samples are compared)."""
    flat = tensor.reshape(-1)
    samples = flat[[0, flat.numel() // 2, -1]].tolist()
    assert samples.count(samples[0]) == 3, samples
    return samples[0]


def assert_values_preserved(source, converted):
    """Each distinct source value lands on exactly one converted key."""
    owners = {k for k in source if owner(k) == k}
    assert len(converted) == len(owners)
    assert sorted(marker(v) for v in converted.values()) == sorted(
        marker(source[k]) for k in owners)


def expected_key(key):
    """Our name for a published key, spelled out independently of the
    converter's regular expressions."""
    key = owner(key)
    replacements = [
        (r'^cls_head\.cls\.', 'head.fc.'),
        (r'^stem\.(\d)\.bn\.', r'stem.\1.norm.'),
        (r'^patch_embed_stages\.(\d)\.patch_embeds\.(\d)\.patch_conv\.',
         r'stages.\1.patch_embed.convs.\2.'),
        (r'\.dwconv\.(weight)$', r'.DW.\1'),
        (r'^mhca_stages\.(\d)\.mhca_blks\.(\d)\.', r'stages.\1.encoders.\2.'),
        (r'\.MHCA_layers\.(\d+)\.', r'.blocks.\1.'),
        (r'\.factoratt_crpe\.', '.attn.'),
        (r'\.conv_list\.', '.convs.'),
        (r'^mhca_stages\.(\d)\.InvRes\.', r'stages.\1.local_block.'),
        (r'^mhca_stages\.(\d)\.', r'stages.\1.'),
        (r'\.bn\.', '.norm.'),
        (r'\.pwconv\.', '.pointwise.'),
    ]
    for pattern, repl in replacements:
        key = re.sub(pattern, repl, key)
    key = key.replace('.DW.',
                      '.dwconv.' if 'local_block' in key else '.depthwise.')
    return key if key.startswith('head.') else 'backbone.' + key


@pytest.fixture
def fast_init(monkeypatch):
    """Builds of the full-size archs skip the random init (weights are
    loaded anyway)."""
    monkeypatch.setattr(nn.Linear, 'reset_parameters', lambda self: None)
    monkeypatch.setattr(nn.Conv2d, 'reset_parameters', lambda self: None)
    monkeypatch.setattr(mpvit_module, '_init_conv_norm', lambda module: None)


def build_classifier(arch):
    from mmpretrain.registry import MODELS
    return MODELS.build(
        dict(
            _scope_='mmpretrain',
            type='ImageClassifier',
            backbone=dict(type='mmvheat.MPViT', arch=arch, out_indices=(3, )),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead',
                num_classes=1000,
                in_channels=MPViT.arch_zoo[arch]['embed_dims'][-1])))


def check_conversion(arch, source, converted, shapes):
    """Every published key maps, values and shapes intact, and an
    ImageClassifier of the arch loads the result strictly."""
    assert list(source) == list(shapes[arch])
    assert_values_preserved(source, converted)
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in converted)
    for key, value in source.items():
        target = expected_key(key)
        assert marker(converted[target]) == marker(value), (key, target)
        assert converted[target].shape == value.shape, key

    info = infer_mpvit_arch(converted)
    assert info == dict(
        arch=MPViT.arch_zoo[arch], arch_name=arch, num_classes=1000)

    # An mmpretrain ImageClassifier of the arch takes every key, shape for
    # shape, and leaves none of its own unset.
    classifier = build_classifier(arch)
    classifier.load_state_dict(converted, strict=True)
    encoder = classifier.backbone.stages[2].encoders[1]
    assert marker(encoder.crpe.convs[1].weight) == marker(
        source['mhca_stages.2.mhca_blks.1.crpe.conv_list.1.weight'])
    assert marker(encoder.blocks[-1].attn.qkv.bias) == marker(
        source[f'mhca_stages.2.mhca_blks.1.MHCA_layers.'
               f'{len(encoder.blocks) - 1}.factoratt_crpe.qkv.bias'])
    assert marker(classifier.head.fc.weight) == marker(
        source['cls_head.cls.weight'])


@pytest.mark.parametrize('arch', ('tiny', 'xsmall', 'base'))
def test_every_published_key_maps(arch, shapes, fast_init):
    source = marked_state_dict(shapes[arch])
    converted, layout, num_keys = convert_mpvit_checkpoint({
        'model': source,
        'epoch': 300
    })
    assert (layout, num_keys) == ('classification', len(source))
    check_conversion(arch, source, converted, shapes)


def test_input_formats(shapes):
    model = marked_state_dict(shapes['tiny'])
    for checkpoint in (dict(model), {'state_dict': model}):
        converted = convert_mpvit_checkpoint(checkpoint).state_dict
        assert_values_preserved(model, converted)


def test_dense_checkpoint(shapes):
    """``backbone.*`` keys convert; neck and heads are kept as they are."""
    key_shapes = {
        f'backbone.{k}': v
        for k, v in shapes['tiny'].items() if not k.startswith('cls_head.')
    }
    key_shapes['neck.lateral_convs.0.conv.weight'] = [256, 96, 1, 1]
    source = marked_state_dict(key_shapes)
    converted, layout, _ = convert_mpvit_checkpoint({
        'state_dict': source,
        'meta': {}
    })
    assert layout == 'dense'
    info = infer_mpvit_arch(converted)
    assert info['arch_name'] == 'tiny' and 'num_classes' not in info
    assert_values_preserved(source, converted)
    assert torch.equal(converted['neck.lateral_convs.0.conv.weight'],
                       source['neck.lateral_convs.0.conv.weight'])


def _pretrained(checkpoint, **kwargs):
    return MPViT(
        init_cfg=dict(
            type='Pretrained', checkpoint=str(checkpoint), prefix='backbone.'),
        **kwargs)


@pytest.fixture(scope='module')
def tiny_checkpoint(shapes, tmp_path_factory):
    source = marked_state_dict(shapes['tiny'])
    path = tmp_path_factory.mktemp('tiny') / 'tiny.pth'
    converted = convert_mpvit_checkpoint({'model': source}).state_dict
    torch.save({'state_dict': converted}, path)
    return converted, path


def test_dense_backbone_loads_classification_checkpoint(tiny_checkpoint):
    """mmdet/mmseg: every backbone weight comes from the checkpoint."""
    converted, path = tiny_checkpoint
    model = _pretrained(
        path,
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True))
    model.init_weights()
    state_dict = model.state_dict()
    assert len(state_dict) == len(converted) - 2  # all but head.fc
    for name, value in state_dict.items():
        assert torch.equal(value,
                           converted[f'backbone.{name}'].to(value.dtype)), name


def test_wrong_arch_is_refused(tiny_checkpoint):
    _, path = tiny_checkpoint
    model = _pretrained(path, arch='xsmall')  # same depths, other widths
    with pytest.raises(RuntimeError, match='of another shape'):
        model.init_weights()


def _resnet():
    return {
        'state_dict': {
            'conv1.weight': torch.zeros(64, 3, 7, 7),
            'bn1.weight': torch.ones(64),
            'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
            'fc.weight': torch.zeros(1000, 2048),
        }
    }


def _converted():
    return {
        'state_dict': {
            'backbone.stages.0.encoders.0.cpe.proj.bias': torch.zeros(4)
        }
    }


def _with_key(key):
    """A small published-looking state dict plus ``key``."""
    return {
        'model': {
            'mhca_stages.0.aggregate.conv.weight':
            torch.zeros(4),
            'patch_embed_stages.0.patch_embeds.0.patch_conv.bn.bias':
            torch.zeros(4),
            key:
            torch.ones(4)
        }
    }


def _differing_copies():
    prefix = 'mhca_stages.0.mhca_blks.0.'
    return {
        'model': {
            'patch_embed_stages.0.patch_embeds.0.patch_conv.bn.bias':
            torch.zeros(4),
            f'{prefix}cpe.proj.bias':
            torch.zeros(4),
            f'{prefix}MHCA_layers.0.cpe.proj.bias':
            torch.ones(4),
        }
    }


UNKNOWN = [
    'mhca_stages.0.mhca_blks.0.MHCA_layers.0.gamma',
    'mhca_stages.0.mhca_blks.0.MHCA_layers.0.norm1.scale',
    'mhca_stages.0.extra.weight', 'stem.0.conv.extra', 'cls_head.cls.scale',
    'cls_head.other.weight', 'mhca_stages.0.InvRes.conv1.bn.extra'
]


@pytest.mark.parametrize(
    'checkpoint, reason',
    [(_resnet, 'not a published MPViT checkpoint'),
     (lambda: [torch.zeros(1)], 'expected a dict checkpoint'),
     (_converted, 'already in the mmvheat layout'),
     (_differing_copies, 'copies of shared position-encoding')] +
    [(lambda key=key: _with_key(key),
      f"keys that do not belong to a published MPViT model (1): ['{key}']")
     for key in UNKNOWN],
    ids=['resnet', 'list', 'already-converted', 'differing-copies'] +
    [f'unknown-{key}' for key in UNKNOWN])
def test_other_checkpoints_are_refused(checkpoint, reason):
    with pytest.raises(CheckpointError) as info:
        convert_mpvit_checkpoint(checkpoint())
    assert reason in str(info.value)
    if 'keys that do not belong' in reason:
        assert isinstance(info.value, NotAnMPViTCheckpoint)


# -- the command line ---------------------------------------------------------
@pytest.fixture(scope='module')
def cli(shapes, tmp_path_factory, run_tools):
    """``{name: (source, tmp dir, dst, CompletedProcess)}``, run together;
    a failing run's DST already exists (``previous``)."""
    source = marked_state_dict(shapes['small'])
    inputs = {
        'small': {
            'model': source
        },
        'untrusted': {
            'model': source,
            'args': argparse.Namespace(lr=1)
        },
        'unknown-key': _with_key(UNKNOWN[0]),
        'other-spelling': {
            'model': source
        },
        'dst-is-a-folder': {
            'model': source
        },
    }
    runs = {}
    for name, checkpoint in inputs.items():
        tmp = tmp_path_factory.mktemp(name)
        src, dst = tmp / 'mpvit_small.pth', tmp / 'out' / 'dst.pth'
        torch.save(checkpoint, src)
        if name == 'other-spelling':
            dst = tmp / 'out' / '..' / 'mpvit_small.pth'
        if name == 'dst-is-a-folder':
            dst = tmp / 'out'
        if name != 'small':
            os.makedirs(tmp / 'out')
            if name in ('untrusted', 'unknown-key'):
                dst.write_bytes(b'previous')
        runs[name] = (tmp, dst, [TOOL, src, dst])
    results = run_tools({name: run[2] for name, run in runs.items()})
    return {
        name: (source, tmp, dst, results[name])
        for name, (tmp, dst, _) in runs.items()
    }


def test_cli_converts_small(cli, shapes, fast_init):
    source, tmp, dst, result = cli['small']
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    merged = sum(owner(k) != k for k in source)
    assert merged > 0
    assert result.stdout.splitlines() == [
        f'Converted {len(source)} keys into {len(source) - merged} ({merged} '
        'copies of shared position encodings merged; classification) from '
        f'{tmp / "mpvit_small.pth"}',
        f'Saved to {dst}',
        f'Arch: small {MPViT.arch_zoo["small"]}',
        '  num_classes: 1000',
    ]
    assert sorted(os.listdir(dst.parent)) == [dst.name]  # no temp file
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert checkpoint['meta'] == dict(
        source='mpvit_small.pth',
        mmvheat_version=mmvheat.__version__,
        layout='classification',
        arch=MPViT.arch_zoo['small'],
        arch_name='small',
        num_classes=1000)
    check_conversion('small', source, checkpoint['state_dict'], shapes)


@pytest.mark.parametrize('name, reason', [
    ('untrusted',
     '{src}: refused global argparse.Namespace (weights_only=True builds only '
     'tensors, containers, numbers and the objects mmengine writes); pass '
     '--trust-checkpoint only if you trust the file'),
    ('unknown-key', "{src}: keys that do not belong to a published MPViT "
     f"model (1): ['{UNKNOWN[0]}']"),
    ('other-spelling', 'the output {dst} is the input {src}'),
    ('dst-is-a-folder', 'cannot write {dst}: it is a directory')
])
def test_cli_failures_change_nothing(cli, check_cli_error, name, reason):
    _, tmp, dst, result = cli[name]
    src = tmp / 'mpvit_small.pth'
    check_cli_error(result, 1, reason.format(src=src, dst=dst))
    assert sorted(os.listdir(tmp)) == ['mpvit_small.pth', 'out']
    if name in ('untrusted', 'unknown-key'):
        assert os.listdir(tmp / 'out') == ['dst.pth']
        assert dst.read_bytes() == b'previous'
    else:
        assert os.listdir(tmp / 'out') == []
    assert 'model' in torch.load(src, weights_only=name != 'untrusted')


def test_larger_arch_into_smaller_is_refused(cli):
    """Extra blocks must not be dropped silently."""
    _, _, dst, result = cli['small']
    assert result.returncode == 0, result.stderr
    model = _pretrained(
        dst, arch=dict(MPViT.arch_zoo['small'], num_layers=[1, 2, 4, 1]))
    # MPViT-S has 6 blocks in stage 2 and 3 in stage 3: every weight of
    # the blocks beyond 4 and 1 is one the smaller model lacks.
    extra = sorted(key[len('backbone.'):]
                   for key in torch.load(dst, weights_only=True)['state_dict']
                   if key.startswith('backbone.')
                   and key[len('backbone.'):] not in model.state_dict())
    assert any(k.startswith('stages.2.encoders.0.blocks.5.') for k in extra)
    with pytest.raises(RuntimeError, match='unexpected') as info:
        model.init_weights()
    shown = re.search(r'(\d+) unexpected \[([^\]]*), \.\.\. \d+ more\]',
                      str(info.value))
    assert int(shown[1]) == len(extra)
    assert set(shown[2].split(', ')) <= set(extra)
