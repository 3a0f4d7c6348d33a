# Copyright (c) mmvheat contributors. All rights reserved.
"""The GPU report (``tools/analysis_tools/gpu_report.py``, a preset of
``mmvheat.analysis.benchmark``) run end to end on the CPU with
``quick=True``: tiny shapes, kernels in Triton's interpreter, wall-clock
timers. The numbers it times here mean nothing; what is checked is
what it computes (errors against float64, bytes, ratios), what it writes and
when, and how it copes with missing packages, lack of memory and its time
budget."""
import csv
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import mmvheat  # noqa: F401
from mmvheat.analysis import benchmark as harness
from . import analysis_tool

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
CPU = torch.device('cpu')

gpu_report = analysis_tool('gpu_report')

# Errors against the float64 reference, relative to its largest value:
# * float32 outputs and every filter gradient of our implementations
#   (float32 whatever x's dtype): 1e-5, a 30x margin over the float32
#   round-off of four transforms of length <= 36 (~3e-7 measured), while a
#   wrong basis row, index or filter entry gives 1e-2 and more.
FP32_TOL = 1e-5
# * bfloat16 outputs: the float32 result rounded once to bfloat16. The
#   reference rounds to nearest (half an ulp, 2^-9 of a value); Triton's
#   interpreter truncates (a whole ulp, 2^-8... 2^-7 relative). Bounded by
#   2^-7 plus the float32 error; above 2^-12, since the rounding is there.
BF16_ROUNDING = (2.0**-12, 2.0**-7 + FP32_TOL)
# * the published formulation in bfloat16 runs each of its four conv1d
#   passes (and the basis) in bfloat16: four roundings of 2^-9 each and
#   their propagation through the orthonormal transforms stay below 2^-5.
PUBLISHED_BF16 = (2.0**-12, 2.0**-5)

_OOM_SHAPE = (2, 10, 36, 4)  # bf16 training of the 40 x 144 input


def _read(path):
    with open(path, newline='') as f:
        return list(csv.reader(f))


def _data(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
    """The quick report, with one configuration failing for lack of memory
    and the CSV files read at every progress line."""
    out = tmp_path_factory.mktemp('gpu_report')
    real_measure = harness.measure_hco
    seen = []

    def measure_hco(shape, dtype, mode, *args, **kwargs):
        if (shape, dtype, mode) == (_OOM_SHAPE, 'bf16', 'train'):
            raise torch.cuda.OutOfMemoryError(
                'CUDA out of memory. Tried to allocate 2.00 GiB')
        return real_measure(shape, dtype, mode, *args, **kwargs)

    def progress(line):
        # What the files hold when each line is printed.
        seen.append((line, len(_read(out / 'gpu_report_ops.csv')),
                     len(_read(out / 'gpu_report_models.csv'))))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, 'measure_hco', measure_hco)
        result = gpu_report.run_report(
            str(out), CPU, quick=True, progress=progress)
    return out, result, seen


def test_quick_report_writes_every_file(quick_report):
    out, result, _ = quick_report
    assert set(
        result['files']) == {'ops', 'models', 'targets', 'text', 'figure'}
    for name, columns in (('ops', gpu_report.OP_COLUMNS),
                          ('models', gpu_report.MODEL_COLUMNS),
                          ('targets', gpu_report.TARGET_COLUMNS)):
        assert _read(result['files'][name])[0] == columns, name
    assert (out / 'gpu_report.png').stat().st_size > 1000
    text = (out / 'gpu_report.txt').read_text()
    for line in result['lines']:
        assert line in text


def test_quick_report_writes_as_it_goes(quick_report):
    """Each progress line comes after its rows are in the CSV files, so a
    run stopped at any point leaves what it had measured."""
    _, result, seen = quick_report
    work = [s for s in seen if s[0].startswith('[')]
    assert len(work) == len(gpu_report.report_items(gpu_report.QUICK_PLAN))
    op_rows = model_rows = 1  # the headers
    for line, ops, models in work:
        if ' HCO ' in line:
            assert ops > op_rows and models == model_rows, line
        else:
            assert models > model_rows and ops == op_rows, line
        op_rows, model_rows = ops, models
    assert op_rows - 1 == len(result['op_rows'])
    assert model_rows - 1 == len(result['model_rows'])


