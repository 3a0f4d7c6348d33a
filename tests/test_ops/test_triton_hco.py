# Copyright (c) mmvheat contributors. All rights reserved.
"""Tests of the Triton spectral filter (``mmvheat.ops.triton_hco``) and of
the backend dispatcher (``mmvheat.ops.dispatch``).

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set
per test: the kernel module wraps its kernels with ``triton.jit`` lazily, once
per interpreter setting, so the variable can change inside the process). The
interpreter is slow, so shapes are tiny. ``TestOnGPU`` runs larger shapes
compiled, and is skipped without CUDA.

Tolerances (error measured when written in brackets):

* float32: max abs error <= 1e-5 * max |reference| (<= 7e-7 up to 256x256).
* bfloat16 / float16 outputs: within rounding of the exact float32 result of
  the same (rounded) input plus ``1e-5 * max |y32|``: half an ulp
  (``2^-11 |y32|`` for fp16, ``2^-8 |y32|`` for bf16 on a GPU), what
  round-to-nearest allows -- except bf16 in Triton's interpreter, which
  truncates fp32 -> bf16 casts (triton 3.9 ``cast_impl`` passes no rounding
  mode) where GPUs round to nearest: one ulp (``2^-7 |y32|``) there. Against
  the reference (which also rounds once) at most one ulp.
* grad of ``transfer`` (float32 whatever x's dtype): 1e-5 relative to max.
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap
import time

import pytest
import torch

pytest.importorskip('triton')

from mmvheat.ops import dispatch, triton_hco  # noqa: E402
from mmvheat.ops.heat_conduction import (heat_conduction,  # noqa: E402
                                         heat_transfer, spectral_filter,
                                         spectral_filter_reference)

ENV = dispatch.HCO_BACKEND_ENV
FP32_RTOL = 1e-5
# Half an ulp (relative) of round-to-nearest.
HALF_ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# What the kernels' fp32 -> half casts achieve in the interpreter: the
# interpreter truncates to bfloat16 (a whole ulp) and rounds to float16.
INTERPRETER_ROUNDING = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-11}

# Fused path (slab on chip, padded grids up to 32x32): 1x1, 1xn, odd,
# square, non-square, C not a multiple of the channel block (BC = 8 at
# 16x16, 2 at 32x32).
FUSED_SHAPES = [(1, 1, 1, 3), (2, 1, 5, 3), (1, 3, 7, 5), (2, 8, 8, 17),
                (1, 16, 12, 6), (1, 17, 30, 3)]
# Tiled path (three kernels, for larger grids; forced on small ones too);
# 16 channels per program, so C = 17 needs two blocks.
TILED_SHAPES = [(1, 1, 1, 3), (2, 3, 7, 5), (1, 16, 12, 17), (1, 33, 40, 3)]
PATH_SHAPES = [('fused', s) for s in FUSED_SHAPES] + \
    [('tiled', s) for s in TILED_SHAPES]


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interpret(monkeypatch):
    """Run the kernels in Triton's interpreter, whatever the caller's env."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    monkeypatch.delenv(ENV, raising=False)


def _data(shape, dtype=torch.float32, seed=0):
    b, h, w, c = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    # A realistic filter: decay ** k with k in [0, 2).
    transfer = heat_transfer(2 * torch.rand((h, w, c), generator=gen))
    grad = torch.randn(shape, generator=gen).to(dtype)
    return x, transfer, grad


def _assert_fp32_close(actual, expected, what, rtol=FP32_RTOL):
    assert actual.shape == expected.shape, (what, actual.shape)
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * max(scale, 1e-30), \
        f'{what}: max abs error {err:.3g} > {rtol} * {scale:.3g}'


def _assert_rounded(actual, exact, what, rounding):
    """``actual`` (bf16/fp16) is ``exact`` (fp32) rounded: relative error
    at most ``rounding[dtype]``, plus ``1e-5 * max |exact|``."""
    assert actual.dtype in rounding and exact.dtype != actual.dtype
    rel = rounding[actual.dtype]
    tol = rel * exact.abs() + FP32_RTOL * exact.abs().max()
    err = (actual.double() - exact.double()).abs()
    assert (err <= tol).all(), \
        f'{what}: {(err > tol).sum()} elements off by more than {rel:.3g}'


def _grads(fn, x, transfer, grad):
    x = x.detach().clone().requires_grad_()
    transfer = transfer.detach().clone().requires_grad_()
    y = fn(x, transfer)
    gx, gt = torch.autograd.grad(y, (x, transfer), grad)
    return y, gx, gt


