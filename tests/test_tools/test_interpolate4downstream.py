# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/interpolate4downstream.py: enlarge freq_embed for downstream sizes.

Most cases use a small custom arch pretrained at 64 and enlarged to 128 and
call the tool's ``main`` in-process; published checkpoints are synthesised
from this project's weights with the inverse of the published-key mapping.
The command line runs twice, in parallel: a realistic vHeat-T 224 -> 512
case (constant tensors broadcast to their shapes, so files stay small) and
an unreadable input.
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

from mmvheat.models.backbones.vheat import VHeat
from mmvheat.utils import resize_freq_embed
from mmvheat.utils.convert_vheat import convert_published_vheat

TOOL_PATH = ('tools', 'interpolate4downstream.py')
SMALL_ARCH = dict(
    depths=[1, 2, 1, 1],
    dims=8,
    post_norm=True,
    layer_scale=1e-5,
    mlp_ratio=2.)
PT_SIZE, TG_SIZE = 64, 128
NUM_CLASSES = 10


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def tool(project_root):
    path = osp.join(project_root, *TOOL_PATH)
    spec = importlib.util.spec_from_file_location('interpolate4downstream',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- synthetic checkpoints ---------------------------------------------------
def project_state_dict(seed=0, dense=False):
    """Random weights of the small arch at PT_SIZE, in mmvheat layout.

    A classifier (``backbone.*`` with ``norm3`` + ``head.fc.*``) or, with
    ``dense``, a backbone with all four output norms and an FPN-like key.
    """
    torch.manual_seed(seed)
    backbone = VHeat(
        SMALL_ARCH,
        img_size=PT_SIZE,
        out_indices=(0, 1, 2, 3) if dense else (3, ))
    for param in backbone.parameters():  # every value distinct
        param.data.normal_()
    state_dict = OrderedDict(
        (f'backbone.{k}', v) for k, v in backbone.state_dict().items())
    if dense:
        state_dict['neck.lateral_convs.0.conv.weight'] = torch.randn(
            4, 8, 1, 1)
    else:
        state_dict['head.fc.weight'] = torch.randn(NUM_CLASSES, 64)
        state_dict['head.fc.bias'] = torch.randn(NUM_CLASSES)
    return state_dict


def to_published(state_dict):
    """The inverse of ``convert_published_vheat`` (checked in a test)."""
    dense = 'backbone.norm0.weight' in state_dict
    depths = SMALL_ARCH['depths']
    published = OrderedDict()
    for key, value in state_dict.items():
        if not key.startswith('backbone.'):
            if dense:
                published[key] = value
            else:  # head.fc -> classifier.3
                published[key.replace('head.fc.', 'classifier.3.')] = value
            continue
        key = key[len('backbone.'):]
        if match := re.match(r'^stages\.(\d+)\.freq_embed$', key):
            key = f'freq_embed.{match[1]}'
        elif match := re.match(r'^patch_embed\.(norm[12])\.(.+)$', key):
            key = f'patch_embed.{match[1]}.1.{match[2]}'
        elif match := re.match(
                r'^stages\.(\d+)\.downsample\.(conv|norm)\.'
                r'(.+)$', key):
            stage = int(match[1]) - 1
            part = '0' if match[2] == 'conv' else '1'
            key = f'layers.{stage}.{depths[stage]}.{part}.{match[3]}'
        elif match := re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.+)$', key):
            rest = match[3].replace('op.to_k.', 'op.to_k.0.')
            if rest in ('mlp.fc1.weight', 'mlp.fc2.weight'):
                value = value[..., None, None]  # 1x1 convolutions
            key = f'layers.{match[1]}.{match[2]}.{rest}'
        elif match := re.match(r'^norm(\d)\.(.+)$', key):
            key = (f'outnorm{match[1]}.{match[2]}'
                   if dense else f'classifier.0.{match[2]}')
        published[f'backbone.{key}' if dense else key] = value
    return published


def padded(state_dict, pt_size=PT_SIZE, tg_size=TG_SIZE):
    """``state_dict`` with each freq_embed zero-padded bottom/right by
    ``(tg - pt) / 2**(i + 2)``, written out the published way."""
    out = OrderedDict(state_dict)
    for i in range(4):
        key = f'backbone.stages.{i}.freq_embed'
        embed = state_dict[key]
        pad = (tg_size - pt_size) // 2**(i + 2)
        grid = torch.zeros(
            embed.shape[0] + pad,
            embed.shape[1] + pad,
            embed.shape[2],
            dtype=embed.dtype)
        grid[:embed.shape[0], :embed.shape[1]] = embed
        out[key] = grid
    return out


def assert_state_dicts_equal(actual, expected):
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


