# Copyright (c) mmvheat contributors. All rights reserved.
"""FLOP counting of the HCO (``mmvheat.analysis.flops``), the benchmark
harness (``mmvheat.analysis.benchmark``) and its command line
(``tools/analysis_tools/benchmark.py``), on a CPU with tiny settings."""
import csv
import math
import os.path as osp
import shutil
import statistics
import sys
import time

import pytest
import torch
from test_tools.tiny_runs import run_cmd
from torch import nn

import mmvheat  # noqa: F401
from mmvheat.analysis import benchmark
from mmvheat.analysis.flops import hco_macs, model_complexity
from mmvheat.models import VHeat
from mmvheat.ops import spectral_filter
from . import analysis_tool

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
CPU = torch.device('cpu')

tool = analysis_tool('benchmark')


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
    res = analysis_tool('get_flops').get_flops(
        osp.join(ROOT, 'configs/vheat/vheat-tiny_16xb128_in1k.py'))
    # Paper: 4.6G (MACs) and 29M; published checkpoint: 30.08M backbone +
    # 0.77M head. Per image: 4.588G; the batch-independent decay**k
    # prediction (sum of H*W*C*C over blocks) adds 0.347G per forward.
    assert res['flops_per_image'] == pytest.approx(4.6e9, rel=0.02)
    assert res['flops_shared'] == pytest.approx(0.347e9, rel=0.01)
    assert res['backbone_params'] == pytest.approx(30.08e6, rel=0.002)
    assert res['params'] == pytest.approx(30.08e6 + 0.769e6, rel=0.002)


VHEAT_T_FORMS = ['vheat-t', 'vheat-t-plain', 'vheat-t-pub', 'vheat-t-pub-fold']


def test_benchmark_models_cpu_tiny(tmp_path):
    lines = []
    rows, notes = benchmark.benchmark_models(
        torch.device('cpu'),
        VHEAT_T_FORMS,
        resolutions=[64],
        batch_size=1,
        mode='infer',
        repeats=1,
        warmup=0,
        progress=lines.append)
    assert notes == []
    assert [r['model'] for r in rows] == VHEAT_T_FORMS
    for row in rows:
        assert row['status'] == 'ok'
        for col in ('median_ms', 'images_per_s', 'gflops_per_image',
                    'params_m', 'speedup_vs_baseline'):
            assert row[col] > 0, col
    # One progress line for the one configuration, naming every model.
    assert len(lines) == 1 and lines[0].startswith('[1/1] models 64 infer:')
    assert all(f'{name} ' in lines[0] for name in VHEAT_T_FORMS)
    # The published dataflow runs the same weights: same FLOPs and params.
    assert len({r['gflops_per_image'] for r in rows}) == 1
    assert len({r['params_m'] for r in rows}) == 1
    # The filters decay ** k are predicted at every forward only by the
    # forms that do not fold (at 64, the pretraining size here).
    shared = {r['model']: r['gflops_shared'] for r in rows}
    assert shared['vheat-t'] == shared['vheat-t-pub-fold'] == 0
    assert shared['vheat-t-plain'] == shared['vheat-t-pub'] > 0
    # Like with like: deployed / folded published, plain / recomputed.
    ms = {r['model']: r['median_ms'] for r in rows}
    vs_pub = {r['model']: r['speedup_vs_published'] for r in rows}
    assert vs_pub['vheat-t'] == ms['vheat-t-pub-fold'] / ms['vheat-t']
    assert vs_pub['vheat-t-plain'] == ms['vheat-t-pub'] / ms['vheat-t-plain']
    assert math.isnan(vs_pub['vheat-t-pub'])
    path = str(tmp_path / 'models.csv')
    benchmark.write_csv(path, rows, tool.MODEL_COLUMNS)
    with open(path) as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == tool.MODEL_COLUMNS
    # Measured on the CPU too (a process per row), against the first model.
    peaks = {r['model']: r['peak_mem_mb'] for r in rows}
    assert all(peak > 0 for peak in peaks.values()), peaks
    assert [r['mem_vs_baseline'] for r in rows
            ] == [peaks[r['model']] / peaks['vheat-t'] for r in rows]
    assert float(written[0]['peak_mem_mb']) == peaks['vheat-t']
    assert written[2]['speedup_vs_published'] == ''  # no counterpart
    assert benchmark.write_figure(rows,
                                  str(tmp_path / 'benchmark.png')) is None
    assert (tmp_path / 'benchmark.png').stat().st_size > 1000
    table = benchmark.format_table(rows[:2], ['model', 'status'], 'title')
    assert table.splitlines()[2:] == [
        'model         | status', '--------------+-------',
        'vheat-t       | ok    ', 'vheat-t-plain | ok    '
    ]


