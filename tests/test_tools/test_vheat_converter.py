# Copyright (c) mmvheat contributors. All rights reserved.
"""Published vHeat checkpoints into the mmvheat layout.

:mod:`mmvheat.converters` is tested in-process on every published key layout;
``tools/model_converters/vheat_to_mmvheat.py`` runs as a user runs it (a
subprocess; the runs start together, each paying for its imports) for what
is the tool's own: its output, one-line errors and exit codes, files left
alone, ``--tg-size`` and progress on a terminal.

Published checkpoints are synthesised from ``vheat_official_state_dict_shapes
.json``: every tensor is a single distinct value broadcast to its shape
(``expand``: files stay a few KB, yet each key's value can be traced through
the conversion).
"""
import argparse
import json
import os
import os.path as osp
import pty
import re
from collections import OrderedDict

import pytest
import torch

import mmvheat
from mmvheat.converters import (CheckpointError, NotAVHeatCheckpoint,
                                convert_vheat_checkpoint, infer_vheat_arch,
                                to_published_vheat)
from mmvheat.models.backbones.vheat import VHeat

ARCHS = ('tiny', 'small', 'base')
TOOL = osp.join('tools', 'model_converters', 'vheat_to_mmvheat.py')


@pytest.fixture(scope='module')
def shapes(reference_dir):
    with open(
            osp.join(reference_dir,
                     'vheat_official_state_dict_shapes.json')) as f:
        return json.load(f)


def marked_state_dict(key_shapes, start=0., sign=1.):
    """Every key gets its own value ``sign * (start + index)``."""
    return OrderedDict((key, torch.tensor(sign * (start + i)).expand(shape))
                       for i, (key, shape) in enumerate(key_shapes.items()))


def marked_ema(key_shapes):
    """The EMA twin of ``marked_state_dict(key_shapes)``: every value
    negative, so that none equals a value of the model's."""
    return marked_state_dict(key_shapes, start=1., sign=-1.)


def marker(tensor):
    """The one value a marked tensor holds (after any reshape).

    Only a few samples are compared: a full pass over the expanded tensors
    of vHeat-B would cost seconds.
    """
    flat = tensor.reshape(-1)
    samples = flat[[0, flat.numel() // 2, -1]].tolist()
    assert samples.count(samples[0]) == 3, samples
    return samples[0]


def assert_values_preserved(source, converted):
    """A one-to-one mapping that keeps every value."""
    assert len(converted) == len(source)
    assert sorted(marker(v) for v in converted.values()) == sorted(
        marker(v) for v in source.values())


def dense_key_shapes(shapes):
    """A published dense (mmdet/mmseg) state dict's keys for vHeat-T."""
    key_shapes = {
        f'backbone.{k}': v
        for k, v in shapes['tiny']['state_dict'].items()
        if not k.startswith('classifier.')
    }
    for i, dim in enumerate([96, 192, 384, 768]):
        key_shapes[f'backbone.outnorm{i}.weight'] = [dim]
        key_shapes[f'backbone.outnorm{i}.bias'] = [dim]
    key_shapes['neck.lateral_convs.0.conv.weight'] = [256, 96, 1, 1]
    return key_shapes


def build_classifier(arch, shapes):
    from mmpretrain.registry import MODELS
    dims = VHeat.arch_zoo[arch]['dims']
    return MODELS.build(
        dict(
            _scope_='mmpretrain',
            type='ImageClassifier',
            backbone=dict(
                type='mmvheat.VHeat',
                arch=arch,
                img_size=shapes[arch]['img_size'],
                out_indices=(3, )),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead',
                num_classes=shapes[arch]['num_classes'],
                in_channels=dims * 8)))


def _pretrained(checkpoint, **kwargs):
    return VHeat(
        init_cfg=dict(
            type='Pretrained', checkpoint=str(checkpoint), prefix='backbone.'),
        **kwargs)


# -- the conversion -----------------------------------------------------------
@pytest.mark.parametrize('arch', ARCHS)
def test_published_classifier_converts(arch, shapes):
    assert shapes[arch]['img_size'] == 224
    assert shapes[arch]['num_classes'] == 1000
    source = marked_state_dict(shapes[arch]['state_dict'])
    converted, layout, num_keys = convert_vheat_checkpoint({'model': source})
    assert (layout, num_keys) == ('classification', len(source))
    assert_values_preserved(source, converted)
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in converted)
    assert marker(converted['backbone.norm3.weight']) == marker(
        source['classifier.0.weight'])
    assert marker(converted['head.fc.bias']) == marker(
        source['classifier.3.bias'])

    info = infer_vheat_arch(converted)
    assert info['arch_name'] == arch
    assert info['arch'] == VHeat.arch_zoo[arch]
    assert (info['img_size'], info['num_classes']) == (224, 1000)

    # An mmpretrain ImageClassifier of the arch takes every key, shape for
    # shape, and leaves none of its own unset.
    classifier = build_classifier(arch, shapes)
    classifier.load_state_dict(converted, strict=True)
    assert marker(classifier.backbone.stages[0].freq_embed) == marker(
        source['freq_embed.0'])
    fc1 = classifier.backbone.stages[2].blocks[1].mlp.fc1.weight
    assert marker(fc1) == marker(source['layers.2.1.mlp.fc1.weight'])