def run(tool, tmp_path, checkpoint, *flags, name='dst.pth'):
    """Write ``checkpoint``, run the tool on it, return the output."""
    src, dst = tmp_path / 'src.pth', tmp_path / 'out' / name
    torch.save(checkpoint, src)
    assert tool.main([
        '--pt_pth',
        str(src), '--tg_pth',
        str(dst), '--pt_size',
        str(PT_SIZE), '--tg_size',
        str(TG_SIZE), *flags
    ]) == 0
    assert name in os.listdir(dst.parent)
    assert not [f for f in os.listdir(dst.parent) if f.endswith('.tmp')]
    return torch.load(dst, map_location='cpu', weights_only=True)


# -- command-line runs -------------------------------------------------------
def start_cli(project_root, *args):
    return subprocess.Popen(
        [sys.executable,
         osp.join(project_root, *TOOL_PATH), *map(str, args)],
        cwd=project_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True)


def marked_tiny_224():
    """vHeat-T at 224 in mmvheat layout, each tensor one value broadcast."""
    model = VHeat('tiny', img_size=224, out_indices=(3, ), init_cfg=None)
    return OrderedDict(
        (f'backbone.{key}', torch.tensor(float(i + 1)).expand(value.shape))
        for i, (key, value) in enumerate(model.state_dict().items()))


@pytest.fixture(scope='module')
def cli_runs(tmp_path_factory, project_root):
    """``{name: (tmp dir, dst, CompletedProcess)}``, run in parallel."""
    tmp = tmp_path_factory.mktemp('tiny')
    torch.save({'state_dict': marked_tiny_224()}, tmp / 'vheat-tiny.pth')
    processes = {
        'tiny': (tmp, tmp / 'new' / 'vheat-tiny-512.pth',
                 start_cli(project_root, '--pt_pth', tmp / 'vheat-tiny.pth',
                           '--tg_pth', tmp / 'new' / 'vheat-tiny-512.pth',
                           '--tg_size', 512))
    }
    tmp = tmp_path_factory.mktemp('text')
    (tmp / 'notes.txt').write_text('not a checkpoint\n')
    processes['text'] = (tmp, tmp / 'dst.pth',
                         start_cli(project_root, '--pt_pth', tmp / 'notes.txt',
                                   '--tg_pth', tmp / 'dst.pth'))
    results = {}
    for name, (tmp, dst, process) in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (tmp, dst,
                         subprocess.CompletedProcess(process.args,
                                                     process.returncode,
                                                     stdout, stderr))
    return results


