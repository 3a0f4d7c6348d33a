# Copyright (c) mmvheat contributors. All rights reserved.
"""The command lines of ``tools/analysis_tools`` (benchmark.py, get_flops.py,
visualize_heat.py), run side by side; what they compute is tested in
``tests/test_analysis``."""
import csv
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
VHEAT_CFG = """
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmvheat.VHeat',
        arch=dict(depths=[1, 1, 1, 1], dims=16, post_norm=False,
                  layer_scale=None, mlp_ratio=2.),
        img_size=64),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=128))
"""


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Every command, started together (each pays for its imports)."""
    tmp = tmp_path_factory.mktemp('analysis_tools')
    config = tmp / 'vheat.py'
    config.write_text(VHEAT_CFG)
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
        ])
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
    assert 'note: fused Triton kernel rows skipped on CPU' in printed
    assert 'HCO op (batch 1' in printed and 'models (batch 1' in printed
    assert f'written to {out}' in printed


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