@pytest.mark.parametrize('arch', ARCHS)
def test_back_to_the_published_layout(arch, shapes):
    """``to_published_vheat`` gives back every published key with its
    value and shape, from a converted checkpoint and from the state dict of
    a classifier built here."""
    source = marked_state_dict(shapes[arch]['state_dict'])
    converted = convert_vheat_checkpoint({'model': source})[0]
    back = to_published_vheat(converted)
    assert list(back) == list(source)
    assert [marker(v) for v in back.values()] == list(range(len(source)))
    assert {
        k: list(v.shape)
        for k, v in back.items()
    } == shapes[arch]['state_dict']
    with torch.device('meta'):
        ours = build_classifier(arch, shapes).state_dict()
    assert {
        k: list(v.shape)
        for k, v in to_published_vheat(ours).items()
    } == shapes[arch]['state_dict']
    with pytest.raises(NotAVHeatCheckpoint, match=r"\['neck\.x'\]"):
        to_published_vheat(dict(converted, **{'neck.x': torch.zeros(1)}))


def test_input_formats(shapes):
    key_shapes = shapes['tiny']['state_dict']
    model = marked_state_dict(key_shapes)
    ema = marked_ema(key_shapes)
    both = {'model': model, 'model_ema': ema, 'epoch': 300}
    for checkpoint, use_ema, expected in [(both, True, ema),
                                          (both, False, model),
                                          (dict(model), False, model),
                                          ({
                                              'state_dict': model
                                          }, False, model)]:
        converted = convert_vheat_checkpoint(checkpoint, use_ema).state_dict
        assert_values_preserved(expected, converted)


def test_dense_checkpoint(shapes, tmp_path):
    """A published mmdet/mmseg checkpoint: outnorm{i} -> norm{i}."""
    source = marked_state_dict(dense_key_shapes(shapes))
    converted, layout, _ = convert_vheat_checkpoint({
        'state_dict': source,
        'meta': {}
    })
    assert layout == 'dense'
    assert infer_vheat_arch(converted)['out_indices'] == [0, 1, 2, 3]
    assert_values_preserved(source, converted)
    assert torch.equal(converted['neck.lateral_convs.0.conv.weight'],
                       source['neck.lateral_convs.0.conv.weight'])
    for i in range(4):
        for param in ('weight', 'bias'):
            assert torch.equal(converted[f'backbone.norm{i}.{param}'],
                               source[f'backbone.outnorm{i}.{param}'])
    assert not any('outnorm' in k for k in converted)

    # The whole dense backbone loads, output norms included.
    torch.save({'state_dict': converted}, tmp_path / 'converted.pth')
    model = _pretrained(
        tmp_path / 'converted.pth', arch='tiny', out_indices=(0, 1, 2, 3))
    model.init_weights()
    for name, value in model.state_dict().items():
        assert torch.equal(value, converted[f'backbone.{name}']), name