def test_cli_tiny_224_to_512(cli_runs):
    """The published recipe on vHeat-T: 56 -> 128, ..., 7 -> 16."""
    tmp, dst, result = cli_runs['tiny']
    assert result.returncode == 0, result.stderr
    assert 'stage 0: freq_embed 56 x 56 -> 128 x 128' in result.stdout
    assert 'stage 3: freq_embed 7 x 7 -> 16 x 16' in result.stdout
    assert os.listdir(dst.parent) == [dst.name]
    source = torch.load(tmp / 'vheat-tiny.pth', weights_only=True)
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert checkpoint['meta']['interpolate4downstream'] == dict(
        source='vheat-tiny.pth',
        source_layout='mmvheat',
        ema=False,
        mode='pad',
        pt_size=224,
        tg_size=512)
    assert checkpoint['meta']['img_size'] == 512
    converted = checkpoint['state_dict']
    assert list(converted) == list(source['state_dict'])
    for i, (old, new) in enumerate([(56, 128), (28, 64), (14, 32), (7, 16)]):
        before = source['state_dict'][f'backbone.stages.{i}.freq_embed']
        after = converted[f'backbone.stages.{i}.freq_embed']
        assert after.shape == (new, new, 96 << i)
        assert (new - old) == (512 - 224) // 2**(i + 2)
        assert torch.equal(after[:old, :old], before)
        assert not after[old:].any() and not after[:, old:].any()

    # A dense vHeat-T at 512 takes it without resampling.
    model = VHeat(
        'tiny',
        img_size=512,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    model.init_weights()
    assert torch.equal(model.stages[0].freq_embed,
                       converted['backbone.stages.0.freq_embed'])


def test_cli_failure(cli_runs):
    tmp, dst, result = cli_runs['text']
    assert result.returncode == 1
    assert result.stderr.startswith(f'error: {tmp / "notes.txt"}: ')
    assert 'cannot be read as a PyTorch checkpoint' in result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stdout == ''
    assert not dst.exists()
    assert not [f for f in os.listdir(tmp) if f.endswith('.tmp')]


# -- modes -------------------------------------------------------------------
def test_pad_reproduces_the_published_recipe(tool, tmp_path, capsys):
    source = project_state_dict()
    checkpoint = run(tool, tmp_path, {
        'state_dict': source,
        'meta': {
            'arch': 'kept',
            'img_size': PT_SIZE
        }
    })
    converted = checkpoint['state_dict']
    assert_state_dicts_equal(converted, padded(source))
    for i in range(4):
        before = source[f'backbone.stages.{i}.freq_embed']
        after = converted[f'backbone.stages.{i}.freq_embed']
        side = PT_SIZE // 4 >> i
        assert after.shape == (2 * side, 2 * side, 8 << i)
        assert torch.equal(after[:side, :side], before)
        assert not after[side:].any() and not after[:, side:].any()
    meta = checkpoint['meta']
    assert meta['arch'] == 'kept'  # the input's meta is carried over
    assert meta['img_size'] == TG_SIZE
    assert meta['interpolate4downstream'] == dict(
        source='src.pth',
        source_layout='mmvheat',
        ema=False,
        mode='pad',
        pt_size=PT_SIZE,
        tg_size=TG_SIZE)
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(tmp_path / 'out' / 'dst.pth').st_mode & 0o777
    assert mode == 0o666 & ~umask
    out = capsys.readouterr().out
    assert 'stage 0: freq_embed 16 x 16 -> 32 x 32' in out
    assert 'Saved pad 64 -> 128' in out


def test_bicubic_uses_resize_freq_embed(tool, tmp_path):
    source = project_state_dict()
    checkpoint = run(tool, tmp_path, {'state_dict': source}, '--mode',
                     'bicubic')
    expected = OrderedDict(source)
    for i in range(4):
        key = f'backbone.stages.{i}.freq_embed'
        side = TG_SIZE // 4 >> i
        expected[key] = resize_freq_embed(source[key], (side, side))
        assert expected[key].shape == (side, side, 8 << i)
    assert_state_dicts_equal(checkpoint['state_dict'], expected)
    assert checkpoint['meta']['interpolate4downstream']['mode'] == 'bicubic'


# -- input layouts -----------------------------------------------------------
@pytest.mark.parametrize('dense', [False, True], ids=['cls', 'dense'])
def test_inverse_mapping_is_exact(dense):
    source = project_state_dict(dense=dense)
    assert_state_dicts_equal(
        convert_published_vheat(to_published(source)), source)


@pytest.mark.parametrize('container', ['model', 'state_dict', 'bare', 'dense'])
def test_published_input_becomes_mmvheat_layout(tool, tmp_path, container):
    source = project_state_dict(dense=container == 'dense')
    published = to_published(source)
    checkpoint = {
        'model': {
            'model': published,
            'epoch': 299
        },
        'state_dict': {
            'state_dict': published
        },
        'bare': published,
        'dense': {
            'state_dict': published,
            'meta': {}
        },
    }[container]
    out = run(tool, tmp_path, checkpoint)
    assert_state_dicts_equal(out['state_dict'], padded(source))
    assert out['meta']['interpolate4downstream']['source_layout'] == \
        'published'


def test_ema_weights(tool, tmp_path, capsys):
    model, ema = project_state_dict(seed=0), project_state_dict(seed=1)
    both = {'model': to_published(model), 'model_ema': to_published(ema)}
    out = run(tool, tmp_path, both, '--ema')
    assert_state_dicts_equal(out['state_dict'], padded(ema))
    assert out['meta']['interpolate4downstream']['ema'] is True
    assert 'EMA weights' in capsys.readouterr().out
    out = run(tool, tmp_path, both, name='plain.pth')
    assert_state_dicts_equal(out['state_dict'], padded(model))


def test_bare_backbone_state_dict_gets_the_prefix(tool, tmp_path):
    source = project_state_dict(dense=True)
    bare = OrderedDict((k[len('backbone.'):], v) for k, v in source.items()
                       if k.startswith('backbone.'))
    out = run(tool, tmp_path, bare)
    assert_state_dicts_equal(
        out['state_dict'],
        OrderedDict((k, v) for k, v in padded(source).items()
                    if k.startswith('backbone.')))


# -- loading downstream ------------------------------------------------------
@pytest.mark.parametrize('mode', ['pad', 'bicubic'])
def test_output_loads_into_the_downstream_backbone(tool, tmp_path, mode):
    """Only the output norms 0-2 start afresh; nothing is resampled."""
    out = run(tool, tmp_path, {'model': to_published(project_state_dict())},
              '--mode', mode)
    converted = out['state_dict']
    model = VHeat(
        SMALL_ARCH,
        img_size=TG_SIZE,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(tmp_path / 'out' / 'dst.pth'),
            prefix='backbone.'))
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


