# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/model_converters/mpvit_to_mmvheat.py on every published key layout.

Published checkpoints are synthesised from ``mpvit_official_state_dict_shapes
.json``: every tensor is a single distinct value broadcast to its shape
(``expand``: files stay a few KB, yet each key's value can be traced through
the conversion). The copies of a shared position encoding get the value of
the encoder's own key, as in a real checkpoint. The command line runs twice
(concurrently: each run pays ~10 s for the imports); everything else calls
the tool's ``main`` in-process.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

import mmvheat.models.backbones.mpvit as mpvit_module
from mmvheat.models.backbones.mpvit import MPViT

ARCHS = ('tiny', 'xsmall', 'small', 'base')
TOOL_PATH = ('tools', 'model_converters', 'mpvit_to_mmvheat.py')
_COPY = re.compile(r'^(.*mhca_blks\.\d+\.)MHCA_layers\.\d+\.'
                   r'(?:factoratt_crpe\.)?((?:cpe|crpe)\..+)$')


@pytest.fixture(autouse=True, scope='module')
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def tool(project_root):
    path = osp.join(project_root, *TOOL_PATH)
    spec = importlib.util.spec_from_file_location('mpvit_to_mmvheat', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def shapes(reference_dir):
    with open(osp.join(reference_dir,
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
    return OrderedDict(
        (key, torch.tensor(values[owner(key)]).expand(shape))
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
    key = key.replace('.DW.', '.dwconv.' if 'local_block' in key else
                      '.depthwise.')
    return key if key.startswith('head.') else 'backbone.' + key


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


@pytest.fixture(autouse=True, scope='module')
def cli_processes(tmp_path_factory, project_root, shapes):
    """The two command-line runs, started before the first test so that
    their start-up overlaps the in-process tests: the small checkpoint, and
    a text file given as SRC."""
    processes = {}
    tmp = tmp_path_factory.mktemp('small')
    source = marked_state_dict(shapes['small'])
    torch.save({'model': source}, tmp / 'mpvit_small.pth')
    dst = tmp / 'new' / 'dir' / 'small.pth'
    processes['small'] = (source, tmp, dst,
                          start_cli(project_root, tmp / 'mpvit_small.pth',
                                    dst))
    tmp = tmp_path_factory.mktemp('text')
    (tmp / 'notes.txt').write_text('not a checkpoint\n')
    processes['text'] = (None, tmp, tmp / 'dst.pth',
                         start_cli(project_root, tmp / 'notes.txt',
                                   tmp / 'dst.pth'))
    yield processes
    for *_, process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope='module')
def cli_runs(cli_processes):
    """``{name: (source state dict, tmp dir, dst, CompletedProcess)}``."""
    return {
        name: (source, tmp, dst, finish_cli(process))
        for name, (source, tmp, dst, process) in cli_processes.items()
    }


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
            type='ImageClassifier',
            backbone=dict(type='mmvheat.MPViT', arch=arch, out_indices=(3, )),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead',
                num_classes=1000,
                in_channels=MPViT.arch_zoo[arch]['embed_dims'][-1])))


@pytest.fixture(scope='module')
def converted_by_main(tool, tmp_path_factory, shapes):
    """tiny, xsmall and base through ``main`` in-process (small: the CLI)."""
    results = {}
    for arch in ('tiny', 'xsmall', 'base'):
        tmp = tmp_path_factory.mktemp(arch)
        source = marked_state_dict(shapes[arch])
        torch.save({'model': source, 'epoch': 300}, tmp / f'mpvit_{arch}.pth')
        dst = tmp / f'{arch}.pth'
        assert tool.main([str(tmp / f'mpvit_{arch}.pth'), str(dst)]) == 0
        results[arch] = (source, dst)
    return results


@pytest.mark.parametrize('arch', ('tiny', 'xsmall', 'base'))
def test_every_published_key_maps(arch, shapes, converted_by_main,
                                  fast_init):
    source, dst = converted_by_main[arch]
    check_conversion(arch, source, dst, shapes)