def test_quick_report_operator_rows(quick_report):
    out, _, _ = quick_report
    rows = _data(out / 'gpu_report_ops.csv')
    configs = {}
    for row in rows:
        key = (row['input'], row['dtype'], row['mode'])
        configs.setdefault(key, []).append(row)
    # 2 inputs x 2 dtypes x 2 modes; the fused path only where the grid
    # fits it (8 x 8, not 10 x 36).
    assert len(configs) == 8
    for (size, dtype, mode), impls in configs.items():
        if (size, dtype, mode) == ('40x144', 'bf16', 'train'):
            assert [(r['impl'], r['status'])
                    for r in impls] == [('all', 'OOM')]
            continue
        names = [r['impl'] for r in impls]
        if not harness.kernels_run_on(CPU):
            # A session whose kernels were compiled for CUDA: the report
            # leaves the kernel rows out on the CPU (its header says so).
            assert names == ['reference', 'published', 'copy']
            continue
        kernels = ['fused', 'tiled'] if size == '32' else ['tiled']
        assert names == ['reference'
                         ] + kernels + ['autotuned', 'published', 'copy']
        assert all(r['status'] == 'ok' for r in impls), impls
        # One choice for the forward, and one for the backward in training
        # where it differs.
        choices = {r['autotuned'] for r in impls}
        assert len(choices) == 1
        parts = choices.pop().split('/')
        assert set(parts) <= {'reference'} | set(kernels)
        assert len(parts) <= (2 if mode == 'train' else 1)
        by_name = {r['impl']: r for r in impls}
        b, h, w, c = (int(impls[0][k]) for k in ('batch_size', 'H', 'W', 'C'))
        x_bytes = b * h * w * c * (2 if dtype == 'bf16' else 4)
        copy = by_name['copy']
        copy_s = float(copy['median_ms']) / 1e3
        assert float(copy['gb_per_s']) == pytest.approx(
            2 * x_bytes / copy_s / 1e9, rel=1e-9)
        for name in ['reference', 'published', 'autotuned'] + kernels:
            row = by_name[name]
            t = float(row['median_ms']) / 1e3
            filter_bytes = 4 * h * w * c  # float32
            if mode == 'infer':
                # Read x and the filter, write y.
                ideal = 2 * x_bytes + filter_bytes
            else:
                # Also read x and the output gradient, write x's gradient;
                # read the filter again and write its gradient.
                ideal = 5 * x_bytes + 3 * filter_bytes
            assert float(row['gb_per_s']) == pytest.approx(
                ideal / t / 1e9, rel=1e-9)
            # Against those bytes at the copy's bandwidth (it reads and
            # writes x once).
            assert float(row['vs_copy']) == pytest.approx(
                t / (ideal / (2 * x_bytes / copy_s)), rel=1e-9)
            # Paired round by round (the rounds are not in the file; see
            # test_operator_speedups_are_paired): against itself exactly 1.
            speedup = float(row['speedup_vs_published'])
            assert speedup == 1. if name == 'published' else 0 < speedup
        # Global-memory bytes per element, counted by hand for an s-byte
        # dtype: the fused path reads and writes each activation once (2 s;
        # train 5 s); the tiled one, for rows up to 64, adds a float32 map
        # each way between its passes (2 s + 16; the backward 3 s + 24). In
        # training, grad_T: with few programs per image here, each of the
        # two images is a chunk of its own, whose float32 partial is
        # written and read, and grad_T is written: (2 * 2 + 1) * 4 bytes
        # per element of one image, 10 per element of the batch.
        size_of = 2 if dtype == 'bf16' else 4
        expected = {
            'fused': 2 * size_of,
            'tiled': 2 * size_of + 16
        } if mode == 'infer' else {
            'fused': 5 * size_of + 10,
            'tiled': 5 * size_of + 40 + 10
        }
        assert int(copy['bytes_per_elem']) == 2 * size_of
        for name in kernels:
            row = by_name[name]
            assert float(row['bytes_per_elem']) == expected[name]
            filter_bytes = 4 * h * w * c * (1 if mode == 'infer' else 3)
            own = expected[name] * b * h * w * c + filter_bytes
            assert float(row['vs_own_bytes']) == pytest.approx(
                float(row['median_ms']) / 1e3 / (own / (2 * x_bytes / copy_s)),
                rel=1e-9)
        for name in ('reference', 'published', 'autotuned'):
            assert by_name[name]['bytes_per_elem'] == ''
        _check_errors(by_name, dtype, mode, kernels + ['autotuned'])


