# Copyright (c) mmvheat contributors. All rights reserved.
"""The command lines of ``tools/analysis_tools`` (benchmark.py, get_flops.py,
visualize_heat.py, saved_tensors.py for Swin-T), run side by side; what
they compute is tested in ``tests/test_analysis``."""
import csv
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
GET_FLOPS = 'tools/analysis_tools/get_flops.py'
VISUALIZE_HEAT = 'tools/analysis_tools/visualize_heat.py'


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tiny_vheat_config):
    """Every command, started together (each pays for its imports)."""
    tmp = tmp_path_factory.mktemp('analysis_tools')
    config = tmp / 'vheat.py'
    config.write_text(tiny_vheat_config)
    commands = dict(
        benchmark=[
            'benchmark.py', '--device', 'cpu', '--models', 'vheat-t',
            '--resolutions', '64', '--batch-size', '1', '--mode', 'infer',
            '--repeats', '1', '--warmup', '0', '--op-resolutions', '64',
            '--op-stages', '3', '--no-flops', '--out-dir',
            str(tmp / 'benchmark')
        ],
        get_flops=['get_flops.py',
                   str(config), '--shape', '64'],
        visualize_heat=[
            'visualize_heat.py',
            str(config), 'none', '--out-dir',
            str(tmp / 'heat'), '--size', '64', '64', '--num-images', '1'
        ],
        saved_swin=['saved_tensors.py', '--model', 'swin-t', '--size', '64'])
    procs = {
        name:
        subprocess.Popen([sys.executable,
                          osp.join(TOOLS, argv[0]), *argv[1:]],
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT,
                         text=True)
        for name, argv in commands.items()
    }
    outputs = {}
    for name, proc in procs.items():
        outputs[name] = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f'{name}:\n{outputs[name][-3000:]}'
    return tmp, outputs


def test_benchmark(runs):
    tmp, outputs = runs
    out = tmp / 'benchmark'
    with open(out / 'benchmark_models.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['model'], r['status']) for r in rows] == [('vheat-t', 'ok')]
    assert (out / 'benchmark.png').stat().st_size > 1000
    assert (out / 'benchmark_ops.csv').exists()
    assert (out / 'benchmark_op_exponents.csv').exists()
    printed = outputs['benchmark']
    assert ('note: Triton kernel rows (fused, tiled) skipped: they run on '
            'CUDA') in printed
    assert 'HCO op (batch 1' in printed and 'models (batch 1' in printed
    assert f'written to {out}' in printed


def test_saved_tensors_of_swin(runs):
    """mmpretrain's Swin (whose ``train()`` returns None) is listed block by
    block, its attention maps (3 heads, 49 x 49 per window) among what its
    first block keeps."""
    printed = runs[1]['saved_swin'].splitlines()
    assert printed[0] == 'swin-t at 64, batch 1: stages.0.blocks.0'
    assert any(
        line.startswith('| BmmBackward0 | [') and ', 3, 49, 49] |' in line
        for line in printed)
    modules = [
        line.split(' | ')[0][2:] for line in printed
        if line.startswith('| stages.')
    ]
    assert modules == [
        f'stages.{i}.blocks.{j}' for i, depth in enumerate((2, 2, 6, 2))
        for j in range(depth)
    ]
    assert printed[-1].startswith('| all | ')


def test_get_flops(runs):
    printed = runs[1]['get_flops']
    assert 'Input shape:       1x3x64x64' in printed
    for line in ('FLOPs per image:', 'FLOPs shared:', 'Params:'):
        assert line in printed


def test_visualize_heat(runs):
    tmp, outputs = runs
    for name in ('impulse_response.png', 'frequency_k.png', 'erf.png'):
        path = tmp / 'heat' / name
        assert path.stat().st_size > 1000
        assert f'wrote {path}' in outputs['visualize_heat']


def test_get_flops_prints_the_stage_table(runs):
    printed = runs[1]['get_flops'].splitlines()
    header = printed.index(
        'part                  params  FLOPs/image  shared  of which HCO')
    names = [line.split('  ')[0].strip() for line in printed[header + 1:-1]]
    assert names == [
        'stem (patch_embed)', 'stage 1', 'stage 2 downsample', 'stage 2',
        'stage 3 downsample', 'stage 3', 'stage 4 downsample', 'stage 4',
        'output norms (norm3)', 'backbone', 'neck', 'head'
    ]


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, tiny_vheat_config):
    import torch
    from mmengine.runner import save_checkpoint
    tmp = tmp_path_factory.mktemp('bad_files')
    (tmp / 'vheat.py').write_text(tiny_vheat_config)
    (tmp / 'corrupt.pth').write_bytes(b'not a checkpoint')
    (tmp / 'a_file').write_text('')
    (tmp / 'syntax.py').write_text('model = dict(\n')
    (tmp / 'on_syntax.py').write_text("_base_ = ['syntax.py']\n")
    # A checkpoint of another model: a ResNet-like stem only.
    save_checkpoint(
        {'state_dict': {
            'backbone.conv1.weight': torch.zeros(8, 3, 7, 7)
        }}, str(tmp / 'other.pth'))
    (tmp / 'mpvit.py').write_text(
        tiny_vheat_config.replace(
            "type='mmvheat.VHeat'", "type='mmvheat.MPViT'").replace(
                "arch=dict(depths=[1, 1, 1, 1], dims=16, post_norm=False,\n"
                "                  layer_scale=None, mlp_ratio=2.),\n"
                "        img_size=64",
                "arch='tiny'").replace('in_channels=128', 'in_channels=216'))
    return tmp


