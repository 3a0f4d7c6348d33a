# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/model_converters/vheat_to_mmvheat.py on every published key layout.

Published checkpoints are synthesised from ``vheat_official_state_dict_shapes
.json``: every tensor is a single distinct value broadcast to its shape
(``expand``: files stay a few KB, yet each key's value can be traced through
the conversion). The command line runs once per arch; the other input formats
and the failures call the tool's ``main`` in-process.
"""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from mmvheat.models.backbones.vheat import VHeat

ARCHS = ('tiny', 'small', 'base')
TOOL_PATH = ('tools', 'model_converters', 'vheat_to_mmvheat.py')


@pytest.fixture(scope='module')
def tool(project_root):
    path = osp.join(project_root, *TOOL_PATH)
    spec = importlib.util.spec_from_file_location('vheat_to_mmvheat', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def shapes(reference_dir):
    with open(osp.join(reference_dir,
                       'vheat_official_state_dict_shapes.json')) as f:
        return json.load(f)


def marked_state_dict(key_shapes, start=0., sign=1.):
    """Every key gets its own value ``sign * (start + index)``."""
    return OrderedDict(
        (key, torch.tensor(sign * (start + i)).expand(shape))
        for i, (key, shape) in enumerate(key_shapes.items()))


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


def start_cli(project_root, *args):
    return subprocess.Popen(
        [sys.executable, osp.join(project_root, *TOOL_PATH), *map(str, args)],
        cwd=project_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True)


def finish_cli(process):
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode,
                                       stdout, stderr)


def build_classifier(arch, shapes):
    import mmvheat  # noqa: F401  (before mmpretrain: torchvision on CPU)
    from mmpretrain.registry import MODELS
    dims = VHeat.arch_zoo[arch]['dims']
    return MODELS.build(
        dict(
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


@pytest.fixture(scope='module')
def cli_runs(tmp_path_factory, project_root, shapes):
    """All command-line runs, started together (each pays for the imports).

    Returns ``{name: (source state dict, tmp dir, dst, CompletedProcess)}``
    for each arch and for ``'text'``, a text file given as SRC.
    """
    processes = {}
    for arch in ARCHS:
        tmp = tmp_path_factory.mktemp(arch)
        source = marked_state_dict(shapes[arch]['state_dict'])
        torch.save({'model': source}, tmp / f'vheat_{arch}.pth')
        dst = tmp / 'new' / 'dir' / f'{arch}.pth'
        processes[arch] = (source, tmp, dst,
                           start_cli(project_root, tmp / f'vheat_{arch}.pth',
                                     dst))
    tmp = tmp_path_factory.mktemp('text')
    (tmp / 'notes.txt').write_text('not a checkpoint\n')
    processes['text'] = (None, tmp, tmp / 'dst.pth',
                         start_cli(project_root, tmp / 'notes.txt',
                                   tmp / 'dst.pth'))
    return {
        name: (source, tmp, dst, finish_cli(process))
        for name, (source, tmp, dst, process) in processes.items()
    }


@pytest.fixture(scope='module')
def tiny_checkpoint(cli_runs):
    """The tiny checkpoint converted by the command line."""
    source, _, dst, result = cli_runs['tiny']
    assert result.returncode == 0, result.stderr
    return source, dst


@pytest.mark.parametrize('arch', ARCHS)
def test_cli_converts_published_classifier(arch, shapes, cli_runs):
    assert shapes[arch]['img_size'] == 224
    assert shapes[arch]['num_classes'] == 1000
    source, _, dst, result = cli_runs[arch]
    assert result.returncode == 0, result.stderr
    assert f'Converted {len(source)} of {len(source)} keys' in result.stdout
    assert f'Arch: {arch}' in result.stdout
    assert sorted(os.listdir(dst.parent)) == [dst.name]  # no temp file

    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    converted = checkpoint['state_dict']
    assert_values_preserved(source, converted)
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in converted)
    assert marker(converted['backbone.norm3.weight']) == marker(
        source['classifier.0.weight'])
    assert marker(converted['head.fc.bias']) == marker(
        source['classifier.3.bias'])

    meta = checkpoint['meta']
    import mmvheat
    assert meta['source'] == f'vheat_{arch}.pth'
    assert meta['mmvheat_version'] == mmvheat.__version__
    assert meta['ema'] is False
    assert meta['arch_name'] == arch
    assert meta['arch'] == VHeat.arch_zoo[arch]
    assert meta['img_size'] == 224 and meta['num_classes'] == 1000

    # An mmpretrain ImageClassifier of the arch takes every key, shape for
    # shape, and leaves none of its own unset.
    classifier = build_classifier(arch, shapes)
    classifier.load_state_dict(converted, strict=True)
    assert marker(classifier.backbone.stages[0].freq_embed) == marker(
        source['freq_embed.0'])


def test_input_formats(tool, tmp_path, shapes, capsys):
    key_shapes = shapes['tiny']['state_dict']
    model = marked_state_dict(key_shapes)
    ema = marked_state_dict(key_shapes, start=1., sign=-1.)

    def convert(checkpoint, *flags):
        src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
        torch.save(checkpoint, src)
        assert tool.main([str(src), str(dst), *flags]) == 0
        out = torch.load(dst, weights_only=True)
        assert out['meta']['ema'] is bool(flags)
        return out['state_dict']

    both = {'model': model, 'model_ema': ema, 'epoch': 300}
    assert_values_preserved(ema, convert(both, '--ema'))
    assert_values_preserved(model, convert(both))
    assert_values_preserved(model, convert(dict(model)))  # bare
    assert_values_preserved(model, convert({'state_dict': model}))
    assert 'Arch: tiny' in capsys.readouterr().out


def test_dense_checkpoint(tool, tmp_path, shapes, capsys):
    """A published mmdet/mmseg checkpoint: outnorm{i} -> norm{i}."""
    key_shapes = {
        f'backbone.{k}': v
        for k, v in shapes['tiny']['state_dict'].items()
        if not k.startswith('classifier.')
    }
    dims = [96, 192, 384, 768]
    for i, dim in enumerate(dims):
        key_shapes[f'backbone.outnorm{i}.weight'] = [dim]
        key_shapes[f'backbone.outnorm{i}.bias'] = [dim]
    key_shapes['neck.lateral_convs.0.conv.weight'] = [256, 96, 1, 1]
    source = marked_state_dict(key_shapes)
    torch.save({'state_dict': source, 'meta': {}}, tmp_path / 'upernet.pth')
    assert tool.main(
        [str(tmp_path / 'upernet.pth'),
         str(tmp_path / 'converted.pth')]) == 0
    assert 'output norms: [0, 1, 2, 3]' in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / 'converted.pth', weights_only=True)
    converted = checkpoint['state_dict']
    assert checkpoint['meta']['layout'] == 'dense'
    assert_values_preserved(source, converted)
    assert torch.equal(converted['neck.lateral_convs.0.conv.weight'],
                       source['neck.lateral_convs.0.conv.weight'])
    for i in range(4):
        for param in ('weight', 'bias'):
            assert torch.equal(converted[f'backbone.norm{i}.{param}'],
                               source[f'backbone.outnorm{i}.{param}'])
    assert not any('outnorm' in k for k in converted)

    # The whole dense backbone loads, output norms included.
    model = VHeat(
        'tiny',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(tmp_path / 'converted.pth'),
            prefix='backbone.'))
    model.init_weights()
    for name, value in model.state_dict().items():
        assert torch.equal(value, converted[f'backbone.{name}']), name


def _pretrained(checkpoint, **kwargs):
    return VHeat(
        init_cfg=dict(
            type='Pretrained', checkpoint=str(checkpoint), prefix='backbone.'),
        **kwargs)


def test_dense_backbone_loads_classification_checkpoint(tiny_checkpoint):
    """mmdet/mmseg: only the output norms 0-2 start afresh."""
    _, dst = tiny_checkpoint
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = _pretrained(dst, arch='tiny', img_size=224,
                        out_indices=(0, 1, 2, 3))
    model.init_weights()
    fresh = []
    for name, value in model.state_dict().items():
        if f'backbone.{name}' in converted:
            assert torch.equal(value, converted[f'backbone.{name}']), name
        else:
            fresh.append(name)
    assert sorted(fresh) == [
        f'norm{i}.{p}' for i in range(3) for p in ('bias', 'weight')
    ]


def test_other_resolution_resizes_freq_embed(tiny_checkpoint):
    _, dst = tiny_checkpoint
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = _pretrained(dst, arch='tiny', img_size=512,
                        out_indices=(0, 1, 2, 3))
    model.init_weights()
    for i, stage in enumerate(model.stages):
        assert stage.freq_embed.shape == (128 >> i, 128 >> i, 96 << i)
        # Bicubic resampling keeps a constant embedding constant.
        expected = marker(converted[f'backbone.stages.{i}.freq_embed'])
        torch.testing.assert_close(
            stage.freq_embed,
            torch.full_like(stage.freq_embed, expected),
            rtol=0,
            atol=1e-3)
    assert torch.equal(model.stages[2].blocks[5].op.to_k.weight,
                       converted['backbone.stages.2.blocks.5.op.to_k.weight'])


def test_wrong_arch_is_refused(tiny_checkpoint):
    _, dst = tiny_checkpoint
    model = _pretrained(dst, arch='small', out_indices=(0, 1, 2, 3))
    with pytest.raises(RuntimeError, match='weights unset') as info:
        model.init_weights()
    message = str(info.value)
    assert 'stages.2.blocks.6.' in message
    assert 'stages.0.blocks.0.gamma1' in message


def test_larger_arch_into_smaller_is_refused(cli_runs):
    """Extra blocks and layer scales must not be dropped silently."""
    _, _, dst, result = cli_runs['small']
    assert result.returncode == 0, result.stderr
    model = _pretrained(dst, arch='tiny', out_indices=(0, 1, 2, 3))
    with pytest.raises(RuntimeError, match='unexpected') as info:
        model.init_weights()
    message = str(info.value)
    assert 'stages.2.blocks.6.' in message
    assert 'stages.0.blocks.0.gamma1' in message


def _write_resnet(path):
    torch.save(
        {
            'state_dict': {
                'conv1.weight': torch.zeros(64, 3, 7, 7),
                'bn1.weight': torch.ones(64),
                'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
                'fc.weight': torch.zeros(1000, 2048),
            }
        }, path)


def _write_text(path):
    path.write_text('not a checkpoint\n')


def _write_without_ema(path):
    torch.save({'model': {'freq_embed.0': torch.zeros(2, 2, 4)}}, path)


def _write_converted(path):
    torch.save({'state_dict': {'backbone.stages.0.freq_embed':
                               torch.zeros(2, 2, 4)}}, path)


@pytest.mark.parametrize(
    'writer, flags, reason',
    [(_write_resnet, [], 'not a published vHeat checkpoint'),
     (_write_text, [], 'cannot be read as a PyTorch checkpoint'),
     (None, [], 'no such file'),
     (_write_without_ema, ['--ema'], 'no "model_ema" entry'),
     (_write_converted, [], 'already in the mmvheat layout')],
    ids=['resnet', 'text', 'missing', 'no-ema', 'already-converted'])
def test_failures_write_nothing(tool, tmp_path, capsys, writer, flags,
                                reason):
    src = tmp_path / 'src.pth'
    if writer is not None:
        writer(src)
    before = sorted(os.listdir(tmp_path))
    dst = tmp_path / 'out' / 'dst.pth'
    assert tool.main([str(src), str(dst), *flags]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f'error: {src}: ')
    assert reason in captured.err
    assert captured.out == ''
    assert sorted(os.listdir(tmp_path)) == before  # no DST, dir or temp

    # An existing DST is left untouched.
    os.makedirs(dst.parent)
    dst.write_bytes(b'previous')
    assert tool.main([str(src), str(dst), *flags]) == 1
    assert dst.read_bytes() == b'previous'
    assert os.listdir(dst.parent) == ['dst.pth']


def test_failures_exit_code(cli_runs):
    """Through the command line: exit code 1, a clear stderr, no output."""
    _, tmp, dst, result = cli_runs['text']
    assert result.returncode == 1
    assert result.stderr.startswith(f'error: {tmp / "notes.txt"}: ')
    assert 'cannot be read as a PyTorch checkpoint' in result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stdout == ''
    assert not dst.exists()
    assert sorted(os.listdir(tmp)) == ['notes.txt']


def test_unwritable_destination_leaves_no_temp_file(tool, tmp_path, capsys,
                                                    tiny_checkpoint):
    src = tiny_checkpoint[1].parents[2] / 'vheat_tiny.pth'
    dst = tmp_path / 'taken'
    dst.mkdir()  # os.replace cannot put a file over a directory
    assert tool.main([str(src), str(dst)]) == 1
    assert capsys.readouterr().err.startswith(f'error: cannot write {dst}')
    assert os.listdir(tmp_path) == ['taken']
    assert os.listdir(dst) == []