def check_conversion(arch, source, dst, shapes):
    """Every published key maps, values and shapes intact, and an
    ImageClassifier of the arch loads the result strictly."""
    assert list(source) == list(shapes[arch])
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    converted = checkpoint['state_dict']
    assert_values_preserved(source, converted)
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in converted)
    for key, value in source.items():
        target = expected_key(key)
        assert marker(converted[target]) == marker(value), (key, target)
        assert converted[target].shape == value.shape, key

    meta = checkpoint['meta']
    import mmvheat
    assert meta['source'] == f'mpvit_{arch}.pth'
    assert meta['mmvheat_version'] == mmvheat.__version__
    assert meta['layout'] == 'classification'
    assert meta['arch_name'] == arch
    assert meta['arch'] == MPViT.arch_zoo[arch]
    assert meta['num_classes'] == 1000

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


def test_input_formats(tool, tmp_path, shapes, capsys):
    key_shapes = shapes['tiny']
    model = marked_state_dict(key_shapes)

    def convert(checkpoint):
        src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
        torch.save(checkpoint, src)
        assert tool.main([str(src), str(dst)]) == 0
        return torch.load(dst, weights_only=True)['state_dict']

    assert_values_preserved(model, convert(dict(model)))  # bare
    assert_values_preserved(model, convert({'state_dict': model}))
    assert 'Arch: tiny' in capsys.readouterr().out


def test_dense_checkpoint(tool, tmp_path, shapes, capsys):
    """``backbone.*`` keys convert; neck and heads are kept as they are."""
    key_shapes = {
        f'backbone.{k}': v
        for k, v in shapes['tiny'].items() if not k.startswith('cls_head.')
    }
    key_shapes['neck.lateral_convs.0.conv.weight'] = [256, 96, 1, 1]
    source = marked_state_dict(key_shapes)
    torch.save({'state_dict': source, 'meta': {}}, tmp_path / 'upernet.pth')
    assert tool.main(
        [str(tmp_path / 'upernet.pth'),
         str(tmp_path / 'converted.pth')]) == 0
    assert 'Arch: tiny' in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / 'converted.pth', weights_only=True)
    converted = checkpoint['state_dict']
    assert checkpoint['meta']['layout'] == 'dense'
    assert 'num_classes' not in checkpoint['meta']
    assert_values_preserved(source, converted)
    assert torch.equal(converted['neck.lateral_convs.0.conv.weight'],
                       source['neck.lateral_convs.0.conv.weight'])


def _pretrained(checkpoint, **kwargs):
    return MPViT(
        init_cfg=dict(
            type='Pretrained', checkpoint=str(checkpoint), prefix='backbone.'),
        **kwargs)


def test_dense_backbone_loads_classification_checkpoint(converted_by_main):
    """mmdet/mmseg: every backbone weight comes from the checkpoint."""
    _, dst = converted_by_main['tiny']
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = _pretrained(dst, arch='tiny', out_indices=(0, 1, 2, 3),
                        norm_cfg=dict(type='SyncBN', requires_grad=True))
    model.init_weights()
    state_dict = model.state_dict()
    assert len(state_dict) == len(converted) - 2  # all but head.fc
    for name, value in state_dict.items():
        assert torch.equal(value, converted[f'backbone.{name}'].to(
            value.dtype)), name


def test_wrong_arch_is_refused(converted_by_main):
    _, dst = converted_by_main['tiny']
    model = _pretrained(dst, arch='xsmall')  # same depths, other widths
    with pytest.raises(RuntimeError, match='size mismatch'):
        model.init_weights()


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


def _write_list(path):
    torch.save([torch.zeros(1)], path)


def _write_converted(path):
    torch.save({'state_dict': {'backbone.stages.0.encoders.0.cpe.proj.bias':
                               torch.zeros(4)}}, path)