def _timed_at_32(models, mode: str, repeats: int = 1):
    """``benchmark_models`` on the CPU at 32, batch 1, times only."""
    return benchmark.benchmark_models(
        torch.device('cpu'),
        models,
        resolutions=[32],
        batch_size=1,
        mode=mode,
        repeats=repeats,
        warmup=0,
        flops=False,
        cpu_memory=False)


def test_benchmark_models_trains_only_the_training_forms():
    rows, notes = _timed_at_32(VHEAT_T_FORMS, 'both')
    assert [(r['model'], r['mode']) for r in rows
            ] == [(name, 'infer')
                  for name in VHEAT_T_FORMS] + [('vheat-t', 'train'),
                                                ('vheat-t-pub', 'train')]
    assert notes == [
        'vheat-t-plain, vheat-t-pub-fold: inference forms, not timed in '
        'training'
    ]
    train = {r['model']: r for r in rows if r['mode'] == 'train'}
    assert train['vheat-t']['speedup_vs_published'] == (
        train['vheat-t-pub']['median_ms'] / train['vheat-t']['median_ms'])


def test_paired_speedup_takes_each_rounds_ratio():
    """The median of the rounds' ratios, not the ratio of the medians: a
    machine twice as slow in one round moves both sides of that round."""
    baseline, times = [1., 10., 3.], [2., 20., 1.]
    assert benchmark.paired_speedup(baseline, times) == 0.5
    assert statistics.median(baseline) / statistics.median(times) == 1.5
    assert math.isnan(benchmark.paired_speedup([], times))


def test_models_speedups_are_paired(monkeypatch):
    """``speedup_vs_baseline`` and ``speedup_vs_published`` of the models
    pair the rounds (:func:`paired_speedup`)."""
    # The ratios of the medians: 2 / 3 for the plain form against the
    # published dataflow, 4 / 2 for the deployed against the folded one.
    rounds = {
        'vheat-t': [1., 4., 2.],
        'vheat-t-plain': [3., 8., 1.],
        'vheat-t-pub': [6., 2., 2.],
        'vheat-t-pub-fold': [4., 4., 2.]
    }

    def fake_rounds(cands, *args, **kwargs):
        for cand in cands:
            cand.times = list(rounds[cand.name])

    monkeypatch.setattr(benchmark, 'run_round_robin', fake_rounds)
    rows, _ = _timed_at_32(list(rounds), 'infer', repeats=3)
    got = {r['model']: r for r in rows}
    assert got['vheat-t-plain']['speedup_vs_baseline'] == 1 / 2
    assert got['vheat-t']['speedup_vs_published'] == 1  # 4, 1, 1
    assert got['vheat-t-plain']['speedup_vs_published'] == 2  # 2, 1/4, 2
    assert got['vheat-t']['median_ms'] == 2e3