def _check_errors(by_name, dtype, mode, kernels):
    columns = ['err_out'
               ] + (['err_grad_x', 'err_grad_t'] if mode == 'train' else [])
    for name in ['reference', 'published'] + kernels:
        row = by_name[name]
        for column in columns:
            err = float(row[column])
            if dtype == 'fp32' or (column == 'err_grad_t'
                                   and name != 'published'):
                low, high = 0., FP32_TOL
            elif name == 'published':
                low, high = PUBLISHED_BF16
            else:
                low, high = BF16_ROUNDING
            assert low < err < high or (low == 0 and 0 <= err < high), (name,
                                                                        dtype,
                                                                        mode,
                                                                        column,
                                                                        err)
    if mode == 'infer':
        for name in ['err_grad_x', 'err_grad_t']:
            assert by_name['reference'][name] == ''


def test_quick_report_model_rows(quick_report):
    out, _, _ = quick_report
    rows = _data(out / 'gpu_report_models.csv')
    groups = {}
    for row in rows:
        groups.setdefault((row['resolution'], row['mode']), []).append(row)
    assert list(groups) == [('32', 'infer'), ('64', 'infer'), ('32', 'train'),
                            ('64', 'train')]
    for (res, mode), group in groups.items():
        names = [r['model'] for r in group]
        assert names == ([
            'vheat-t', 'vheat-t-pub-fold', 'vheat-t-pub', 'vheat-t-plain',
            'swin-t'
        ] if mode == 'infer' else ['vheat-t', 'vheat-t-pub', 'swin-t'])
        assert all(r['status'] == 'ok' for r in group)
        assert all(r['peak_mem_mb'] == '' for r in group)  # CUDA only
        for row in group:
            # Paired round by round (see test_model_speedups_vs_swin_are_
            # paired): Swin-T against itself exactly 1.
            speedup = float(row['speedup_vs_swin'])
            assert speedup == 1. if row['model'] == 'swin-t' else 0 < speedup
            assert float(row['images_per_s']) == pytest.approx(
                2 / float(row['median_ms']) * 1e3, rel=1e-9)


def test_quick_report_targets(quick_report):
    out, result, _ = quick_report
    rows = _data(out / 'gpu_report_targets.csv')
    assert len(rows) == 12
    names = {name for name, _, _ in gpu_report.TARGETS}
    assert {r['target'].split(' (')[0] for r in rows} == names
    results = {r['target']: r['result'] for r in rows}
    memory = [t for t in results if 'memory' in t]
    assert [results[t] for t in memory] == ['n/a']  # measured on CUDA only
    assert all(results[t] in ('PASS', 'FAIL') for t in results
               if t not in memory)
    for row in rows:
        if row['result'] == 'n/a':
            continue
        op, threshold = row['threshold'].split()
        ratio = float(row['ratio'])
        passed = ratio >= float(threshold) if op == '>=' else \
            ratio <= float(threshold)
        assert row['result'] == ('PASS' if passed else 'FAIL')
    printed = [
        line for line in result['lines']
        if line.startswith(('PASS', 'FAIL', 'n/a'))
    ]
    assert len(printed) == 12


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_errors_are_measured_against_float64(dtype):
    """The report's exact results are scipy's float64 DCT of the same
    (rounded) inputs, and an error is ``max |y - y64| / max |y64|``: an
    implementation 0.1% too large in every value is 1e-3 off."""
    from test_ops.exact_reference import exact_spectral_filter, random_inputs

    from mmvheat.ops import spectral_filter_reference
    x, transfer, grad = random_inputs((2, 5, 7, 3), dtype)
    exact = harness._exact(x, transfer, grad)
    for ours, theirs in zip(exact, exact_spectral_filter(x, transfer, grad)):
        # float64 round-off of two ways of computing a 5 x 7 DCT.
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)

    def too_large(x, t):
        # Scaled in float32: 1.001 is 1 in bfloat16.
        return (spectral_filter_reference(x.float(), t) * 1.001).to(x.dtype)

    errors = harness._errors(too_large, x, transfer, grad, exact)
    # The relative scale error 1e-3, rounded once to x's dtype (the
    # output and x's gradient; 2^-8 relative at most for bfloat16) or to
    # float32 (the filter's gradient).
    rounding = 2.**-8 if dtype == torch.bfloat16 else 1e-5
    assert errors['err_out'] == pytest.approx(1e-3, abs=rounding)
    assert errors['err_grad_x'] == pytest.approx(1e-3, abs=rounding)
    assert errors['err_grad_t'] == pytest.approx(1e-3, abs=1e-5)