# Each key is added to a complete published checkpoint; ``dense`` puts the
# whole state dict under ``backbone.`` (mmdet/mmseg).
UNKNOWN_KEYS = {
    'op-extra': ('layers.0.0.op.extra.weight', False),
    'classifier-5': ('classifier.5.weight', False),
    'classifier-extra': ('classifier.3.scale', False),
    'block-extra': ('layers.2.3.mlp.fc3.weight', False),
    'stem-extra': ('patch_embed.norm1.0.weight', False),
    'dense-extra': ('backbone.extra.weight', True),
    'dense-op-extra': ('backbone.layers.0.0.op.extra.weight', True),
    'dense-classifier': ('backbone.classifier.0.weight', True),
}


@pytest.mark.parametrize('case', sorted(UNKNOWN_KEYS))
def test_unknown_keys_are_refused(shapes, case):
    key, dense = UNKNOWN_KEYS[case]
    key_shapes = dense_key_shapes(shapes) if dense else dict(
        shapes['tiny']['state_dict'])
    key_shapes[key] = [8]
    checkpoint = {'state_dict': marked_state_dict(key_shapes)}
    with pytest.raises(NotAVHeatCheckpoint) as info:
        convert_vheat_checkpoint(checkpoint)
    assert str(info.value) == ('keys that do not belong to a published '
                               f"vHeat model (1): ['{key}']")


@pytest.mark.parametrize('key', ['layers.0.3.0.weight', 'layers.3.2.1.bias'])
def test_misplaced_downsample_is_refused(shapes, key):
    """A downsample entry must follow the last block of a stage that has a
    next stage (vHeat-T: 2 blocks in stage 0, none after stage 3)."""
    key_shapes = dict(shapes['tiny']['state_dict'])
    key_shapes[key] = [8]
    with pytest.raises(
            NotAVHeatCheckpoint, match=rf"do not follow .*\['{key}'\]"):
        convert_vheat_checkpoint(marked_state_dict(key_shapes))


@pytest.mark.parametrize(
    'checkpoint, use_ema, reason',
    [({
        'model': {
            'conv1.weight': torch.zeros(2, 3, 7, 7)
        }
    }, False, 'not a published vHeat checkpoint'),
     ({
         'model': {
             'freq_embed.0': torch.zeros(2)
         }
     }, True, 'no "model_ema" entry'),
     ({
         'state_dict': {},
         'ema_state_dict': {}
     }, True, 'drop --ema'),
     ({
         'state_dict': {
             'backbone.stages.0.freq_embed': torch.zeros(2, 2, 4)
         }
     }, False, 'already in the mmvheat layout'),
     ([torch.zeros(1)], False, 'expected a dict checkpoint, got list'),
     ({
         'model': {
             'freq_embed.0': 'a string'
         }
     }, False, 'no state dict of tensors')],
    ids=['resnet', 'no-ema', 'mmengine-ema', 'converted', 'list', 'strings'])
def test_other_checkpoints_are_refused(checkpoint, use_ema, reason):
    with pytest.raises(CheckpointError, match=reason):
        convert_vheat_checkpoint(checkpoint, use_ema)


