# Copyright (c) mmvheat contributors. All rights reserved.
"""FLOP counting of the HCO, get_flops.py and benchmark.py (CPU, tiny)."""
import csv
import os.path as osp
import sys

import pytest
import torch
from torch import nn

import mmvheat  # noqa: F401
from mmvheat.ops import spectral_filter
from mmvheat.utils.flops import hco_macs, model_complexity

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)


class _HCO(nn.Module):

    def forward(self, x, transfer):
        return spectral_filter(x, transfer)


@pytest.mark.parametrize('b,h,w,c', [(1, 7, 7, 16), (3, 14, 10, 8)])
def test_hco_flops_match_formula(b, h, w, c):
    x, t = torch.randn(b, h, w, c), torch.rand(h, w, c)
    counted = model_complexity(_HCO(), (x, t))['flops']
    # DCT along H then W, forward + inverse: 2*C*H*W*(H+W) MACs per image,
    # counted exactly (the stock mmengine handler gives far less at b > 1).
    assert counted == b * 2 * c * h * w * (h + w) == hco_macs(h, w, c, b)
    # The spectral multiply (C*H*W) is element-wise, not counted: < 1/(2(H+W))
    full = hco_macs(h, w, c, b, include_multiply=True)
    assert abs(counted - full) / full < 1 / (2 * (h + w))


def test_hco_flops_in_heat_layer():
    from mmvheat.models.backbones.vheat import HeatConduction2d
    c, h, w = 8, 6, 5
    layer = HeatConduction2d(c)
    x, t = torch.randn(1, h, w, c), torch.rand(h, w, c)
    counted = model_complexity(layer, (x, t), split_batch=True)
    per_image = (c * 9 * h * w  # depth-wise conv
                 + h * w * c * 2 * c  # linear C -> 2C
                 + h * w * c * c  # out linear
                 + hco_macs(h, w, c)
                 + 5 * h * w * c)  # layer norm as mmengine counts it
    assert counted['flops_per_image'] == per_image
    assert counted['flops_shared'] == 0


def test_get_flops_vheat_tiny():
    from get_flops import get_flops
    res = get_flops(osp.join(ROOT, 'configs/vheat/vheat-tiny_16xb128_in1k.py'))
    # Paper: 4.6G (MACs) and 29M; published checkpoint: 30.08M backbone +
    # 0.77M head. Per image: 4.588G; the batch-independent decay**k
    # prediction (sum of H*W*C*C over blocks) adds 0.347G per forward.
    assert res['flops_per_image'] == pytest.approx(4.6e9, rel=0.02)
    assert res['flops_shared'] == pytest.approx(0.347e9, rel=0.01)
    assert res['backbone_params'] == pytest.approx(30.08e6, rel=0.002)
    assert res['params'] == pytest.approx(30.08e6 + 0.769e6, rel=0.002)


def test_benchmark_cpu_tiny(tmp_path):
    import benchmark
    out = benchmark.main([
        '--device', 'cpu', '--models', 'vheat-t', '--resolutions', '64',
        '--batch-size', '1', '--mode', 'infer', '--repeats', '1',
        '--warmup', '0', '--op-resolutions', '64', '128', '--op-stages',
        '3', '--out-dir',
        str(tmp_path)
    ])
    assert osp.isfile(tmp_path / 'benchmark.png')
    assert (tmp_path / 'benchmark.png').stat().st_size > 1000
    with open(tmp_path / 'benchmark_models.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == benchmark.MODEL_COLUMNS
    assert len(rows) == 1 and rows[0]['status'] == 'ok'
    for col in ('median_ms', 'images_per_s', 'gflops_per_image',
                'params_m', 'speedup_vs_baseline'):
        assert float(rows[0][col]) > 0, col
    assert rows[0]['peak_mem_mb'] == ''  # n/a on CPU
    with open(tmp_path / 'benchmark_ops.csv') as f:
        ops = list(csv.DictReader(f))
    assert list(ops[0]) == benchmark.OP_COLUMNS
    ok = [r for r in ops if r['status'] == 'ok']
    assert {r['impl'] for r in ok} == {'reference', 'published'}
    assert all(float(r['median_ms']) > 0 for r in ok)
    assert {r['impl'] for r in ops if r['status'].startswith('skipped')} == {
        'triton'
    }
    exps = {(e['impl'], e['stage']): e['exponent'] for e in out['exponents']}
    assert ('reference', 3) in exps and ('published', 'all (x depth)') in exps
    # float32: the two implementations agree with the exact result.
    assert all(float(r['max_rel_err']) < 1e-5 for r in ok)


@pytest.mark.parametrize('dtype, low, high', [('bf16', 1e-3, 2e-2),
                                              ('fp16', 1e-4, 2e-3)])
def test_benchmark_reports_half_precision_error(tmp_path, dtype, low, high):
    import benchmark
    out = benchmark.main([
        '--device', 'cpu', '--op-only', '--dtype', dtype, '--batch-size',
        '1', '--mode', 'infer', '--repeats', '1', '--warmup', '0',
        '--op-resolutions', '128', '--op-stages', '2', '3', '--out-dir',
        str(tmp_path)
    ])
    errors = {(r['impl'], r['stage']): r['max_rel_err'] for r in out['ops']
              if r['status'] == 'ok'}
    assert set(errors) == {(i, s) for i in ('reference', 'published')
                           for s in (2, 3)}
    # Rounding the input and the output to the half dtype, and no more for
    # the reference path, which computes in float32.
    assert all(low < e < high for e in errors.values()), errors


def test_fit_exponent():
    from benchmark import fit_exponent
    ns = [100, 400, 1600]
    assert fit_exponent(ns, [n**1.5 for n in ns]) == pytest.approx(1.5)