@pytest.mark.parametrize('mode', ['infer', 'train'])
def test_published_step_recomputes_its_filter(mode, monkeypatch):
    """The published formulation is timed with ``decay ** k`` computed in
    every call (in training, differentiated to ``k``); the other
    implementations get the filter made once."""
    from mmvheat.analysis.published import published_transfer
    calls = []

    def counting_transfer(k):
        calls.append(k.requires_grad)
        return published_transfer(k)

    monkeypatch.setattr(harness, 'published_transfer', counting_transfer)
    x = torch.randn(2, 4, 6, 3)
    k = 2 * torch.rand(4, 6, 3)
    transfer = published_transfer(k)
    grad = torch.randn_like(x) if mode == 'train' else None
    fns = harness._filters(['reference'], CPU, None)
    for name, fn in fns.items():
        step = harness._step(name, fn, x, transfer, k, grad)
        for _ in range(3):
            step()
    assert calls == [mode == 'train'] * 3


def test_stage_grid_is_the_models_own():
    """The stage shapes the report measures are those the stem and the
    downsampling convolutions of vHeat produce."""
    from mmvheat.models import VHeat
    model = VHeat(
        arch=dict(
            depths=[1, 1, 1, 1],
            dims=4,
            post_norm=False,
            layer_scale=None,
            mlp_ratio=1.),
        out_indices=(0, 1, 2, 3)).eval()
    for size in ((224, 224), (512, 512), (800, 1333), (40, 144)):
        with torch.no_grad():
            outs = model(torch.zeros(1, 3, *size))
        assert [tuple(o.shape[2:]) for o in outs
                ] == [harness.stage_grid(size, i) for i in range(4)], size
    assert harness.stage_grid((800, 1333), 0) == (200, 334)


def test_full_plan_covers_the_issue_s_shapes():
    """vHeat-T/S/B (stage widths 96-768 for T and S, 128-1024 for B, as
    published) at 224, 512 and 800 x 1333, every stage, batch 64, both
    dtypes and modes; the target shape is the 512 input's stage 1 map
    (C = 96, 128 x 128)."""
    plan = gpu_report.FULL_PLAN
    assert plan.op_archs == (('vheat-t/s', (96, 192, 384, 768)),
                             ('vheat-b', (128, 256, 512, 1024)))
    work = gpu_report.report_items(plan)
    ops = {args for kind, args in work if kind == 'op'}
    assert len(ops) == len(work) - 6 == 2 * 3 * 4 * 2 * 2
    shapes = {
        gpu_report.op_shape(plan, arch, size, stage)
        for arch, size, stage, _, _ in ops
    }
    # 800 x 1333: 200 x 334, 100 x 167, 50 x 84, 25 x 42.
    grids = {
        224: [56, 28, 14, 7],
        512: [128, 64, 32, 16],
        800: [(200, 334), (100, 167), (50, 84), (25, 42)]
    }
    expected = set()
    for c0 in (96, 128):
        for size, per_stage in grids.items():
            for stage, grid in enumerate(per_stage):
                h, w = grid if isinstance(grid, tuple) else (grid, grid)
                expected.add((64, h, w, c0 * 2**stage))
    assert shapes == expected
    arch, size, stage = plan.target_op
    assert gpu_report.op_shape(plan, arch, size, stage) == (64, 128, 128, 96)
    assert work[:2] == [('op', (arch, size, stage, 'bf16', mode))
                        for mode in ('infer', 'train')]
    assert {args
            for kind, args in work
            if kind == 'models'} == {(r, m)
                                     for r in (224, 512, 1024)
                                     for m in ('infer', 'train')}
    assert (plan.model_batch_size, plan.op_batch_size) == (64, 64)