def test_operator_speedups_are_paired(monkeypatch):
    """``measure_hco``'s ``speedup_vs_published`` and
    ``speedup_vs_reference`` pair the rounds too."""
    # The ratios of the medians: 5 / 2 and 2 / 5.
    rounds = {'reference': [1., 2., 4.], 'published': [2., 6., 5.]}

    def fake_rounds(cands, *args, **kwargs):
        for cand in cands:
            cand.times = list(rounds.get(cand.name, [1., 1., 1.]))

    monkeypatch.setattr(benchmark, 'run_round_robin', fake_rounds)
    rows = benchmark.measure_hco((1, 4, 4, 2),
                                 'fp32',
                                 'infer',
                                 torch.device('cpu'),
                                 repeats=3,
                                 kernels=False)
    got = {r['impl']: r for r in rows}
    assert got['reference']['speedup_vs_published'] == 2  # 2, 3, 5/4
    assert got['published']['speedup_vs_reference'] == 1 / 2  # 1/2, 1/3, 4/5
    assert got['reference']['speedup_vs_reference'] == 1
    assert got['reference']['median_ms'] == 2e3


class _Allocates(nn.Module):
    """A classifier whose forward holds ``count`` tensors of ``nbytes``
    (written, so resident) beside its tiny computation, and whose first
    call caches ``cached`` bytes. Built, it keeps ``count`` tensors of
    ``nbytes`` and frees twice as many allocated between them, after a
    free of 8 MiB (past which glibc, by default, keeps smaller blocks in
    its heap)."""

    def __init__(self, count: int, nbytes: int, cached: int = 0):
        super().__init__()
        self.head = nn.Linear(3, 1000)
        self.count, self.numel, self.cached = count, nbytes // 4, cached // 4
        del self._tensors(1, 2 << 20)[0]
        self.kept = [self._tensors(3)[1] for _ in range(count)]
        self.cache = None

    def _tensors(self, count, numel=None):
        return [torch.ones(numel or self.numel) for _ in range(count)]

    def forward(self, x):
        held = self._tensors(self.count)
        if self.cache is None:
            self.cache = torch.ones(self.cached)
        return self.head(x.mean((2, 3))) + sum(t[-1] for t in held)


def allocates(count, nbytes, cached=0):
    return _Allocates(count, nbytes, cached)


def _peak_mb(mode, count=0, nbytes=0, cached=0):
    return benchmark.measure_memory(
        f'{__name__}:allocates',
        dict(count=count, nbytes=nbytes, cached=cached),
        name='allocates',
        mode=mode,
        batch_size=1,
        res=8) / 2**20


def test_memory_shows_a_known_extra_tensor():
    """The CPU peak, measured in a process of its own above the built model,
    grows by what the forward holds: one 64 MiB tensor (in inference and in
    a training step), or 64 of 1 MiB where the model, built, left 64 holes
    of 1 MiB between the tensors it keeps; and by what the first call
    creates and keeps (32 MiB)."""
    none = {mode: _peak_mb(mode) for mode in ('infer', 'train')}
    # Tolerance 1 MiB: the pages of the tensors' headers, and what the tiny
    # model's backward holds where the forward held the tensor.
    for mode in ('infer', 'train'):
        assert _peak_mb(mode, 1, 64 << 20) - none[mode] == \
            pytest.approx(64, abs=1), mode
    # Were the freed holes not given back, the forward would fill them.
    assert _peak_mb('infer', 64, 1 << 20) - none['infer'] == \
        pytest.approx(64, abs=1)
    assert _peak_mb('infer', cached=32 << 20) - none['infer'] == \
        pytest.approx(32, abs=1)


def test_allocated_peak_counts_what_is_held_at_once():
    """The allocator's peak above the call's start: 4 + 2 MB held at once,
    then 8 + 2 MB after the first is freed, is 10 MB exactly; a tensor
    held from before the call is not counted."""
    held = torch.empty(1 << 20)

    def calls():
        first, second = torch.empty(10**6), torch.empty(5 * 10**5)
        del first
        third = torch.empty(2 * 10**6)
        return second, third, held

    assert benchmark.cpu_allocated_peak(calls) == 10**7
    assert benchmark.cpu_allocated_peak(held.clone) == held.nbytes


