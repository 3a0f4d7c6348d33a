# Copyright (c) mmvheat contributors. All rights reserved.
"""Tests of the backend dispatcher (``mmvheat.ops.dispatch``): the backend
setting, the self-check of the kernels, the autotuned choice and its cache
file.

The CUDA branch is reached on CPU tensors through the stand-ins of
``conftest.py`` (``on_cuda``); results are compared with the exact filter
(scipy's DCT in float64) with the tolerances of ``test_triton_hco.py``: 1e-5
of the largest value for float32 outputs and gradients.
"""
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from mmvheat.ops import autotune_cache, dispatch, spectral_filter
from .conftest import GPU
from .exact_reference import (assert_close, exact_spectral_filter,
                              output_and_grads, random_inputs)

triton_hco = pytest.importorskip('mmvheat.ops.triton_hco')

ENV = dispatch.HCO_BACKEND_ENV
CACHE_ENV = dispatch.HCO_AUTOTUNE_CACHE_ENV
BOTH = 'backward(x,transfer)'


def _grads(x, transfer, grad):
    return output_and_grads(spectral_filter, x, transfer, grad)


def _assert_calls_exact(x, transfer, grad, n_calls=2):
    """``n_calls`` forward and backward calls, each equal to the exact
    filter."""
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    for _ in range(n_calls):
        y, gx, gt = _grads(x, transfer, grad)
        assert_close(y, ey, 'forward')
        assert_close(gx, egx, 'grad x')
        assert_close(gt, egt, 'grad transfer')