# ---------------------------------------------------------------------------
# Kernels against the reference, in the interpreter
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('path,shape', PATH_SHAPES)
def test_forward_and_grads_fp32(interpret, path, shape):
    x, transfer, grad = _data(shape)
    y, gx, gt = _grads(
        lambda a, t: triton_hco.spectral_filter_triton(a, t, path=path), x,
        transfer, grad)
    ry, rgx, rgt = _grads(spectral_filter_reference, x, transfer, grad)
    assert y.dtype == gx.dtype == gt.dtype == torch.float32
    _assert_fp32_close(y, ry, f'{path} {shape} forward')
    _assert_fp32_close(gx, rgx, f'{path} {shape} grad x')
    _assert_fp32_close(gt, rgt, f'{path} {shape} grad transfer')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('path,shape', [('fused', (2, 3, 7, 5)),
                                        ('fused', (1, 16, 12, 6)),
                                        ('tiled', (2, 3, 7, 5))])
def test_forward_and_grads_half(interpret, dtype, path, shape):
    x, transfer, grad = _data(shape, dtype)
    y, gx, gt = _grads(
        lambda a, t: triton_hco.spectral_filter_triton(a, t, path=path), x,
        transfer, grad)
    assert y.dtype == gx.dtype == dtype and gt.dtype == torch.float32
    # Exact float32 results for the same (already rounded) inputs.
    y32, gx32, gt32 = _grads(spectral_filter_reference, x.float(), transfer,
                             grad.float())
    _assert_rounded(y, y32, f'{dtype} forward', INTERPRETER_ROUNDING)
    _assert_rounded(gx, gx32, f'{dtype} grad x', INTERPRETER_ROUNDING)
    _assert_fp32_close(gt, gt32, f'{dtype} grad transfer')
    # The reference itself also rounds once: at most one ulp apart.
    ry, rgx, _ = _grads(spectral_filter_reference, x, transfer, grad)
    ulp = 2 * HALF_ULP[dtype]
    for a, b, what in [(y, ry, 'forward'), (gx, rgx, 'grad x')]:
        err = (a.double() - b.double()).abs()
        assert (err <= ulp * b.double().abs() + 1e-5).all(), what


@pytest.mark.parametrize('path', ['fused', 'tiled'])
def test_grad_of_one_input_only(interpret, path):
    x, transfer, grad = _data((2, 5, 6, 3))
    _, rgx, rgt = _grads(spectral_filter_reference, x, transfer, grad)
    t = transfer.clone().requires_grad_()
    y = triton_hco.spectral_filter_triton(x, t, path=path)
    (gt, ) = torch.autograd.grad(y, t, grad)
    _assert_fp32_close(gt, rgt, 'grad transfer only')
    xr = x.clone().requires_grad_()
    y = triton_hco.spectral_filter_triton(xr, transfer, path=path)
    (gx, ) = torch.autograd.grad(y, xr, grad)
    _assert_fp32_close(gx, rgx, 'grad x only')


@pytest.mark.parametrize('target', [1, 2])
def test_grad_transfer_batch_chunks(interpret, monkeypatch, target):
    """grad_T summed over batch chunks: one chunk of 5, or chunks of 3 + 2."""
    monkeypatch.setattr(triton_hco, '_TARGET_PROGRAMS', target)
    x, transfer, grad = _data((5, 7, 9, 3))
    _, gx, gt = _grads(triton_hco.spectral_filter_triton, x, transfer, grad)
    _, rgx, rgt = _grads(spectral_filter_reference, x, transfer, grad)
    _assert_fp32_close(gx, rgx, 'grad x')
    _assert_fp32_close(gt, rgt, 'grad transfer')


def test_leading_dims_and_noncontiguous(interpret):
    x, transfer, _ = _data((6, 5, 4, 3))
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    for xi in (x[0], x.reshape(2, 3, 5, 4, 3), strided):
        _assert_fp32_close(
            triton_hco.spectral_filter_triton(xi, transfer),
            spectral_filter_reference(xi, transfer), str(xi.shape))
    # A float64 transfer is used in float32; its gradient comes back float64.
    t64 = transfer.double().requires_grad_()
    triton_hco.spectral_filter_triton(x, t64).sum().backward()
    assert t64.grad.dtype == torch.float64