def _truncated(path):
    torch.save({'model': {'w': torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# -- loading converted weights --------------------------------------------
@pytest.fixture(scope='module')
def tiny_checkpoint(cli):
    """vHeat-T as the command line converted it: (state dict, path)."""
    _, dst, result = cli['tiny']
    assert result.returncode == 0, result.stderr
    return torch.load(dst, weights_only=True)['state_dict'], dst


def test_dense_backbone_loads_classification_checkpoint(
        tiny_checkpoint, check_backbone_loaded):
    """mmdet/mmseg: only the output norms 0-2 start afresh."""
    converted, path = tiny_checkpoint
    model = _pretrained(
        path, arch='tiny', img_size=224, out_indices=(0, 1, 2, 3))
    model.init_weights()
    check_backbone_loaded(model, converted)


def test_wrong_arch_is_refused(tiny_checkpoint):
    converted, path = tiny_checkpoint
    model = _pretrained(path, arch='small', out_indices=(0, 1, 2, 3))
    # vHeat-S is deeper (27 blocks in stage 2, not 6) and post-norm with
    # layer scale: every weight it has that vHeat-T lacks is unset.
    unset = sorted(
        key for key in model.state_dict()
        if f'backbone.{key}' not in converted and not key.startswith('norm'))
    assert any(k.startswith('stages.2.blocks.6.') for k in unset)
    with pytest.raises(RuntimeError, match='weights unset') as info:
        model.init_weights()
    message = str(info.value)
    shown = re.search(r'(\d+) weights unset \[([^\]]*), \.\.\. \d+ more\]',
                      message)
    assert int(shown[1]) == len(unset)
    assert set(shown[2].split(', ')) <= set(unset)
    assert 'stages.0.blocks.0.gamma1' in message


# -- the command line ---------------------------------------------------------
def _with_key(key_shapes, key):
    key_shapes = dict(key_shapes)
    key_shapes[key] = [8]
    return marked_state_dict(key_shapes)


@pytest.fixture(scope='module')
def cli(shapes, tmp_path_factory, run_tools):
    """Every command-line run, started together.

    ``{name: (tmp dir, dst, CompletedProcess)}``. A failing run's DST
    already exists (``previous``) unless its name ends in ``-fresh`` (DST
    then is in a folder that does not exist); ``terminal`` has its stderr
    on a pseudo-terminal, whose text is ``cli['terminal-stderr']``.
    """
    source = marked_state_dict(shapes['tiny']['state_dict'])
    published = {'model': source}
    inputs = {
        'tiny': published,
        'tiny-512': published,
        'terminal': published,
        'ema': {
            'model': source,
            'model_ema': marked_ema(shapes['tiny']['state_dict'])
        },
        'dense': {
            'state_dict': marked_state_dict(dense_key_shapes(shapes))
        },
        'trusted': {
            'model': source,
            'args': argparse.Namespace(lr=1)
        },
        'untrusted': {
            'model': source,
            'args': argparse.Namespace(lr=1)
        },
        'op-extra': {
            'model':
            _with_key(shapes['tiny']['state_dict'],
                      'layers.0.0.op.extra.weight')
        },
        'op-extra-fresh': {
            'model':
            _with_key(shapes['tiny']['state_dict'],
                      'layers.0.0.op.extra.weight')
        },
        'classifier-5': {
            'model': _with_key(shapes['tiny']['state_dict'],
                               'classifier.5.weight')
        },
        'dense-extra': {
            'state_dict':
            _with_key(dense_key_shapes(shapes), 'backbone.extra.weight')
        },
        'truncated': published,
        'symlink-to-src': published,
        'tg-size-500': published,
        'tg-size-192': published,
    }
    runs = {}
    for name, checkpoint in inputs.items():
        tmp = tmp_path_factory.mktemp(name)
        src = tmp / 'vHeat_tiny.pth'
        torch.save(checkpoint, src)
        dst = tmp / 'out' / 'dst.pth'
        if name not in ('tiny', 'tiny-512', 'terminal', 'ema', 'dense',
                        'trusted'):
            if name.endswith('-fresh'):
                dst = tmp / 'new' / 'dst.pth'
            else:
                dst.parent.mkdir()
                dst.write_bytes(b'previous')
        runs[name] = (tmp, dst, [TOOL, src, dst])
    _truncated(runs['truncated'][0] / 'vHeat_tiny.pth')
    tmp, dst, argv = runs['symlink-to-src']
    os.remove(dst)
    os.symlink(tmp / 'vHeat_tiny.pth', dst)
    runs['tiny-512'][2].extend(['--tg-size', 512])
    runs['ema'][2].append('--ema')
    runs['trusted'][2].append('--trust-checkpoint')
    runs['tg-size-500'][2].extend(['--tg-size', 500])
    runs['tg-size-192'][2].extend(['--tg-size', 192])

    terminal, terminal_end = pty.openpty()
    try:
        results = run_tools({
            name: argv
            for name, (_, _, argv) in runs.items()
        },
                            stderr={'terminal': terminal_end})
    finally:
        os.close(terminal_end)
    text = b''
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        text += chunk
    os.close(terminal)
    out = {
        name: (tmp, dst, results[name])
        for name, (tmp, dst, _) in runs.items()
    }
    out['terminal-stderr'] = text.decode()
    return out


def test_cli_converts_a_classifier(cli, shapes):
    tmp, dst, result = cli['tiny']
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''  # no progress unless on a terminal
    source = marked_state_dict(shapes['tiny']['state_dict'])
    assert result.stdout.splitlines() == [
        f'Converted {len(source)} keys (classification) from '
        f'{tmp / "vHeat_tiny.pth"}',
        f'Saved to {dst}',
        f'Arch: tiny {VHeat.arch_zoo["tiny"]}',
        '  img_size: 224  num_classes: 1000  output norms: [3]',
    ]
    assert os.listdir(dst.parent) == [dst.name]  # no temporary file

    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert_values_preserved(source, checkpoint['state_dict'])
    meta = checkpoint['meta']
    assert meta == dict(
        source='vHeat_tiny.pth',
        mmvheat_version=mmvheat.__version__,
        ema=False,
        layout='classification',
        arch=VHeat.arch_zoo['tiny'],
        arch_name='tiny',
        img_size=224,
        num_classes=1000,
        out_indices=[3])


def test_cli_ema_converts_the_ema_weights(cli, shapes):
    """``--ema`` on a checkpoint whose ``model`` and ``model_ema`` differ
    in every value: the output holds the EMA values, key for key, and none
    of the model's."""
    tmp, dst, result = cli['ema']
    assert result.returncode == 0, result.stderr
    source = torch.load(tmp / 'vHeat_tiny.pth', weights_only=True)
    model, ema = source['model'], source['model_ema']
    assert result.stdout.splitlines()[0] == (
        f'Converted {len(ema)} keys (classification, EMA weights) from '
        f'{tmp / "vHeat_tiny.pth"}')
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta']['ema'] is True
    converted = checkpoint['state_dict']
    assert_values_preserved(ema, converted)
    model_values = {marker(v) for v in model.values()}
    assert not any(marker(v) in model_values for v in converted.values())
    # A few keys traced through the renaming (and the fc1 reshape).
    for new, old in [('backbone.stages.0.freq_embed', 'freq_embed.0'),
                     ('backbone.stages.2.blocks.1.mlp.fc1.weight',
                      'layers.2.1.mlp.fc1.weight'),
                     ('head.fc.bias', 'classifier.3.bias')]:
        assert marker(converted[new]) == marker(ema[old]), new
        assert marker(converted[new]) != marker(model[old]), new


def test_cli_dense_checkpoint(cli, shapes):
    _, dst, result = cli['dense']
    assert result.returncode == 0, result.stderr
    assert (f'Converted {len(dense_key_shapes(shapes))} keys (dense)'
            in result.stdout)
    assert 'output norms: [0, 1, 2, 3]' in result.stdout
    meta = torch.load(dst, weights_only=True)['meta']
    assert (meta['layout'], meta['img_size']) == ('dense', 224)


def test_cli_one_command_to_a_downstream_checkpoint(cli):
    """``--tg-size 512``: converted and zero-padded as the published
    recipe does; a dense vHeat-T at 512 loads it without any resampling."""
    tmp, dst, result = cli['tiny-512']
    assert result.returncode == 0, result.stderr
    assert ('Enlarged (pad) from 224 to 512:\n'
            '  stage 0: freq_embed 56 x 56 -> 128 x 128\n') in result.stdout
    assert '  stage 3: freq_embed 7 x 7 -> 16 x 16\n' in result.stdout
    assert 'img_size: 512' in result.stdout
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta']['img_size'] == 512
    assert checkpoint['meta']['enlarged'] == dict(
        mode='pad', pt_size=224, tg_size=512)
    source = torch.load(tmp / 'vHeat_tiny.pth', weights_only=True)['model']
    converted = checkpoint['state_dict']
    for i, (old, new) in enumerate([(56, 128), (28, 64), (14, 32), (7, 16)]):
        embed = converted[f'backbone.stages.{i}.freq_embed']
        assert embed.shape == (new, new, 96 << i)
        assert torch.equal(embed[:old, :old], source[f'freq_embed.{i}'])
        assert not embed[old:].any() and not embed[:, old:].any()

    model = VHeat('tiny', img_size=512, out_indices=(0, 1, 2, 3))
    before = {k: v.shape for k, v in model.state_dict().items()}
    backbone = {
        k[len('backbone.'):]: v
        for k, v in converted.items() if k.startswith('backbone.')
    }
    # Shapes equal before loading: the load hook has nothing to resample.
    assert all(before[k] == v.shape for k, v in backbone.items())
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert sorted(missing) == [
        f'norm{i}.{p}' for i in range(3) for p in ('bias', 'weight')
    ]
    assert unexpected == []
    assert torch.equal(model.stages[0].freq_embed,
                       converted['backbone.stages.0.freq_embed'])


def test_cli_trusted_checkpoint(cli):
    _, dst, result = cli['trusted']
    assert result.returncode == 0, result.stderr
    assert torch.load(dst, weights_only=True)['meta']['layout'] == \
        'classification'


@pytest.mark.parametrize('name, status, reason', [
    ('untrusted', 1,
     '{src}: refused global argparse.Namespace (weights_only=True builds only '
     'tensors, containers, numbers and the objects mmengine writes); pass '
     '--trust-checkpoint only if you trust the file'),
    ('op-extra', 1, "{src}: keys that do not belong to a published vHeat "
     "model (1): ['layers.0.0.op.extra.weight']"),
    ('op-extra-fresh', 1, "{src}: keys that do not belong"),
    ('classifier-5', 1, "{src}: keys that do not belong to a published "
     "vHeat model (1): ['classifier.5.weight']"),
    ('dense-extra', 1, "{src}: keys that do not belong to a published "
     "vHeat model (1): ['backbone.extra.weight']"),
    ('truncated', 1, '{src}: cannot be read as a PyTorch checkpoint, '
     'truncated or corrupt'),
    ('symlink-to-src', 1, 'the output {dst} is the input {src}'),
    ('tg-size-500', 2, '--tg-size must be a positive multiple of 32, got '
     '500'),
    ('tg-size-192', 2, "--tg-size (192) must not be smaller than the "
     "checkpoint's img_size (224)")
])
def test_cli_failures_change_nothing(cli, check_cli_error, name, status,
                                     reason):
    """One line on stderr, the exit status, and no file written: DST, its
    folder and the input are as they were."""
    tmp, dst, result = cli[name]
    src = tmp / 'vHeat_tiny.pth'
    check_cli_error(result, status, reason.format(src=src, dst=dst))
    if name.endswith('-fresh'):
        assert sorted(os.listdir(tmp)) == ['vHeat_tiny.pth']
    elif name == 'symlink-to-src':
        assert dst.is_symlink() and os.listdir(dst.parent) == ['dst.pth']
    else:
        assert dst.read_bytes() == b'previous'
        assert os.listdir(dst.parent) == ['dst.pth']
    if name != 'truncated':
        checkpoint = torch.load(src, weights_only=name != 'untrusted')
        assert 'model' in checkpoint or 'state_dict' in checkpoint


def test_cli_progress_on_a_terminal(cli):
    tmp, dst, result = cli['terminal']
    assert result.returncode == 0
    text = cli['terminal-stderr']
    # One line each, redrawn in place, ended when the phase is done.
    lines = text.replace('\r\n', '\n').split('\n')
    reading = [line for line in lines if 'reading' in line]
    writing = [line for line in lines if 'writing' in line]
    assert len(reading) == len(writing) == 1, text
    assert reading[0].split('\r')[-1].startswith(
        f'reading {tmp / "vHeat_tiny.pth"}: ')
    assert reading[0].endswith('(100%)')
    assert writing[0].split('\r')[-1].startswith(f'writing {dst}: ')