# ---------------------------------------------------------------------------
# The backend setting
# ---------------------------------------------------------------------------
def test_cpu_auto_is_the_reference_alone(monkeypatch, dispatcher, calls):
    """On CPU tensors ``auto`` runs the reference and nothing else: no
    Triton import, no timing, no self-check."""
    monkeypatch.delenv(ENV, raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError('no Triton, timing or check on CPU')

    monkeypatch.setattr(dispatch, '_load_triton_hco', forbidden)
    monkeypatch.setattr(dispatch, 'time_candidate', forbidden)
    monkeypatch.setattr(dispatch, 'gpu_name', forbidden)
    x, transfer, grad = random_inputs((2, 40, 6, 3))
    for value in ('', 'auto', ' AUTO '):
        monkeypatch.setenv(ENV, value)
        assert dispatch.hco_backend(x) == 'torch'
    y, gx, gt = _grads(x, transfer, grad)
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    assert_close(y, ey, 'forward')
    assert_close(gx, egx, 'grad x')
    assert_close(gt, egt, 'grad transfer')
    assert calls['reference'] == 1 and not calls['forward']


def test_forced_triton(interpret, monkeypatch, dispatcher, calls):
    """``triton``: the default path, no timing; off CUDA no self-check."""
    monkeypatch.setenv(ENV, 'triton')
    monkeypatch.setattr(dispatch, 'time_candidate', None)
    for shape, path in [((2, 4, 5, 3), 'fused'), ((1, 40, 3, 2), 'tiled')]:
        x, transfer, _ = random_inputs(shape)
        assert dispatch.hco_backend(x) == 'triton'
        assert_close(
            spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
            str(shape))
        assert calls['forward'][-1] == path
    assert calls['reference'] == 0
    # Inputs outside the kernels' domain keep the reference.
    x, transfer, _ = random_inputs((2, 4, 5, 3))
    assert dispatch.hco_backend(x.double()) == 'torch'
    assert_close(
        spectral_filter(x.double(), transfer.double()),
        exact_spectral_filter(x, transfer), 'float64')
    assert dispatch.hco_backend(x[:0]) == 'torch'
    assert spectral_filter(x[:0], transfer).shape == (0, 4, 5, 3)
    assert calls['reference'] == 2 and len(calls['forward']) == 2
    # Forcing torch wins over everything.
    monkeypatch.setenv(ENV, 'Torch')
    assert dispatch.hco_backend(x) == 'torch'
    spectral_filter(x, transfer)
    assert calls['reference'] == 3 and len(calls['forward']) == 2


def test_kernels_decide_the_interpreter_at_import(project_root):
    """Module-level ``@triton.jit`` kernels: a process that imported them
    without ``TRITON_INTERPRET=1`` has compiled-mode kernels, and a CPU
    tensor is refused with a message that says how to run it (a fresh
    interpreter, as the variable is read at import)."""
    code = ('import torch\n'
            'import triton\n'
            'from mmvheat.ops import dispatch, spectral_filter, triton_hco\n'
            'from mmvheat.ops.dispatch import spectral_filter_kernel\n'
            'kernel = triton_hco.KERNELS["hco_gemm_kernel"]\n'
            'assert isinstance(kernel, triton.runtime.JITFunction), kernel\n'
            'assert not triton_hco.triton_interpret_enabled()\n'
            'x, t = torch.zeros(1, 4, 5, 2), torch.ones(4, 5, 2)\n'
            'for call in (lambda: dispatch.hco_backend(x),\n'
            '             lambda: spectral_filter(x, t),\n'
            '             lambda: spectral_filter_kernel(x, t)):\n'
            '    try:\n'
            '        call()\n'
            '    except RuntimeError as e:\n'
            '        assert "TRITON_INTERPRET=1" in str(e), e\n'
            '    else:\n'
            '        raise AssertionError("a CPU tensor was launched")\n')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.update({ENV: 'triton', 'PYTHONPATH': project_root})
    proc = subprocess.run([sys.executable, '-c', code],
                          env=env,
                          capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_invalid_value(monkeypatch):
    monkeypatch.setenv(ENV, 'cuda')
    x, transfer, _ = random_inputs((1, 4, 5, 2))
    with pytest.raises(ValueError, match='auto, torch, triton'):
        dispatch.hco_backend(x)
    with pytest.raises(ValueError, match=ENV):
        spectral_filter(x, transfer)


def test_without_triton(on_cuda, monkeypatch, calls):
    monkeypatch.setattr(dispatch, '_triton_module', None)
    monkeypatch.setattr(dispatch, '_triton_error',
                        ImportError("No module named 'triton'"))
    x, transfer, _ = random_inputs((1, 4, 5, 2))
    assert not dispatch.triton_available()
    assert dispatch.hco_backend(x) == 'torch'
    assert_close(
        spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
        'auto')
    assert calls['reference'] == 1 and not on_cuda.calls
    monkeypatch.setenv(ENV, 'triton')
    with pytest.raises(RuntimeError, match=f'{ENV}=triton.*cannot be'):
        spectral_filter(x, transfer)


def test_tracing_takes_the_reference(on_cuda, monkeypatch, calls):
    """Under TorchScript, tracing, export or torch.compile, ``auto`` keeps
    to the traceable reference."""
    monkeypatch.setattr(dispatch, 'is_capturing_graph', lambda: True)
    x, transfer, _ = random_inputs((1, 4, 5, 2))
    assert dispatch.hco_backend(x) == 'torch'
    spectral_filter(x, transfer)
    assert calls['reference'] == 1 and not calls['forward']
    assert not on_cuda.calls


# ---------------------------------------------------------------------------
# Self-check
# ---------------------------------------------------------------------------
def _one_warning(log, *needles):
    warnings = log.messages(logging.WARNING)
    assert len(warnings) == 1, warnings
    for needle in needles:
        assert needle in warnings[0], (needle, warnings[0])


def test_self_check_passes_and_is_done_once(on_cuda, monkeypatch, calls, log):
    monkeypatch.setenv(ENV, 'triton')
    x, transfer, grad = random_inputs((3, 5, 6, 3))
    _assert_calls_exact(x, transfer, grad)
    # The reference ran for the first call's forward and backward checks
    # only; the kernels ran for both calls, and for the checks first.
    assert calls['reference'] == 2
    assert calls['forward'] == calls['backward'] == ['fused'] * 3
    assert not log.messages(logging.WARNING)


def test_kernel_that_raises(on_cuda, monkeypatch, calls, log):
    """One warning naming device, GPU, shape, dtype and error; the
    reference's result; the reference for that combination from then on."""
    monkeypatch.setenv(ENV, 'triton')

    def broken(x, transfer, path):
        calls['forward'].append(path)
        raise RuntimeError('an illegal memory access was encountered')

    monkeypatch.setattr(triton_hco, 'launch_forward', broken)
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    _assert_calls_exact(x, transfer, grad)
    assert calls['forward'] == ['fused']
    _one_warning(log, 'cpu', GPU, '(2, 5, 6, 3)', 'torch.float32',
                 'illegal memory access', 'fused path, forward')
    # Another dtype is another combination: checked afresh.
    spectral_filter(x.bfloat16(), transfer)
    assert calls['forward'] == ['fused', 'fused']
    assert len(log.messages(logging.WARNING)) == 2


@pytest.mark.parametrize('error,fails', [(0.5, False), (2.0, True)])
def test_kernel_with_wrong_values(on_cuda, monkeypatch, calls, log, error,
                                  fails):
    """A kernel off by ``error`` times the tolerance (of the largest value)
    passes below it and is replaced by the reference above it."""
    monkeypatch.setenv(ENV, 'triton')
    tol = dispatch.SELF_CHECK_RTOL[torch.float32]
    forward = triton_hco.launch_forward

    def off(x, transfer, path):
        y = forward(x, transfer, path)
        return y + error * tol * y.abs().max()

    monkeypatch.setattr(triton_hco, 'launch_forward', off)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    exact = exact_spectral_filter(x, transfer)
    y = spectral_filter(x, transfer)
    if fails:
        assert_close(y, exact, 'reference returned')
        _one_warning(log, 'max error 0.0002', 'tolerance 0.0001')
    else:
        assert_close(y, exact, 'kernel kept', rtol=tol)
        assert not log.messages(logging.WARNING)
    spectral_filter(x, transfer)
    assert calls['reference'] == (3 if fails else 1)


def test_kernel_with_non_finite_values(on_cuda, monkeypatch, log):
    monkeypatch.setenv(ENV, 'triton')
    forward = triton_hco.launch_forward

    def nan_in_corner(x, transfer, path):
        y = forward(x, transfer, path)
        y[0, 0, 0, 0] = math.nan
        return y

    monkeypatch.setattr(triton_hco, 'launch_forward', nan_in_corner)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    y = spectral_filter(x, transfer)
    assert torch.isfinite(y).all()
    _one_warning(log, 'max error inf')


def test_zero_map_proves_nothing(on_cuda, monkeypatch, calls, log):
    """A map whose reference is zero leaves the check to the next call."""
    monkeypatch.setenv(ENV, 'triton')
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    assert spectral_filter(torch.zeros_like(x), transfer).abs().max() == 0
    assert_close(
        spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
        'second call')
    spectral_filter(x, transfer)
    # Checked on the first two calls (a kernel run on the first images
    # each), not on the third.
    assert calls['reference'] == 2 and len(calls['forward']) == 5


@pytest.mark.parametrize('fault', ['raise', 'wrong'])
def test_backward_checked_separately(on_cuda, monkeypatch, calls, log, fault):
    """A faulty backward: the reference's gradients, a warning, and the
    kernel's forward kept."""
    monkeypatch.setenv(ENV, 'triton')
    backward = triton_hco.launch_backward

    def faulty(x, transfer, grad, need_gx, need_gt, path):
        if fault == 'raise':
            calls['backward'].append(path)
            raise RuntimeError('out of resources: shared memory')
        gx, gt = backward(x, transfer, grad, need_gx, need_gt, path)
        return gx, gt * 1.01

    monkeypatch.setattr(triton_hco, 'launch_backward', faulty)
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    _assert_calls_exact(x, transfer, grad)
    assert calls['forward'] == ['fused'] * 3
    assert calls['backward'] == ['fused']
    _one_warning(log, 'backward(x,transfer)', GPU,
                 'out of resources' if fault == 'raise' else 'max error')
    # The reference's gradients come back in the dtypes autograd expects.
    xb = x.bfloat16().requires_grad_()
    tr = transfer.clone().requires_grad_()
    gx, gt = torch.autograd.grad(
        spectral_filter(xb, tr), (xb, tr), grad.bfloat16())
    assert gx.dtype == torch.bfloat16 and gt.dtype == torch.float32
    assert len(log.messages(logging.WARNING)) == 2


def test_half_precision_check(on_cuda, monkeypatch, calls, log):
    """bfloat16: the kernel's once-rounded result passes the two-ulp check
    (in the interpreter, which truncates, too)."""
    monkeypatch.setenv(ENV, 'triton')
    x, transfer, grad = random_inputs((2, 5, 6, 3), torch.bfloat16)
    for path in ('fused', 'tiled'):
        y = dispatch.hco_dispatcher.run(path, x, transfer)
        assert y.dtype == torch.bfloat16
    assert not log.messages(logging.WARNING)
    assert calls['reference'] == 2


def test_cuda_graph_capture_defers_the_check(on_cuda, monkeypatch, calls):
    """While a CUDA graph is captured nothing may synchronise: an unchecked
    kernel is not run, the reference is."""
    monkeypatch.setenv(ENV, 'triton')
    monkeypatch.setattr(dispatch, '_cuda_graph_capturing', lambda x: True)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    spectral_filter(x, transfer)
    assert calls['reference'] == 1 and not calls['forward']


# ---------------------------------------------------------------------------
# Autotuning
# ---------------------------------------------------------------------------
def test_autotune_keeps_the_fastest(on_cuda, calls, log):
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    with torch.no_grad():
        assert_close(spectral_filter(x, transfer), ey, 'first call')
        assert_close(spectral_filter(x, transfer), ey, 'second call')
    assert on_cuda.calls == ['reference', 'fused', 'tiled']
    decision = dispatch.hco_dispatcher.decision(x)
    assert decision == ('tiled', {
        'reference': 3.0,
        'fused': 2.0,
        'tiled': 1.0
    }, 'timed')
    debug = [m for m in log.messages(logging.DEBUG) if 'autotune' in m]
    assert debug == [
        'HCO autotune on cpu: 8x8x3/float32/forward -> tiled '
        '(reference 3 ms, fused 2 ms, tiled 1 ms; timed)'
    ]
    # The forward's decision serves training too; the backward is tuned in
    # the backward pass, per set of gradients.
    backward_runs = len(calls['backward'])
    y, gx, gt = _grads(x, transfer, grad)
    assert on_cuda.calls[3:] == ['reference', 'fused', 'tiled']
    assert len(calls['backward']) > backward_runs
    assert_close(y, ey, 'forward')
    assert_close(gx, egx, 'grad x')
    assert_close(gt, egt, 'grad transfer')
    assert dispatch.hco_dispatcher.decision(x, BOTH).choice == 'tiled'
    assert calls['forward'][-1] == calls['backward'][-1] == 'tiled'
    assert not log.messages(logging.WARNING)


@pytest.mark.parametrize('times,choice', [
    ({
        'reference': 1.0,
        'fused': 2.0,
        'tiled': 3.0
    }, 'reference'),
    ({
        'reference': 2.0,
        'fused': 1.0,
        'tiled': 3.0
    }, 'fused'),
    ({
        'reference': 1.0,
        'fused': 1.0,
        'tiled': 1.0
    }, 'reference'),
])
def test_autotune_never_slower_than_the_reference(on_cuda, calls, times,
                                                  choice):
    on_cuda.times = times
    x, transfer, _ = random_inputs((1, 5, 6, 3))
    spectral_filter(x, transfer)
    decision = dispatch.hco_dispatcher.decision(x)
    assert decision.choice == choice
    assert times[choice] <= times['reference']


def test_buckets(on_cuda):
    """H and W round up to 8; C, dtype and direction make their own
    buckets; grids without a fused path time two candidates."""
    transfer_of = {}

    def run(shape, dtype=torch.float32):
        x, transfer, _ = random_inputs(shape, dtype)
        transfer_of[shape] = transfer
        with torch.no_grad():
            spectral_filter(x, transfer)
        return len(on_cuda.calls)

    assert run((1, 33, 40, 2)) == 2  # reference, tiled
    assert run((1, 39, 34, 2)) == 2  # same bucket: (40, 40)
    assert run((1, 41, 40, 2)) == 4
    assert run((1, 33, 40, 3)) == 6
    assert run((1, 33, 40, 2), torch.bfloat16) == 8
    assert dispatch.bucket_key(torch.zeros(1, 33, 40, 2), BOTH) == \
        (40, 40, 2, 'float32', BOTH)
    # Rounding keeps the fused path's domain: 32 stays 32, 33 becomes 40.
    for n in range(1, 100):
        rounded = dispatch.BUCKET_STEP * math.ceil(n / dispatch.BUCKET_STEP)
        assert triton_hco.kernel_paths(n, 1) == \
            triton_hco.kernel_paths(rounded, 1)


def test_failed_kernel_is_not_a_candidate(on_cuda, monkeypatch, log):
    """A kernel that fails its self-check while being timed is dropped,
    however fast; the bucket keeps the fastest of the others."""
    forward = triton_hco.launch_forward

    def tiled_broken(x, transfer, path):
        if path == 'tiled':
            raise RuntimeError('PTX JIT compilation failed')
        return forward(x, transfer, path)

    monkeypatch.setattr(triton_hco, 'launch_forward', tiled_broken)
    x, transfer, _ = random_inputs((1, 5, 6, 3))
    assert_close(
        spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
        'result')
    decision = dispatch.hco_dispatcher.decision(x)
    assert decision.choice == 'fused'
    assert set(decision.times_ms) == {'reference', 'fused'}
    _one_warning(log, 'tiled path, forward', 'PTX JIT')


def test_decision_retuned_when_its_kernel_fails_later(on_cuda, monkeypatch,
                                                      log):
    """A decision for a kernel whose check fails (e.g. read from a cache
    file made with a good kernel) is timed again without it."""
    x, transfer, _ = random_inputs((1, 5, 6, 3))
    dispatch.hco_dispatcher._decisions[(
        x.device,
        dispatch.bucket_key(x))] = dispatch.Decision('tiled', {
            'reference': 3.0,
            'tiled': 1.0
        }, 'cache')

    def broken(x, transfer, path):
        raise RuntimeError('no kernel image is available')

    monkeypatch.setattr(triton_hco, 'launch_forward', broken)
    assert_close(
        spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
        'fallback')
    assert_close(
        spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
        'retuned')
    assert dispatch.hco_dispatcher.decision(x).choice == 'reference'
    assert on_cuda.calls == ['reference']


def test_measure_and_tune_for_a_report(on_cuda):
    x, transfer, _ = random_inputs((1, 40, 6, 3))
    assert dispatch.hco_dispatcher.candidates(x) == ('reference', 'tiled')
    assert dispatch.hco_dispatcher.candidates(x.double()) == ('reference', )
    times = dispatch.hco_dispatcher.measure(x, transfer, BOTH)
    assert times == {'reference': 3.0, 'tiled': 1.0}
    assert dispatch.hco_dispatcher.decision(x, BOTH) is None
    decision = dispatch.hco_dispatcher.tune(x, transfer, BOTH)
    assert decision.choice == 'tiled'
    assert dispatch.hco_dispatcher.tune(x, transfer, BOTH) == decision
    assert len(on_cuda.calls) == 4


def test_real_timer_runs_and_times(monkeypatch):
    """The CUDA-event timer, with events that count instead of timing."""
    clock = []

    class Event:

        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.t = len(clock)

        def elapsed_time(self, other):
            return float(other.t - self.t)

    monkeypatch.setattr(torch.cuda, 'Event', Event)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda: None)
    steps = [3, 1, 2]

    def step():
        clock.extend([0] * steps.pop(0))

    assert dispatch.time_candidate('tiled', step, 3) == 2.0
    assert not steps


# ---------------------------------------------------------------------------
# The cache file
# ---------------------------------------------------------------------------
def _table():
    return (f'{GPU} | torch {torch.__version__} | triton '
            f'{pytest.importorskip("triton").__version__}')


def test_cache_file_written_and_reused(on_cuda, monkeypatch, tmp_path, log):
    path = tmp_path / 'sub' / 'hco.json'
    monkeypatch.setenv(CACHE_ENV, str(path))
    x, transfer, _ = random_inputs((1, 5, 6, 3))
    with torch.no_grad():
        spectral_filter(x, transfer)
    data = json.loads(path.read_text())
    assert data['format'] == 'mmvheat-hco-autotune-v1'
    entry = data['tables'][_table()]['8x8x3/float32/forward']
    assert entry == {'choice': 'tiled', 'times_ms': on_cuda.times}
    assert [p.name for p in path.parent.iterdir()] == ['hco.json']
    # A new process (a reset dispatcher) takes the decision from the file.
    dispatch.hco_dispatcher.reset()
    with torch.no_grad():
        spectral_filter(x, transfer)
    assert len(on_cuda.calls) == 3
    decision = dispatch.hco_dispatcher.decision(x)
    assert decision.source == 'cache' and decision.choice == 'tiled'
    assert sum('cache)' in m for m in log.messages(logging.DEBUG)) == 1
    # Another GPU's table is not used, and is kept when the file is written.
    dispatch.hco_dispatcher.reset()
    monkeypatch.setattr(dispatch, 'gpu_name', lambda device: 'Other GPU')
    with torch.no_grad():
        spectral_filter(x, transfer)
    assert len(on_cuda.calls) == 6
    tables = json.loads(path.read_text())['tables']
    assert sorted(tables) == sorted(
        [_table(), _table().replace(GPU, 'Other GPU')])
    assert not log.messages(logging.WARNING)


@pytest.mark.parametrize('content', [
    b'{"format": "mmvheat-hco-autotune-v1", "tables": {"a": ',
    b'\xff\xfe not text',
    b'{"model": "resnet50", "lr": 0.1}',
    b'[1, 2, 3]',
])
def test_foreign_or_corrupt_cache_file(on_cuda, monkeypatch, tmp_path, log,
                                       content):
    """Ignored with one warning, and never overwritten."""
    path = tmp_path / 'hco.json'
    path.write_bytes(content)
    monkeypatch.setenv(CACHE_ENV, str(path))
    for shape in [(1, 5, 6, 3), (1, 40, 6, 3)]:
        x, transfer, _ = random_inputs(shape)
        with torch.no_grad():
            assert_close(
                spectral_filter(x, transfer),
                exact_spectral_filter(x, transfer), 'result')
    assert len(on_cuda.calls) == 5
    assert path.read_bytes() == content
    _one_warning(log, str(path), 'ignored', 'left untouched')
    assert [p.name for p in tmp_path.iterdir()] == ['hco.json']


def test_cache_entries_checked(on_cuda, monkeypatch, tmp_path):
    """Entries that are not a choice among timed candidates are ignored."""
    path = tmp_path / 'hco.json'
    path.write_text(
        json.dumps({
            'format': 'mmvheat-hco-autotune-v1',
            'tables': {
                _table(): {
                    '8x8x3/float32/forward': {
                        'choice': 'magic',
                        'times_ms': {}
                    },
                    '40x8x3/float32/forward': {
                        'choice': 'fused',
                        'times_ms': {
                            'fused': 0.1
                        }
                    },
                }
            }
        }))
    monkeypatch.setenv(CACHE_ENV, str(path))
    for shape in [(1, 5, 6, 3), (1, 40, 6, 3)]:
        x, transfer, _ = random_inputs(shape)
        with torch.no_grad():
            spectral_filter(x, transfer)
    # Both timed: the first entry is malformed, the second names a path
    # that does not take a 40 x 6 grid.
    assert on_cuda.calls == [
        'reference', 'fused', 'tiled', 'reference', 'tiled'
    ]


def test_unwritable_cache_file(on_cuda, monkeypatch, tmp_path, log):
    path = tmp_path / 'hco.json'
    monkeypatch.setenv(CACHE_ENV, str(path))

    def full_disk(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(autotune_cache.json, 'dump', full_disk)
    x, transfer, _ = random_inputs((1, 5, 6, 3))
    with torch.no_grad():
        spectral_filter(x, transfer)
    assert dispatch.hco_dispatcher.decision(x).choice == 'tiled'
    assert list(tmp_path.iterdir()) == []
    _one_warning(log, 'cannot be written', 'No space left')


# ---------------------------------------------------------------------------
# On a GPU: real timings, real self-checks
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('shape', [(8, 14, 14, 96), (2, 56, 56, 96),
                                   (2, 200, 334, 96)])
def test_autotune_on_cuda(monkeypatch, dispatcher, log, shape):
    monkeypatch.delenv(ENV, raising=False)
    x, transfer, grad = (t.cuda() for t in random_inputs(shape))
    ey, egx, egt = exact_spectral_filter(x.cpu(), transfer.cpu(), grad.cpu())
    y, gx, gt = _grads(x, transfer, grad)
    assert_close(y.cpu(), ey, 'forward')
    assert_close(gx.cpu(), egx, 'grad x')
    # Summed over the batch: relative to the largest entry.
    assert_close(gt.cpu(), egt, 'grad transfer', rtol=2e-5)
    decision = dispatcher.decision(x, BOTH)
    assert set(decision.times_ms) == set(dispatcher.candidates(x))
    assert decision.times_ms[decision.choice] <= \
        decision.times_ms['reference']
    assert not log.messages(logging.WARNING)


def test_kernel_path_saves_no_more_than_reference(interpret):
    """The operator behind the GPU kernels keeps one map and the filter for
    its backward pass, as the reference path does (which keeps the cached
    DCT bases besides)."""
    from mmvheat.analysis.saved_tensors import saved_bytes
    x = torch.randn(2, 8, 6, 16, requires_grad=True)
    transfer = torch.rand(8, 6, 16, requires_grad=True)
    kernel = saved_bytes(
        lambda x, t: dispatch.spectral_filter_kernel(x * 1, t), x, transfer)
    reference = saved_bytes(
        lambda x, t: dispatch.spectral_filter_reference(x * 1, t), x, transfer)
    assert kernel == 4 * (x.numel() + transfer.numel())
    assert kernel <= reference - 4 * (8 * 8 + 6 * 6)