def _ok(impl, ms, **kw):
    return dict(impl=impl, median_ms=ms, status='ok', **kw)


def _op(impls, mode='infer', dtype='bf16'):
    arch, size, stage = gpu_report.FULL_PLAN.target_op
    rows = []
    for row in impls:
        row.update(
            arch=arch, input=f'{size[0]}', stage=stage, dtype=dtype, mode=mode)
        rows.append(row)
    return rows


@pytest.mark.parametrize('speedup, result', [(5.0, 'PASS'), (4.9, 'FAIL')])
def test_targets_judge_the_measured_ratio(speedup, result):
    """The kernel's speed-up paired round by round, not the ratio of the
    medians (here 3)."""
    rows = _op([
        _ok('reference', 2., autotuned='tiled', speedup_vs_reference=2.),
        _ok('tiled',
            1.,
            vs_copy=2.5,
            bytes_per_elem=20,
            vs_own_bytes=1.5,
            gb_per_s=100.,
            autotuned='tiled',
            speedup_vs_published=speedup),
        _ok('published', 3.),
        _ok('copy', .4, gb_per_s=250., bytes_per_elem=4)
    ])
    targets = gpu_report.evaluate_targets(rows, [], gpu_report.FULL_PLAN)
    by_name = {t['target']: t for t in targets}
    kernel = by_name['HCO kernel vs published formulation, target shape '
                     '(bf16, infer, vheat-t/s 512 stage 0)']
    assert (kernel['ratio'], kernel['result']) == (speedup, result)
    assert kernel['detail'] == 'tiled 1 ms, published 3 ms'
    # Judged on the kernel's own bytes (20 per element, 5x a copy's): 1.5x
    # the time they take at the copy's bandwidth.
    copy = by_name['HCO kernel time vs its bytes moved at copy bandwidth '
                   '(bf16, infer, vheat-t/s 512 stage 0)']
    assert (copy['ratio'], copy['result']) == (1.5, 'PASS')
    assert copy['detail'].startswith('tiled moves 20 bytes per element, '
                                     'copy 4 ')
    # Training was not measured; nor were the models.
    assert {t['result'] for t in targets[2:]} - {'PASS'} == {'n/a'}


@pytest.mark.parametrize('choice_ms, result', [(1.05, 'PASS'), (1.2, 'FAIL')])
def test_targets_catch_a_slow_autotuned_choice(choice_ms, result):
    """The worst shape decides, here the inference one (in training the
    choices, fused forward and tiled backward, are twice as fast as the
    reference). The ``autotuned`` row is what the dispatcher runs, timed
    apart from the tuner; the tuner's own ratio is in the detail."""
    rows = _op([
        _ok('reference', 1., autotuned='tiled', tuner_ms=1.),
        _ok('tiled', 1., autotuned='tiled', tuner_ms=0.9),
        # Paired with the reference round by round: 1 / choice_ms (the
        # medians say 1, so the target takes the pairs).
        _ok('autotuned',
            1.,
            autotuned='tiled',
            tuner_ms=0.9,
            speedup_vs_reference=1 / choice_ms),
        _ok('published', 3.),
    ])
    train = [
        _ok('reference', 2., autotuned='fused/tiled', tuner_ms=2.),
        _ok('fused', 1.5, autotuned='fused/tiled', tuner_ms=1.5),
        _ok('autotuned',
            1.,
            autotuned='fused/tiled',
            tuner_ms=1.,
            speedup_vs_reference=2.),
    ]
    rows += _op(train, mode='train')
    target = gpu_report.evaluate_targets(rows, [], gpu_report.FULL_PLAN)[-1]
    assert target['target'].startswith('autotuned choice vs reference')
    assert (target['ratio'], target['result']) == (pytest.approx(choice_ms),
                                                   result)
    assert "tuner's own times at worst 0.9x" in target['detail']


