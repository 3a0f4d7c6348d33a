# Copyright (c) mmvheat contributors. All rights reserved.
"""Enlarging vHeat's frequency embeddings for downstream sizes.

:mod:`mmvheat.converters.freq_embed` (with :func:`mmvheat.converters.
vheat_weights` for the input layouts) is tested in-process on a small custom
arch pretrained at 64 and enlarged to 128; published checkpoints are
synthesised from this project's weights with the inverse of the
published-key mapping. ``tools/interpolate4downstream.py`` runs as a user
runs it, in subprocesses started together: a realistic vHeat-T 224 -> 512
case (constant tensors broadcast to their shapes, so files stay small) and
its failures.
"""
import json
import os
import os.path as osp
import re
from collections import OrderedDict

import pytest
import torch

import mmvheat
from mmvheat.converters import (CheckpointError, NotAVHeatCheckpoint,
                                check_sizes, convert_published_vheat,
                                enlarge_freq_embeds, vheat_weights)
from mmvheat.models.backbones.vheat import VHeat
from mmvheat.models.layers import resize_freq_embed

TOOL = osp.join('tools', 'interpolate4downstream.py')
SMALL_ARCH = dict(
    depths=[1, 2, 1, 1],
    dims=8,
    post_norm=True,
    layer_scale=1e-5,
    mlp_ratio=2.)
PT_SIZE, TG_SIZE = 64, 128
NUM_CLASSES = 10


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