@pytest.mark.parametrize('name, expected', [
    ('vheat-b-pub-fold', ('vheat-b', '-pub-fold')),
    ('vheat-s-plain', ('vheat-s', '-plain')),
    ('vheat-t-pub', ('vheat-t', '-pub')),
    ('swin-t', ('swin-t', '')),
])
def test_split_model_name(name, expected):
    assert benchmark.split_model_name(name) == expected
    assert name in benchmark.MODEL_NAMES


def test_unknown_model_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown model 'swin-t-pub'"):
        benchmark.benchmark_models(
            torch.device('cpu'), ['vheat-t', 'swin-t-pub'], resolutions=[32])


def test_published_forms_without_a_checkout_fail_before_any_work():
    with pytest.raises(ValueError, match='vheat-t-published needs a checkout'):
        benchmark.benchmark_models(
            torch.device('cpu'), ['vheat-t', 'vheat-t-published'],
            resolutions=[32])
    with pytest.raises(ValueError, match='vheat-t-published-fold needs a'):
        benchmark.build_classifier('vheat-t-published-fold', 32)


def _same_weights(forms):
    """The forms' classifiers, all with the weights of the first."""
    torch.manual_seed(0)
    models = {name: benchmark.build_classifier(name, 64) for name in forms}
    state = models[forms[0]].state_dict()
    for name, model in models.items():
        prefix = 'backbone.vheat.' if '-pub' in name else 'backbone.'
        model.load_state_dict({
            k.replace('backbone.', prefix, 1): v
            for k, v in state.items()
        })
        model.eval()
    benchmark.switch_to_deploy(models['vheat-t'])
    return models


@pytest.mark.parametrize('size', [64, 96])
def test_every_form_computes_the_same_function(size):
    """What the benchmark times computes one function: our model plain and
    deployed, the published dataflow and its inference mode, at the
    pretraining size (64, where the inference mode folds) and another (96,
    where it resamples the embeddings as the published dense backbone
    does)."""
    models = _same_weights(VHEAT_T_FORMS)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = models['vheat-t-pub'](x)
        for name in ('vheat-t', 'vheat-t-plain', 'vheat-t-pub-fold'):
            # float32 round-off of two dataflows (1e-6 relative) through 12
            # blocks; a wrong filter or a missing block changes the logits
            # by 1e-2 and more.
            torch.testing.assert_close(
                models[name](x), reference, atol=1e-4, rtol=1e-4, msg=name)


def _count_to_k_calls(model):
    calls = []
    for module in model.modules():
        if module.__class__.__name__ == 'HeatConduction2d':
            module.to_k.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_published_infer_mode_folds_only_at_the_pretraining_size():
    """``decay ** k`` (``to_k`` of the embeddings) is predicted once per
    block in the published inference mode at the pretraining size, and at
    every forward elsewhere and without it."""
    blocks = sum(VHeat.parse_arch('tiny')['depths'])
    models = _same_weights(['vheat-t', 'vheat-t-pub', 'vheat-t-pub-fold'])
    folded = _count_to_k_calls(models['vheat-t-pub-fold'])
    recomputed = _count_to_k_calls(models['vheat-t-pub'])
    with torch.no_grad():
        for _ in range(3):
            models['vheat-t-pub-fold'](torch.randn(1, 3, 64, 64))
            models['vheat-t-pub'](torch.randn(1, 3, 64, 64))
        assert len(folded) == blocks  # folded at the first forward
        assert len(recomputed) == 3 * blocks
        models['vheat-t-pub-fold'](torch.randn(1, 3, 96, 96))
        assert len(folded) == 2 * blocks