def test_kernel_rejects_bad_inputs(interpret):
    x, transfer, _ = _data((1, 4, 5, 2))
    with pytest.raises(ValueError, match='does not match'):
        triton_hco.spectral_filter_triton(x, transfer[:, :4])
    with pytest.raises(ValueError, match='Triton HCO kernel takes'):
        triton_hco.spectral_filter_triton(x.double(), transfer)
    big = torch.zeros(1, 257, 2, 1)
    with pytest.raises(ValueError, match='Triton HCO kernel takes'):
        triton_hco.spectral_filter_triton(big, torch.ones(257, 2, 1))
    with pytest.raises(ValueError, match='fused path'):
        triton_hco.spectral_filter_triton(
            torch.zeros(1, 65, 65, 1), torch.ones(65, 65, 1), path='fused')


def test_cpu_tensor_needs_interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    x, transfer, _ = _data((1, 4, 5, 2))
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        triton_hco.spectral_filter_triton(x, transfer)


# ---------------------------------------------------------------------------
# The dispatcher
# ---------------------------------------------------------------------------
@pytest.fixture
def count_kernel_calls(monkeypatch):
    calls = []
    original = triton_hco.spectral_filter_triton

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_hco, 'spectral_filter_triton', counted)
    return calls


def test_dispatch_default_on_cpu_is_reference(monkeypatch,
                                              count_kernel_calls):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    x, transfer, _ = _data((1, 4, 5, 2))
    assert dispatch.hco_backend(x) == 'torch'
    assert torch.equal(
        spectral_filter(x, transfer), spectral_filter_reference(x, transfer))
    for value in ('', 'auto', ' AUTO '):
        monkeypatch.setenv(ENV, value)
        assert dispatch.hco_backend(x) == 'torch'
    assert not count_kernel_calls


def test_dispatch_forced_triton(interpret, monkeypatch, count_kernel_calls):
    x, transfer, _ = _data((2, 4, 5, 3))
    monkeypatch.setenv(ENV, 'triton')
    assert dispatch.hco_backend(x) == 'triton'
    y = spectral_filter(x, transfer)
    assert len(count_kernel_calls) == 1
    _assert_fp32_close(y, spectral_filter_reference(x, transfer), 'forced')
    # heat_conduction (the model's entry point) goes through it too.
    k = torch.rand(4, 5, 3)
    _assert_fp32_close(
        heat_conduction(x, k),
        spectral_filter_reference(x, heat_transfer(k)), 'heat_conduction')
    assert len(count_kernel_calls) == 2
    # Inputs outside the kernel's domain keep the reference.
    assert dispatch.hco_backend(x.double()) == 'torch'
    assert torch.equal(
        spectral_filter(x.double(), transfer.double()),
        spectral_filter_reference(x.double(), transfer.double()))
    assert dispatch.hco_backend(torch.zeros(1, 300, 2, 1)) == 'torch'
    assert dispatch.hco_backend(torch.zeros(0, 4, 5, 3)) == 'torch'
    assert len(count_kernel_calls) == 2
    # Forcing torch wins over everything.
    monkeypatch.setenv(ENV, 'Torch')
    assert dispatch.hco_backend(x) == 'torch'
    assert torch.equal(
        spectral_filter(x, transfer), spectral_filter_reference(x, transfer))
    assert len(count_kernel_calls) == 2


def test_dispatch_forced_triton_needs_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv(ENV, 'triton')
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    x, transfer, _ = _data((1, 4, 5, 2))
    with pytest.raises(RuntimeError, match=f'{ENV}=triton.*TRITON_INTERPRET'):
        dispatch.hco_backend(x)
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET'):
        spectral_filter(x, transfer)


def test_dispatch_invalid_value(monkeypatch):
    monkeypatch.setenv(ENV, 'cuda')
    x, transfer, _ = _data((1, 4, 5, 2))
    with pytest.raises(ValueError, match='auto, torch, triton'):
        dispatch.hco_backend(x)
    with pytest.raises(ValueError, match=ENV):
        spectral_filter(x, transfer)


def test_dispatch_without_triton(monkeypatch):
    monkeypatch.setattr(dispatch, '_triton_module', None)
    monkeypatch.setattr(dispatch, '_triton_error',
                        ImportError("No module named 'triton'"))
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    x, transfer, _ = _data((1, 4, 5, 2))
    assert not dispatch.triton_available()
    monkeypatch.delenv(ENV, raising=False)
    assert dispatch.hco_backend(x) == 'torch'
    assert torch.equal(
        spectral_filter(x, transfer), spectral_filter_reference(x, transfer))
    monkeypatch.setenv(ENV, 'triton')
    with pytest.raises(RuntimeError, match=f'{ENV}=triton.*cannot be'):
        spectral_filter(x, transfer)