def _model(name, res, mode, ms, **ratios):
    return dict(
        model=name,
        resolution=res,
        mode=mode,
        median_ms=ms,
        images_per_s=64e3 / ms,
        status='ok',
        **ratios)


def test_model_targets_compare_like_with_like():
    """Inference against the published inference mode (folded), training
    against the published training forward; Swin-T's throughput at the
    smallest and largest resolution, its peak memory at the largest. Each
    the row's own ratio (the speed-ups paired round by round), not one of
    the medians (all 10 ms here)."""
    rows = [
        _model(
            'vheat-t',
            224,
            'infer',
            10.,
            speedup_vs_published=1.2,
            speedup_vs_swin=1.6),
        _model('vheat-t-pub-fold', 224, 'infer', 10.),
        _model('vheat-t-pub', 224, 'infer', 10.),
        _model('swin-t', 224, 'infer', 10.),
        _model(
            'vheat-t',
            1024,
            'infer',
            10.,
            speedup_vs_published=1.4,
            speedup_vs_swin=2.9,
            mem_vs_swin=1000 / 3500),
        _model('vheat-t-pub-fold', 1024, 'infer', 10.),
        _model('swin-t', 1024, 'infer', 10.),
        _model('vheat-t', 224, 'train', 10., speedup_vs_published=1.5),
        _model('vheat-t-pub', 224, 'train', 10.),
    ]
    targets = gpu_report.evaluate_targets([], rows, gpu_report.FULL_PLAN)
    got = {
        t['target']: (t['ratio'], t['result'])
        for t in targets if t['result'] != 'n/a'
    }
    assert got == {
        'vHeat-T vs published formulation (infer, 224, vs '
        'vheat-t-pub-fold)': (pytest.approx(1.2), 'FAIL'),
        'vHeat-T vs published formulation (infer, 1024, vs '
        'vheat-t-pub-fold)': (pytest.approx(1.4), 'PASS'),
        'vHeat-T vs published formulation (train, 224, vs vheat-t-pub)':
        (pytest.approx(1.5), 'PASS'),
        'vHeat-T vs Swin-T throughput, smallest resolution (infer, 224)':
        (pytest.approx(1.6), 'PASS'),
        'vHeat-T vs Swin-T throughput, largest resolution (infer, 1024)':
        (pytest.approx(2.9), 'FAIL'),
        'vHeat-T vs Swin-T peak inference memory, largest resolution '
        '(infer, 1024)': (pytest.approx(1000 / 3500), 'PASS'),
    }


def test_model_speedups_vs_swin_are_paired(monkeypatch):
    """``speedup_vs_swin`` is the median of the rounds' ratios, and Swin-T's
    row comes last."""
    # Swin-T's median over vHeat-T's: 4 / 2; the pairs give 4, 1, 1.
    rounds = {'swin-t': [4., 4., 2.], 'vheat-t': [1., 4., 2.]}

    def fake_rounds(cands, *args, **kwargs):
        for cand in cands:
            cand.times = list(rounds.get(cand.name, [1., 1., 1.]))

    monkeypatch.setattr(harness, 'run_round_robin', fake_rounds)
    rows, _, _ = gpu_report._report_models(32, 'infer', CPU,
                                           gpu_report.QUICK_PLAN, True, None)
    assert [r['model'] for r in rows] == [
        'vheat-t', 'vheat-t-pub-fold', 'vheat-t-pub', 'vheat-t-plain', 'swin-t'
    ]
    assert rows[0]['speedup_vs_swin'] == 1  # 4, 1, 1
    assert rows[-1]['speedup_vs_swin'] == 1
    assert rows[1]['speedup_vs_swin'] == 4  # 4, 4, 2
    # The folded published form stays vHeat-T's published counterpart.
    assert rows[0]['speedup_vs_published'] == 1 / 2  # 1, 1/4, 1/2