def test_get_flops_bad_inputs(bad_files, tool_main, capsys):
    tmp = bad_files
    config = tmp / 'vheat.py'
    cases = [
        ([tmp / 'nope.py'], 1, f'{tmp}/nope.py: no such config file'),
        ([tmp / 'syntax.py'], 1, f'{tmp}/syntax.py: cannot be read: a '
         "syntax error (line 1): '(' was never closed"),
        ([tmp / 'on_syntax.py'], 1, f'{tmp}/on_syntax.py: cannot be read: a '
         'syntax error in one of its _base_ files (line 1)'),
        ([config, '--checkpoint', tmp / 'corrupt.pth'], 1,
         f'{tmp}/corrupt.pth: is not a PyTorch checkpoint'),
        ([config, '--checkpoint', tmp / 'other.pth'], 1,
         f'{tmp}/other.pth does not fit the ImageClassifier: 97 weights '
         'unset'),
        ([config, '--cfg-options', 'model.neck.type=NoSuchNeck'], 1,
         f"{config}: unknown type 'NoSuchNeck'"),
        ([config, '--shape', '64', '64',
          '64'], 2, '--shape takes H [W], got 3 values'),
    ]
    for argv, status, message in cases:
        got, err = tool_main(GET_FLOPS, argv, capsys)
        assert (got, err.count('\n')) == (status, 1), (argv, err)
        assert err.startswith(f'error: {message}'), (argv, err)
    for shape in ('0', '-64'):
        got, err = tool_main(GET_FLOPS, [config, '--shape', shape], capsys)
        assert got == 2 and f'must be at least 1, got {shape}' in err


def test_visualize_heat_bad_inputs(bad_files, tool_main, capsys):
    tmp = bad_files
    config = tmp / 'vheat.py'
    out = ['--out-dir', tmp / 'heat']
    cases = [
        ([tmp / 'nope.py', 'none',
          *out], 1, f'{tmp}/nope.py: no such config file'),
        ([config, tmp / 'corrupt.pth',
          *out], 1, f'{tmp}/corrupt.pth: is not a PyTorch checkpoint'),
        ([config, 'none', '--out-dir', tmp / 'a_file' / 'sub'], 1,
         f'cannot write --out-dir {tmp}/a_file/sub: {tmp}/a_file is not a '
         'directory'),
        ([
            config, 'none', *out, '--size', '64', '64', '--source-pixel', '64',
            '0'
        ], 2, '--source-pixel 64 0 is outside the 64 x 64 image'),
        ([config, 'none', *out, '--img',
          tmp / 'nope.jpg'], 1, f'--img {tmp}/nope.jpg: no such file'),
        ([tmp / 'mpvit.py', 'none', *out, '--size', '64',
          '64'], 1, f'{tmp}/mpvit.py has no vHeat backbone (got MPViT)'),
    ]
    for argv, status, message in cases:
        got, err = tool_main(VISUALIZE_HEAT, argv, capsys)
        assert (got, err.count('\n')) == (status, 1), (argv, err)
        assert err.startswith(f'error: {message}'), (argv, err)
    got, err = tool_main(VISUALIZE_HEAT,
                         [config, 'none', *out, '--size', '0', '64'], capsys)
    assert got == 2 and 'must be at least 1, got 0' in err
    assert not (tmp / 'heat').exists() or not list((tmp / 'heat').iterdir())
