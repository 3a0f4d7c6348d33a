# Copyright (c) mmvheat contributors. All rights reserved.
"""FLOP counting of the HCO (``mmvheat.analysis.flops``) and the benchmark
harness (``mmvheat.analysis.benchmark``), on a CPU with tiny settings."""
import csv
import os.path as osp

import pytest
import torch
from torch import nn

import mmvheat  # noqa: F401
from mmvheat.analysis import benchmark
from mmvheat.analysis.flops import get_flops, hco_macs, model_complexity
from mmvheat.ops import spectral_filter

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))


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
    per_image = (
        c * 9 * h * w  # depth-wise conv
        + h * w * c * 2 * c  # linear C -> 2C
        + h * w * c * c  # out linear
        + hco_macs(h, w, c) + 5 * h * w * c
    )  # layer norm as mmengine counts it
    assert counted['flops_per_image'] == per_image
    assert counted['flops_shared'] == 0


def test_get_flops_vheat_tiny():
    res = get_flops(osp.join(ROOT, 'configs/vheat/vheat-tiny_16xb128_in1k.py'))
    # Paper: 4.6G (MACs) and 29M; published checkpoint: 30.08M backbone +
    # 0.77M head. Per image: 4.588G; the batch-independent decay**k
    # prediction (sum of H*W*C*C over blocks) adds 0.347G per forward.
    assert res['flops_per_image'] == pytest.approx(4.6e9, rel=0.02)
    assert res['flops_shared'] == pytest.approx(0.347e9, rel=0.01)
    assert res['backbone_params'] == pytest.approx(30.08e6, rel=0.002)
    assert res['params'] == pytest.approx(30.08e6 + 0.769e6, rel=0.002)


def test_benchmark_models_cpu_tiny(tmp_path):
    rows, notes = benchmark.benchmark_models(
        torch.device('cpu'), ['vheat-t', 'vheat-t-pub'],
        resolutions=[64],
        batch_size=1,
        mode='infer',
        repeats=1,
        warmup=0)
    assert notes == []
    assert [r['model'] for r in rows] == ['vheat-t', 'vheat-t-pub']
    for row in rows:
        assert row['status'] == 'ok'
        for col in ('median_ms', 'images_per_s', 'gflops_per_image',
                    'params_m', 'speedup_vs_baseline'):
            assert row[col] > 0, col
    # The published dataflow runs the same weights: same FLOPs and params.
    assert rows[0]['gflops_per_image'] == rows[1]['gflops_per_image']
    assert rows[0]['params_m'] == rows[1]['params_m']
    path = str(tmp_path / 'models.csv')
    benchmark.write_csv(path, rows, benchmark.MODEL_COLUMNS)
    with open(path) as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == benchmark.MODEL_COLUMNS
    assert written[0]['peak_mem_mb'] == ''  # n/a on CPU
    benchmark.plot(rows, str(tmp_path / 'benchmark.png'))
    assert (tmp_path / 'benchmark.png').stat().st_size > 1000
    table = benchmark.format_table(rows, ['model', 'status'], 'title')
    assert table.splitlines()[2:] == [
        'model       | status', '------------+-------', 'vheat-t     | ok    ',
        'vheat-t-pub | ok    '
    ]


def test_deployed_and_published_classifiers_agree():
    """What the benchmark times computes the same function: the deployed
    vHeat-T and the published dataflow on the same weights."""
    torch.manual_seed(0)
    model = benchmark.build_classifier('vheat-t', 64).eval()
    published = benchmark.build_classifier('vheat-t-pub', 64).eval()
    published.load_state_dict({
        k.replace('backbone.', 'backbone.vheat.', 1): v
        for k, v in model.state_dict().items()
    })
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = published(x, mode='tensor')
        benchmark.switch_to_deploy(model)
        torch.testing.assert_close(
            model(x, mode='tensor'), reference, atol=1e-4, rtol=1e-4)


def test_benchmark_ops_cpu_tiny():
    rows, exps, notes = benchmark.benchmark_ops(
        torch.device('cpu'),
        resolutions=[64, 128],
        stages=[3],
        batch_size=1,
        mode='infer',
        repeats=1,
        warmup=0)
    assert any('Triton' in note for note in notes)
    ok = [r for r in rows if r['status'] == 'ok']
    assert {r['impl'] for r in ok} == {'reference', 'published'}
    assert all(r['median_ms'] > 0 for r in ok)
    assert {r['impl']
            for r in rows if r['status'].startswith('skipped')} == {'triton'}
    assert all(set(r) <= set(benchmark.OP_COLUMNS) for r in rows)
    found = {(e['impl'], e['stage']) for e in exps}
    assert ('reference', 3) in found and ('published',
                                          'all (x depth)') in found
    # float32: the two implementations agree with the exact result.
    assert all(r['max_rel_err'] < 1e-5 for r in ok)


@pytest.mark.parametrize('dtype, low, high', [('bf16', 1e-3, 2e-2),
                                              ('fp16', 1e-4, 2e-3)])
def test_benchmark_reports_half_precision_error(dtype, low, high):
    rows, _, _ = benchmark.benchmark_ops(
        torch.device('cpu'),
        resolutions=[128],
        stages=[2, 3],
        batch_size=1,
        mode='infer',
        dtype=dtype,
        repeats=1,
        warmup=0)
    errors = {
        (r['impl'], r['stage']): r['max_rel_err']
        for r in rows if r['status'] == 'ok'
    }
    assert set(errors) == {(i, s)
                           for i in ('reference', 'published')
                           for s in (2, 3)}
    # Rounding the input and the output to the half dtype, and no more for
    # the reference path, which computes in float32.
    assert all(low < e < high for e in errors.values()), errors


def test_fit_exponent():
    ns = [100, 400, 1600]
    assert benchmark.fit_exponent(ns, [n**1.5 for n in ns]) == \
        pytest.approx(1.5)