def enlarged(checkpoint, mode='pad', use_ema=False):
    """What the tool writes for ``checkpoint``, PT_SIZE -> TG_SIZE."""
    state_dict, layout = vheat_weights(checkpoint, use_ema)
    changes = enlarge_freq_embeds(state_dict, PT_SIZE, TG_SIZE, mode)
    assert [tuple(c) for c in changes] == [(i, (PT_SIZE // 4 >> i, ) * 2,
                                            (TG_SIZE // 4 >> i, ) * 2)
                                           for i in range(4)]
    return state_dict, layout


# -- modes -------------------------------------------------------------------
def test_pad_reproduces_the_published_recipe():
    source = project_state_dict()
    converted, layout = enlarged({'state_dict': source, 'meta': {}})
    assert layout == 'mmvheat'
    assert_state_dicts_equal(converted, padded(source))
    for i in range(4):
        before = source[f'backbone.stages.{i}.freq_embed']
        after = converted[f'backbone.stages.{i}.freq_embed']
        side = PT_SIZE // 4 >> i
        assert after.shape == (2 * side, 2 * side, 8 << i)
        assert torch.equal(after[:side, :side], before)
        assert not after[side:].any() and not after[:, side:].any()


def test_bicubic_uses_resize_freq_embed():
    source = project_state_dict()
    converted, _ = enlarged({'state_dict': source}, mode='bicubic')
    expected = OrderedDict(source)
    for i in range(4):
        key = f'backbone.stages.{i}.freq_embed'
        side = TG_SIZE // 4 >> i
        expected[key] = resize_freq_embed(source[key], (side, side))
        assert expected[key].shape == (side, side, 8 << i)
    assert_state_dicts_equal(converted, expected)


# -- input layouts -----------------------------------------------------------
@pytest.mark.parametrize('dense', [False, True], ids=['cls', 'dense'])
def test_inverse_mapping_is_exact(dense):
    source = project_state_dict(dense=dense)
    assert_state_dicts_equal(
        convert_published_vheat(to_published(source)), source)


@pytest.mark.parametrize('container', ['model', 'state_dict', 'bare', 'dense'])
def test_published_input_becomes_mmvheat_layout(container):
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
    converted, layout = enlarged(checkpoint)
    assert layout == 'published'
    assert_state_dicts_equal(converted, padded(source))


def test_ema_weights():
    model, ema = project_state_dict(seed=0), project_state_dict(seed=1)
    both = {'model': to_published(model), 'model_ema': to_published(ema)}
    assert_state_dicts_equal(enlarged(both, use_ema=True)[0], padded(ema))
    assert_state_dicts_equal(enlarged(both)[0], padded(model))


def test_bare_backbone_state_dict_gets_the_prefix():
    source = project_state_dict(dense=True)
    bare = OrderedDict((k[len('backbone.'):], v) for k, v in source.items()
                       if k.startswith('backbone.'))
    assert_state_dicts_equal(
        enlarged(bare)[0],
        OrderedDict((k, v) for k, v in padded(source).items()
                    if k.startswith('backbone.')))


# -- loading downstream ------------------------------------------------------
@pytest.mark.parametrize('mode', ['pad', 'bicubic'])
def test_output_loads_into_the_downstream_backbone(tmp_path, mode,
                                                   check_backbone_loaded):
    """Only the output norms 0-2 start afresh; nothing is resampled."""
    converted, _ = enlarged({'model': to_published(project_state_dict())},
                            mode)
    torch.save({'state_dict': converted}, tmp_path / 'dst.pth')
    model = VHeat(
        SMALL_ARCH,
        img_size=TG_SIZE,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(tmp_path / 'dst.pth'),
            prefix='backbone.'))
    for i, stage in enumerate(model.stages):
        assert stage.freq_embed.shape == \
            converted[f'backbone.stages.{i}.freq_embed'].shape
    model.init_weights()
    check_backbone_loaded(model, converted)


def test_realistic_published_tiny(reference_dir):
    """The published vHeat-T key set (shapes from the reference fixture)."""
    with open(
            osp.join(reference_dir,
                     'vheat_official_state_dict_shapes.json')) as f:
        shapes = json.load(f)['tiny']
    published = OrderedDict((key, torch.zeros(()).expand(shape))
                            for key, shape in shapes['state_dict'].items())
    published['freq_embed.0'] = torch.ones(56, 56, 96)
    converted, _ = vheat_weights({'model': published})
    enlarge_freq_embeds(converted, 224, 512)
    assert len(converted) == len(published)
    embed = converted['backbone.stages.0.freq_embed']
    assert embed.shape == (128, 128, 96)
    assert embed[:56, :56].eq(1).all() and embed.sum() == 56 * 56 * 96
    assert converted['backbone.stages.3.freq_embed'].shape == (16, 16, 768)


# -- refusals ----------------------------------------------------------------
def _incomplete():
    state_dict = project_state_dict()
    del state_dict['backbone.stages.3.freq_embed']
    return {'state_dict': state_dict}


@pytest.mark.parametrize(
    'checkpoint, use_ema, reason', [
        ({
            'state_dict': {
                'conv1.weight': torch.zeros(4, 3, 7, 7)
            }
        }, False, 'not a vHeat checkpoint'),
        ([torch.zeros(3)], False, 'expected a dict checkpoint'),
        (lambda: {
            'model': to_published(project_state_dict())
        }, True, 'no "model_ema" entry'),
        (lambda: {
            'state_dict': project_state_dict(),
            'ema_state_dict': {}
        }, True, 'drop --ema'),
    ],
    ids=['resnet', 'not-a-dict', 'no-ema', 'mmengine-ema'])
def test_other_checkpoints_are_refused(checkpoint, use_ema, reason):
    if callable(checkpoint):
        checkpoint = checkpoint()
    with pytest.raises(CheckpointError, match=reason):
        vheat_weights(checkpoint, use_ema)


def test_unknown_published_key_is_refused():
    published = to_published(project_state_dict())
    published['layers.0.0.op.extra.weight'] = torch.zeros(3)
    with pytest.raises(NotAVHeatCheckpoint, match='op.extra.weight'):
        vheat_weights({'model': published})


@pytest.mark.parametrize(
    'state_dict, pt_size, tg_size, error, reason', [
        (lambda: _incomplete()['state_dict'], PT_SIZE, TG_SIZE,
         CheckpointError, "incomplete vHeat checkpoint: "
         "['backbone.stages.3.freq_embed'] missing"),
        (project_state_dict, 32, 128, CheckpointError,
         'backbone.stages.0.freq_embed is 16 x 16, expected 8 x 8 for '
         '--pt_size 32; the checkpoint was made for size 64: pass --pt_size '
         '64'),
        (project_state_dict, 64, 32, ValueError,
         '--tg_size (32) must not be smaller than --pt_size (64)'),
        (project_state_dict, 64, 100, ValueError,
         '--tg_size must be a positive multiple of 32, got 100'),
        (project_state_dict, 48, 128, ValueError,
         '--pt_size must be a positive multiple of 32, got 48'),
    ],
    ids=['incomplete', 'wrong-pt-size', 'shrink', 'tg-not-32x', 'pt-not-32x'])
def test_bad_sizes_change_nothing(state_dict, pt_size, tg_size, error, reason):
    state_dict = state_dict()
    before = OrderedDict(state_dict)
    with pytest.raises(error) as info:
        enlarge_freq_embeds(state_dict, pt_size, tg_size)
    assert str(info.value).startswith(reason)
    assert list(state_dict) == list(before)
    assert all(state_dict[k] is v for k, v in before.items())


def test_check_sizes_names_the_options():
    check_sizes(224, 224)
    with pytest.raises(ValueError, match='^size B .* size A'):
        check_sizes(64, 32, names=('size A', 'size B'))


# -- the command line ---------------------------------------------------------
def marked_tiny_224():
    """vHeat-T at 224 in mmvheat layout, each tensor one value broadcast."""
    model = VHeat('tiny', img_size=224, out_indices=(3, ), init_cfg=None)
    return OrderedDict(
        (f'backbone.{key}', torch.tensor(float(i + 1)).expand(value.shape))
        for i, (key, value) in enumerate(model.state_dict().items()))


@pytest.fixture(scope='module')
def cli(tmp_path_factory, run_tools):
    """``{name: (tmp dir, dst, CompletedProcess)}``, run together.

    ``src.pth`` is vHeat-T at 224 in the mmvheat layout, with a ``meta``
    (for ``ema``: a published small arch at PT_SIZE whose ``model`` and
    ``model_ema`` differ); a failing run's DST already exists
    (``previous``).
    """
    source = {'state_dict': marked_tiny_224(), 'meta': {'arch': 'kept'}}
    sources = {
        'ema': {
            'model': to_published(project_state_dict(seed=0)),
            'model_ema': to_published(project_state_dict(seed=1))
        }
    }
    flags = {
        'tiny': [],
        'ema': ['--ema', '--pt_size', PT_SIZE, '--tg_size', TG_SIZE],
        'text': [],
        'same-path': [],
        'wrong-pt-size': ['--pt_size', 256],
        'shrink': ['--tg_size', 192],
        'tg-not-32x': ['--tg_size', 500],
    }
    runs = {}
    for name, extra in flags.items():
        tmp = tmp_path_factory.mktemp(name)
        src, dst = tmp / 'src.pth', tmp / 'out' / 'dst.pth'
        if name == 'text':
            src.write_text('not a checkpoint\n')
        else:
            torch.save(sources.get(name, source), src)
        if name == 'same-path':
            dst = tmp / '.' / 'out' / '..' / 'src.pth'
        if name not in ('tiny', 'ema'):
            os.makedirs(tmp / 'out')
            if name != 'same-path':
                dst.write_bytes(b'previous')
        runs[name] = (tmp, dst,
                      [TOOL, '--pt_pth', src, '--tg_pth', dst, *extra])
    results = run_tools({name: run[2] for name, run in runs.items()})
    return {
        name: (tmp, dst, results[name])
        for name, (tmp, dst, _) in runs.items()
    }


def test_cli_tiny_224_to_512(cli):
    """The published recipe on vHeat-T: 56 -> 128, ..., 7 -> 16."""
    tmp, dst, result = cli['tiny']
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    assert result.stdout.splitlines() == [
        f'Read {tmp / "src.pth"} (mmvheat layout)',
        '  stage 0: freq_embed 56 x 56 -> 128 x 128',
        '  stage 1: freq_embed 28 x 28 -> 64 x 64',
        '  stage 2: freq_embed 14 x 14 -> 32 x 32',
        '  stage 3: freq_embed 7 x 7 -> 16 x 16',
        f'Saved pad 224 -> 512 to {dst} (mmvheat layout)',
    ]
    assert os.listdir(dst.parent) == [dst.name]
    source = torch.load(tmp / 'src.pth', weights_only=True)
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert checkpoint['meta'] == dict(
        arch='kept',  # the input's meta is carried over
        mmvheat_version=mmvheat.__version__,
        img_size=512,
        interpolate4downstream=dict(
            source='src.pth',
            source_layout='mmvheat',
            ema=False,
            mode='pad',
            pt_size=224,
            tg_size=512))
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


def test_cli_ema(cli):
    """``--ema`` on a published checkpoint whose ``model`` and
    ``model_ema`` differ in every tensor: the output is the EMA weights,
    converted and padded, with nothing of the model's."""
    tmp, dst, result = cli['ema']
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        f'Read {tmp / "src.pth"} (published layout, EMA weights)')
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    assert checkpoint['meta']['interpolate4downstream']['ema'] is True
    # The same weights the file was made from, padded here independently.
    model = padded(project_state_dict(seed=0))
    ema = padded(project_state_dict(seed=1))
    assert_state_dicts_equal(checkpoint['state_dict'], ema)
    for key, value in checkpoint['state_dict'].items():
        assert not torch.equal(value, model[key]), key


@pytest.mark.parametrize(
    'name, status, reason',
    [('text', 1, '{src}: is not a PyTorch checkpoint'),
     ('same-path', 1, 'the output {dst} is the input {src}'),
     ('wrong-pt-size', 1, '{src}: backbone.stages.0.freq_embed is 56 x 56, '
      'expected 64 x 64 for --pt_size 256; the checkpoint was made for size '
      '224: pass --pt_size 224'),
     ('shrink', 2, '--tg_size (192) must not be smaller than --pt_size '
      '(224)'),
     ('tg-not-32x', 2, '--tg_size must be a positive multiple of 32, got '
      '500')])
def test_cli_failures_change_nothing(cli, check_cli_error, name, status,
                                     reason):
    tmp, dst, result = cli[name]
    src = tmp / 'src.pth'
    check_cli_error(result, status, reason.format(src=src, dst=dst))
    if name == 'same-path':
        assert os.listdir(tmp / 'out') == []
        assert 'meta' in torch.load(src, weights_only=True)  # untouched
    else:
        assert dst.read_bytes() == b'previous'
        assert os.listdir(dst.parent) == ['dst.pth']