def _write_unknown_key(path):
    torch.save(
        {
            'model': {
                'mhca_stages.0.aggregate.conv.weight': torch.zeros(4),
                'patch_embed_stages.0.patch_embeds.0.patch_conv.bn.bias':
                torch.zeros(4),
                'mhca_stages.0.mhca_blks.0.MHCA_layers.0.gamma': torch.ones(4)
            }
        }, path)


def _write_differing_copies(path):
    prefix = 'mhca_stages.0.mhca_blks.0.'
    torch.save(
        {
            'model': {
                'patch_embed_stages.0.patch_embeds.0.patch_conv.bn.bias':
                torch.zeros(4),
                f'{prefix}cpe.proj.bias': torch.zeros(4),
                f'{prefix}MHCA_layers.0.cpe.proj.bias': torch.ones(4),
            }
        }, path)


@pytest.mark.parametrize(
    'writer, reason',
    [(_write_resnet, 'not a published MPViT checkpoint'),
     (_write_text, 'cannot be read as a PyTorch checkpoint'),
     (None, 'no such file'),
     (_write_list, 'expected a dict checkpoint'),
     (_write_converted, 'already in the mmvheat layout'),
     (_write_unknown_key, 'MHCA_layers.0.gamma'),
     (_write_differing_copies, 'copies of shared position-encoding')],
    ids=['resnet', 'text', 'missing', 'list', 'already-converted',
         'unknown-key', 'differing-copies'])
def test_failures_write_nothing(tool, tmp_path, capsys, writer, reason):
    src = tmp_path / 'src.pth'
    if writer is not None:
        writer(src)
    before = sorted(os.listdir(tmp_path))
    dst = tmp_path / 'out' / 'dst.pth'
    assert tool.main([str(src), str(dst)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f'error: {src}: ')
    assert reason in captured.err
    assert captured.out == ''
    assert sorted(os.listdir(tmp_path)) == before  # no DST, dir or temp

    # An existing DST is left untouched.
    os.makedirs(dst.parent)
    dst.write_bytes(b'previous')
    assert tool.main([str(src), str(dst)]) == 1
    assert dst.read_bytes() == b'previous'
    assert os.listdir(dst.parent) == ['dst.pth']


def test_unwritable_destination_leaves_no_temp_file(tool, tmp_path, capsys,
                                                    converted_by_main):
    src = converted_by_main['tiny'][1].parent / 'mpvit_tiny.pth'
    dst = tmp_path / 'taken'
    dst.mkdir()  # os.replace cannot put a file over a directory
    assert tool.main([str(src), str(dst)]) == 1
    assert capsys.readouterr().err.startswith(f'error: cannot write {dst}')
    assert os.listdir(tmp_path) == ['taken']
    assert os.listdir(dst) == []


# -- the command-line runs (last: their start-up overlaps the tests above) --
def test_cli_converts_small(cli_runs, shapes, fast_init):
    source, _, dst, result = cli_runs['small']
    assert result.returncode == 0, result.stderr
    check_conversion('small', source, dst, shapes)


def test_cli_output(cli_runs, shapes):
    source, _, dst, result = cli_runs['small']
    assert result.returncode == 0, result.stderr
    merged = sum(owner(k) != k for k in source)
    assert merged > 0
    assert (f'Converted {len(source)} keys into {len(source) - merged} '
            f'({merged} copies' in result.stdout)
    assert 'Arch: small' in result.stdout
    assert sorted(os.listdir(dst.parent)) == [dst.name]  # no temp file


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


def test_larger_arch_into_smaller_is_refused(cli_runs):
    """Extra blocks must not be dropped silently."""
    _, _, dst, result = cli_runs['small']
    assert result.returncode == 0, result.stderr
    model = _pretrained(
        dst, arch=dict(MPViT.arch_zoo['small'], num_layers=[1, 2, 4, 1]))
    with pytest.raises(RuntimeError, match='unexpected') as info:
        model.init_weights()
    assert 'stages.2.encoders.0.blocks.5.' in str(info.value)