def test_realistic_published_tiny(tool, tmp_path, reference_dir):
    """The published vHeat-T key set (shapes from the reference fixture)."""
    with open(
            osp.join(reference_dir,
                     'vheat_official_state_dict_shapes.json')) as f:
        shapes = json.load(f)['tiny']
    published = OrderedDict((key, torch.zeros(()).expand(shape))
                            for key, shape in shapes['state_dict'].items())
    published['freq_embed.0'] = torch.ones(56, 56, 96)
    src, dst = tmp_path / 'vHeat_tiny.pth', tmp_path / 'vheat-tiny-512.pth'
    torch.save({'model': published}, src)
    assert tool.main(['--pt_pth', str(src), '--tg_pth', str(dst)]) == 0
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert len(converted) == len(published)
    embed = converted['backbone.stages.0.freq_embed']
    assert embed.shape == (128, 128, 96)
    assert embed[:56, :56].eq(1).all() and embed.sum() == 56 * 56 * 96
    assert converted['backbone.stages.3.freq_embed'].shape == (16, 16, 768)


# -- failures ----------------------------------------------------------------
def _resnet(path):
    torch.save(
        {
            'state_dict': {
                'conv1.weight': torch.zeros(4, 3, 7, 7),
                'fc.weight': torch.zeros(10, 4)
            }
        }, path)


def _text(path):
    path.write_text('not a checkpoint\n')


def _list(path):
    torch.save([torch.zeros(3)], path)


def _without_ema(path):
    torch.save({'model': to_published(project_state_dict())}, path)


def _mmengine_ema(path):
    torch.save({
        'state_dict': project_state_dict(),
        'ema_state_dict': {}
    }, path)


def _incomplete(path):
    state_dict = project_state_dict()
    del state_dict['backbone.stages.3.freq_embed']
    torch.save({'state_dict': state_dict}, path)


def _project(path):
    torch.save({'state_dict': project_state_dict()}, path)


_SIZES = ['--pt_size', str(PT_SIZE), '--tg_size', str(TG_SIZE)]


@pytest.mark.parametrize(
    'writer, flags, code, reason', [
        (_resnet, _SIZES, 1, 'not a vHeat checkpoint'),
        (_text, _SIZES, 1, 'cannot be read as a PyTorch checkpoint'),
        (_list, _SIZES, 1, 'expected a dict checkpoint'),
        (None, _SIZES, 1, 'no such file'),
        (_without_ema, _SIZES + ['--ema'], 1, 'no "model_ema" entry'),
        (_mmengine_ema, _SIZES + ['--ema'], 1, 'drop --ema'),
        (_incomplete, _SIZES, 1, "['backbone.stages.3.freq_embed'] missing"),
        (_project, ['--pt_size', '32', '--tg_size', '128'], 1,
         'backbone.stages.0.freq_embed is 16 x 16, expected 8 x 8 for '
         '--pt_size 32; the checkpoint was made for size 64: pass --pt_size 64'
         ),
        (_project, ['--pt_size', '64', '--tg_size', '32'], 2,
         '--tg_size (32) must not be smaller than --pt_size (64)'),
        (_project, ['--pt_size', '64', '--tg_size', '100'], 2,
         '--tg_size must be a positive multiple of 32, got 100'),
        (_project, ['--pt_size', '48', '--tg_size', '128'], 2,
         '--pt_size must be a positive multiple of 32, got 48'),
    ],
    ids=[
        'resnet', 'text', 'not-a-dict', 'missing', 'no-ema', 'mmengine-ema',
        'incomplete', 'wrong-pt-size', 'shrink', 'tg-not-32x', 'pt-not-32x'
    ])
def test_failures_write_nothing(tool, tmp_path, capsys, writer, flags, code,
                                reason):
    src = tmp_path / 'src.pth'
    if writer is not None:
        writer(src)
    before = sorted(os.listdir(tmp_path))
    dst = tmp_path / 'out' / 'dst.pth'
    argv = ['--pt_pth', str(src), '--tg_pth', str(dst), *flags]
    assert tool.main(argv) == code
    captured = capsys.readouterr()
    assert captured.err.startswith('error: ')
    if code == 1:
        assert captured.err.startswith(f'error: {src}: ')
    assert reason in captured.err
    assert captured.out == ''
    assert sorted(os.listdir(tmp_path)) == before  # no DST, dir or temp

    # An existing DST is left untouched.
    os.makedirs(dst.parent)
    dst.write_bytes(b'previous')
    assert tool.main(argv) == code
    assert dst.read_bytes() == b'previous'
    assert os.listdir(dst.parent) == ['dst.pth']


def test_unwritable_destination_leaves_no_temp_file(tool, tmp_path, capsys):
    _project(tmp_path / 'src.pth')
    dst = tmp_path / 'taken'
    dst.mkdir()  # os.replace cannot put a file over a directory
    assert tool.main(
        ['--pt_pth',
         str(tmp_path / 'src.pth'), '--tg_pth',
         str(dst), *_SIZES]) == 1
    assert capsys.readouterr().err.startswith(f'error: cannot write {dst}')
    assert sorted(os.listdir(tmp_path)) == ['src.pth', 'taken']
    assert os.listdir(dst) == []