_PROBE = textwrap.dedent('''
    """pytest plugin: count the Triton HCO launches of the session."""
    import os

    import mmvheat.ops.triton_hco as hco

    _calls = []
    _original = hco.spectral_filter_triton


    def _counted(*args, **kwargs):
        _calls.append(1)
        return _original(*args, **kwargs)


    hco.spectral_filter_triton = _counted


    def pytest_sessionfinish(session, exitstatus):
        with open(os.environ['HCO_PROBE_OUT'], 'w') as f:
            f.write(str(len(_calls)))
''')


def test_golden_fixtures_with_triton_backend(reference_dir, project_root,
                                             tmp_path):
    """``MMVHEAT_HCO_BACKEND=triton TRITON_INTERPRET=1``: the golden-fixture
    tests pass with every spectral filter run by the kernel (~25 s here)."""
    (tmp_path / 'hco_probe.py').write_text(_PROBE)
    out = tmp_path / 'calls.txt'
    env = dict(os.environ)
    env.update({
        ENV: 'triton',
        'TRITON_INTERPRET': '1',
        'HCO_PROBE_OUT': str(out),
        'OMP_NUM_THREADS': '1',
        'PYTHONPATH': os.pathsep.join(
            p for p in (str(tmp_path), project_root,
                        env.get('PYTHONPATH')) if p),
    })
    start = time.time()
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'hco_probe',
         '-p', 'no:cacheprovider',
         osp.join('tests', 'test_models', 'test_vheat_golden.py')],
        cwd=project_root, env=env, capture_output=True, text=True,
        timeout=600)
    elapsed = time.time() - start
    assert proc.returncode == 0, \
        f'golden tests failed on the Triton path ({elapsed:.0f} s):\n' \
        f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    assert 'skipped' not in proc.stdout.splitlines()[-1], proc.stdout
    assert int(out.read_text()) > 0, 'the kernel never ran'


# ---------------------------------------------------------------------------
# On a GPU, compiled
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
class TestOnGPU:

    @pytest.fixture(autouse=True)
    def _compiled(self, monkeypatch):
        monkeypatch.delenv('TRITON_INTERPRET', raising=False)
        monkeypatch.delenv(ENV, raising=False)

    # vHeat stages at 224 px (56 tiled; 28, 14, 7 fused), the fused limit
    # (32x32), a non-square tiled grid, 128x128 and the 256x256 maximum.
    SHAPES = [(4, 56, 56, 96), (4, 28, 28, 192), (8, 14, 14, 384),
              (8, 7, 7, 768), (2, 32, 32, 96), (2, 64, 96, 96),
              (2, 128, 128, 96), (1, 256, 256, 16), (3, 1, 200, 5)]

    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize('shape', SHAPES)
    def test_matches_reference(self, shape, dtype):
        x, transfer, grad = (t.cuda() for t in _data(shape, dtype))
        assert dispatch.hco_backend(x) == 'triton'
        y, gx, gt = _grads(spectral_filter, x, transfer, grad)
        assert y.dtype == gx.dtype == dtype
        # float64 reference on the same (rounded) inputs.
        y64, gx64, gt64 = _grads(spectral_filter_reference, x.double(),
                                 transfer.double(), grad.double())
        if dtype == torch.float32:
            _assert_fp32_close(y, y64, f'{shape} forward')
            _assert_fp32_close(gx, gx64, f'{shape} grad x')
        else:
            _assert_rounded(y, y64.float(), f'{shape} forward', HALF_ULP)
            _assert_rounded(gx, gx64.float(), f'{shape} grad x', HALF_ULP)
        # Summed over the batch: relative to the largest entry.
        _assert_fp32_close(gt, gt64, f'{shape} grad transfer', rtol=2e-5)

    def test_both_paths_agree(self):
        x, transfer, _ = (t.cuda() for t in _data((2, 20, 24, 70)))
        _assert_fp32_close(
            triton_hco.spectral_filter_triton(x, transfer, path='fused'),
            triton_hco.spectral_filter_triton(x, transfer, path='tiled'),
            'fused vs tiled')

    def test_forced_torch_on_cuda(self, monkeypatch):
        x, transfer, _ = (t.cuda() for t in _data((1, 8, 8, 4)))
        monkeypatch.setenv(ENV, 'torch')
        assert dispatch.hco_backend(x) == 'torch'
        assert torch.equal(
            spectral_filter(x, transfer),
            spectral_filter_reference(x, transfer))