def test_time_budget_stops_cleanly(tmp_path):
    """With no time left, every measurement is skipped with a note, and the
    files are still written (headers, targets n/a)."""
    result = gpu_report.run_report(
        str(tmp_path), CPU, quick=True, max_minutes=1e-6)
    assert result['op_rows'] == [] and result['model_rows'] == []
    assert [n for n in result['notes'] if n.startswith('time budget')] == [
        'time budget (1e-06 min): 8 operator shapes skipped',
        'time budget (1e-06 min): 4 model runs skipped'
    ]
    assert {t['result'] for t in result['targets']} == {'n/a'}
    assert len(_read(tmp_path / 'gpu_report_ops.csv')) == 1


def test_report_without_mmpretrain_or_matplotlib(tmp_path, monkeypatch):
    """Without mmpretrain the models run without Swin-T (its targets n/a,
    a note says why); without matplotlib the figure is skipped with a note.
    The operator is replaced by a canned row here: the quick report above
    runs it."""
    for name in ('mmpretrain', 'mmpretrain.models', 'matplotlib'):
        monkeypatch.setitem(sys.modules, name, None)

    def measure_hco(shape, dtype, mode, *args, **kwargs):
        return [dict(impl='reference', median_ms=1., status='ok')]

    monkeypatch.setattr(harness, 'measure_hco', measure_hco)
    result = gpu_report.run_report(str(tmp_path), CPU, quick=True)
    notes = result['notes']
    assert any(
        n.startswith('Swin-T skipped: mmpretrain cannot be imported')
        for n in notes), notes
    assert any(
        n.startswith('figure skipped: matplotlib cannot be imported')
        for n in notes), notes
    assert 'figure' not in result['files']
    assert not (tmp_path / 'gpu_report.png').exists()
    models = {r['model'] for r in result['model_rows']}
    assert models == {
        'vheat-t', 'vheat-t-pub', 'vheat-t-pub-fold', 'vheat-t-plain'
    }
    assert all(r['status'] == 'ok' for r in result['model_rows'])
    swin = [t for t in result['targets'] if 'Swin-T' in t['target']]
    assert len(swin) == 3
    assert all(
        t['result'] == 'n/a' and t['detail'].endswith(' vs not measured')
        for t in swin), swin
    published = [
        t for t in result['targets']
        if t['target'].startswith('vHeat-T vs published')
    ]
    assert len(published) == 4 and all(t['result'] in ('PASS', 'FAIL')
                                       for t in published)


@pytest.mark.parametrize('argv, status, message', [
    (['--device', 'cpu'], 2, '--device cpu needs --quick'),
    (['--device', 'cpu', '--quick', '--max-minutes', '0'
      ], 2, '--max-minutes must be positive'),
])
def test_cli_refuses_bad_options_in_one_line(tmp_path, capsys, argv, status,
                                             message):
    assert analysis_tool('gpu_report').main(
        argv + ['--out-dir', str(tmp_path)]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and message in err[0]


def test_cli_refuses_an_unwritable_out_dir_before_any_work(
        tmp_path, capsys, monkeypatch):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    tool = analysis_tool('gpu_report')
    monkeypatch.setattr(tool, 'run_report', None)  # never reached
    assert tool.main(
        ['--device', 'cpu', '--quick', '--out-dir',
         str(blocker / 'out')]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f'error: cannot write --out-dir {blocker}/out: {blocker} is not a '
        'directory'
    ]


def test_cli_without_cuda_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert analysis_tool('gpu_report').main(['--out-dir', str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '--device cpu --quick' in err


def test_device_script_passes_its_arguments_to_the_report(tmp_path):
    """``gpu_report.sh run OUT ARGS`` runs the report's command line with
    ARGS, from the repository root, with python3 (here a stand-in for the
    GPU machine's, and no wheels to install); the command line's own
    refusal shows the arguments arrived."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    python3 = bin_dir / 'python3'
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f'{bin_dir}:{os.environ["PATH"]}',
        WHEEL_DIR=str(tmp_path / 'no_wheels'))
    script = osp.join(ROOT, 'tools', 'analysis_tools', 'gpu_report.sh')
    proc = subprocess.run(
        ['bash', script, 'run',
         str(tmp_path / 'out'), '--device', 'cpu'],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'no wheels in' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: --device cpu needs --quick')
    usage = subprocess.run(['bash', script],
                           capture_output=True,
                           text=True,
                           timeout=60)
    assert usage.returncode == 2 and 'gpu_report.sh fetch' in usage.stderr