def test_benchmark_ops_cpu_tiny():
    rows, exps, notes = tool.benchmark_ops(
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
    assert all(set(r) <= set(tool.OP_COLUMNS) for r in rows)
    found = {(e['impl'], e['stage']) for e in exps}
    assert ('reference', 3) in found and ('published',
                                          'all (x depth)') in found
    # float32: the two implementations agree with the exact result.
    assert all(r['max_rel_err'] < 1e-5 for r in ok)


@pytest.mark.parametrize('dtype, low, high', [('bf16', 1e-3, 2e-2),
                                              ('fp16', 1e-4, 2e-3)])
def test_benchmark_reports_half_precision_error(dtype, low, high):
    rows, _, _ = tool.benchmark_ops(
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
    assert tool.fit_exponent(ns, [n**1.5 for n in ns]) == \
        pytest.approx(1.5)


def test_benchmark_cli_progress_on_stderr_only(tmp_path, capsys):
    """One progress line per measured configuration on stderr; the tables
    on stdout; nothing but data in the CSV files."""
    out = tmp_path / 'bench'
    status = analysis_tool('benchmark').main([
        '--device', 'cpu', '--models', 'vheat-t', 'vheat-t-pub',
        '--resolutions', '32', '64', '--batch-size', '1', '--mode', 'infer',
        '--repeats', '1', '--warmup', '0', '--op-resolutions', '64',
        '--op-stages', '2', '3', '--no-flops', '--out-dir',
        str(out)
    ])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    progress = [
        line for line in captured.err.splitlines() if line.startswith('[')
    ]
    assert [line.split(':')[0] for line in progress] == [
        '[1/2] op 64 stage 2 infer', '[2/2] op 64 stage 3 infer',
        '[1/2] models 32 infer', '[2/2] models 64 infer'
    ]
    assert not any(line.startswith('[') for line in captured.out.splitlines())
    assert 'models (batch 1' in captured.out
    # header + 2 configurations x (2 models | reference, published and a
    # skipped triton row)
    for name, columns, count in (('benchmark_models', tool.MODEL_COLUMNS, 5),
                                 ('benchmark_ops', tool.OP_COLUMNS, 7)):
        with open(out / f'{name}.csv') as f:
            lines = f.read().splitlines()
        assert lines[0] == ','.join(columns)
        assert len(lines) == count
        assert all(len(line.split(',')) == len(columns) for line in lines[1:])


def test_benchmark_cli_reports_errors_in_one_line(tmp_path, capsys,
                                                  monkeypatch):
    """Bad input ends in one line before any measurement."""
    blocker = tmp_path / 'file'
    blocker.write_text('')
    tool = analysis_tool('benchmark')
    monkeypatch.setattr(benchmark, 'benchmark_models', None)  # never reached
    monkeypatch.setattr(tool, 'benchmark_ops', None)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cases = [
        (['--out-dir', str(blocker / 'out')], 1,
         f'error: cannot write --out-dir {blocker}/out: {blocker} is not a '
         'directory'),
        (['--device', 'cuda'], 1, 'error: --device cuda: no CUDA device '
         'here; use --device cpu'),
        (['--device', 'cuda:x'], 2, "error: --device 'cuda:x': not a device "
         '(cpu, cuda, cuda:1, ...)'),
    ]
    for argv, status, message in cases:
        assert tool.main(
            ['--device', 'cpu', '--out-dir',
             str(tmp_path / 'out')] + argv) == status
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [message], argv
    for option in ('--batch-size', '--repeats', '--resolutions'):
        with pytest.raises(SystemExit) as exit_:
            tool.main([option, '0'])
        assert exit_.value.code == 2
        assert 'must be at least 1, got 0' in capsys.readouterr().err


def test_round_robin_samples_deadline_and_failures(monkeypatch):
    """A sample is as many calls as last ``min_sample_s`` (by the timer),
    no round starts after the deadline once every candidate has a sample,
    and a candidate that runs out of memory stops alone."""
    calls = {'short': 0, 'long': 0}
    per_call = {'short': 4e-4, 'long': 2e-3}

    def fake_time_calls(fn, count, device):
        name = fn()
        calls[name] += count
        return per_call[name]

    monkeypatch.setattr(benchmark, '_time_calls', fake_time_calls)

    def oom():
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to '
                                          'allocate 20.00 GiB')

    def candidates():
        return [
            benchmark.Candidate('short', lambda: 'short'),
            benchmark.Candidate('long', lambda: 'long'),
            benchmark.Candidate('oom', oom)
        ]

    cands = candidates()
    benchmark.run_round_robin(cands, 4, 0, CPU, min_sample_s=1e-3)
    assert [c.inner for c in cands] == [3, 1, 1]  # ceil(1e-3 / 4e-4) = 3
    assert [len(c.times) for c in cands] == [4, 4, 0]
    assert calls == {'short': 1 + 4 * 3, 'long': 1 + 4 * 1}
    assert [c.status for c in cands] == ['ok', 'ok', 'OOM']
    cands = candidates()
    benchmark.run_round_robin(cands, 4, 0, CPU, deadline=time.monotonic() - 1)
    assert [len(c.times) for c in cands] == [1, 1, 0]


# -- the published classifier from a checkout --------------------------------
CHECKOUT = osp.join(osp.dirname(__file__), 'published_checkout')
CHECKOUT_FORMS = ['vheat-t-published', 'vheat-t-published-fold']


@pytest.fixture
def checkout(tmp_path):
    """A stand-in checkout of the published repository (its ``calls.log``
    says when it is imported and ``infer_init`` called)."""
    repo = tmp_path / 'vHeat'
    shutil.copytree(CHECKOUT, repo)
    return repo


def _calls(repo):
    log = repo / 'calls.log'
    return log.read_text().splitlines() if log.exists() else []


def test_stand_in_checkout_computes_the_published_function(
        checkout, reference_dir):
    """The stand-in is the published classifier: the published weights of
    the golden cases give the published logits."""
    from mmvheat.analysis.published_repo import import_published_vheat
    golden = torch.load(
        osp.join(reference_dir, 'vheat_golden.pt'), weights_only=True)
    published = import_published_vheat(str(checkout))
    for case in ('pre_norm', 'post_norm_layer_scale'):
        arch = golden[case]['arch']
        model = published(
            num_classes=10,
            depths=arch['depths'],
            dims=arch['dims'],
            post_norm=arch['post_norm'],
            layer_scale=arch.get('layer_scale'),
            img_size=golden[case]['img_size']).eval()
        model.load_state_dict(golden[case]['state_dict'], strict=True)
        with torch.no_grad():
            logits = model(golden[case]['input'])
        # float32 round-off of the two implementations (logits of order 1).
        torch.testing.assert_close(
            logits, golden[case]['logits'], atol=1e-5, rtol=1e-5, msg=case)


def test_checkout_forms_have_our_weights(checkout):
    """Built from the checkout with the weights of our form of the same
    name: the same logits, ``infer_init`` called for the inference mode, the
    file imported once, from the checkout, under a private name."""
    models = {}
    for name in ['vheat-t'] + CHECKOUT_FORMS:
        torch.manual_seed(0)
        models[name] = benchmark.build_classifier(
            name, 32, published_repo=str(checkout)).eval()
    assert type(models['vheat-t-published']).__module__.startswith(
        '_mmvheat_published_')
    assert _calls(checkout) == [
        f'imported {type(models["vheat-t-published"]).__module__}',
        'infer_init'
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = models['vheat-t'](x)
        for name in CHECKOUT_FORMS:
            # float32 round-off of two implementations through 12 blocks; a
            # weight left at its initial value changes the logits by 1e-2
            # and more.
            torch.testing.assert_close(
                models[name](x), reference, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize('name, mode, checkout, expected', [
    ('vheat-t', 'infer', False, 'vheat-t-pub-fold'),
    ('vheat-t', 'infer', True, 'vheat-t-published-fold'),
    ('vheat-s', 'train', True, 'vheat-s-published'),
    ('vheat-t-plain', 'infer', True, 'vheat-t-published'),
    ('vheat-b-pub-fold', 'infer', True, 'vheat-b-published-fold'),
    ('vheat-t-pub', 'train', True, 'vheat-t-published'),
    ('vheat-t-pub', 'infer', False, None),
    ('vheat-t-published', 'infer', True, None),
    ('swin-t', 'infer', True, None),
])
def test_published_counterpart(name, mode, checkout, expected):
    assert benchmark.published_counterpart(name, mode, checkout) == expected


def test_benchmark_cli_times_the_checkout(checkout, tmp_path):
    """As a user runs it: the checkout's rows beside the replays, each
    ``speedup_vs_published`` against the checkout's like form."""
    forms = VHEAT_T_FORMS + CHECKOUT_FORMS
    out = tmp_path / 'out'
    run_cmd([
        sys.executable, 'tools/analysis_tools/benchmark.py', '--device', 'cpu',
        '--model-only', '--published-repo',
        str(checkout), '--models', *forms, '--resolutions', '32',
        '--batch-size', '1', '--mode', 'infer', '--repeats', '1', '--warmup',
        '0', '--no-flops', '--no-memory', '--out-dir',
        str(out)
    ], ROOT)
    assert [line.split()[0]
            for line in _calls(checkout)] == ['imported', 'infer_init']
    with open(out / 'benchmark_models.csv') as f:
        rows = {r['model']: r for r in csv.DictReader(f)}
    assert list(rows) == forms
    assert all(r['status'] == 'ok' for r in rows.values())
    ms = {name: float(r['median_ms']) for name, r in rows.items()}
    assert all(t > 0 for t in ms.values())
    vs_pub = {
        name: r['speedup_vs_published']
        for name, r in rows.items() if r['speedup_vs_published']
    }
    assert vs_pub.keys() == set(VHEAT_T_FORMS)
    for name, counterpart in [('vheat-t', 'vheat-t-published-fold'),
                              ('vheat-t-pub-fold', 'vheat-t-published-fold'),
                              ('vheat-t-plain', 'vheat-t-published'),
                              ('vheat-t-pub', 'vheat-t-published')]:
        assert float(vs_pub[name]) == pytest.approx(
            ms[counterpart] / ms[name], rel=1e-6), name


def test_benchmark_cli_checkout_errors_in_one_line(tmp_path, capsys,
                                                   monkeypatch):
    """A directory without the model file is refused by the parser; one whose
    model file cannot be imported ends in one line naming it, before any
    measurement; the checkout's forms need it."""
    tool = analysis_tool('benchmark')
    monkeypatch.setattr(benchmark, 'benchmark_models', None)  # never reached
    argv = ['--device', 'cpu', '--model-only', '--out-dir', str(tmp_path)]
    for extra, message in [
        (['--published-repo',
          str(tmp_path), '--models', 'vheat-t-published'],
         f"argument --published-repo: '{tmp_path}' is no checkout of the "
         'published vHeat (no classification/models/vHeat.py in it)'),
        (['--models', 'vheat-t', 'vheat-t-published-fold'],
         'vheat-t-published-fold need --published-repo'),
    ]:
        with pytest.raises(SystemExit) as exit_:
            tool.main(argv + extra)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(message)
    models = tmp_path / 'classification' / 'models'
    models.mkdir(parents=True)
    (models / 'vHeat.py').write_text('import timm\n')
    modules, path = set(sys.modules), list(sys.path)
    assert tool.main(argv + [
        '--published-repo',
        str(tmp_path), '--models', 'vheat-t', 'vheat-t-published'
    ]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f'error: --published-repo {tmp_path}: cannot import '
        'classification/models/vHeat.py: ModuleNotFoundError: No module '
        "named 'timm'"
    ]
    # Nothing of the failed import is left behind.
    assert sys.path == path
    assert not [
        m for m in set(sys.modules) - modules
        if m.startswith('_mmvheat_published_')
    ]
