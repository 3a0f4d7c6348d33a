# Copyright (c) mmvheat contributors. All rights reserved.
"""Tests of the Triton spectral filter (``mmvheat.ops.triton_hco``).

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set
for the session by ``tests/conftest.py`` before the kernels are imported).
The interpreter is slow, so batches and channel counts are tiny; grids go
beyond 256 on each axis. ``TestOnGPU`` runs larger shapes compiled, and is
skipped without CUDA. The kernels are run through
:func:`~mmvheat.ops.dispatch.spectral_filter_kernel`: one path, with its
gradients, no self-check or fallback.

Every result is compared with the exact filter: scipy's orthonormal DCT in
float64 on the same (for half dtypes: already rounded) inputs. Tolerances,
relative to the largest exact value:

* float32 outputs and all ``grad_transfer`` (float32 whatever x's dtype):
  1e-5. The kernels accumulate in float32; four chained transforms of
  length <= 334 lose ~3e-7 here (measured on every shape below), so 1e-5 is
  a 30x margin that any wrong index, basis row or transfer entry (errors of
  1e-2 and more) exceeds by orders of magnitude.
* bfloat16 / float16 outputs: the float32 result rounded once, so each
  element is within rounding of the exact value plus the float32 error
  above: half an ulp (``2^-8 |y|`` for bf16, ``2^-11 |y|`` for fp16) on a
  GPU, which rounds to nearest; in Triton's interpreter, which truncates
  fp32 -> bf16 casts (triton 3.9 ``cast_impl`` passes no rounding mode), a
  whole bf16 ulp, ``2^-7 |y|``.
"""
import os
import os.path as osp
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmvheat.ops import dct_basis
from mmvheat.ops.dispatch import spectral_filter_kernel
from .exact_reference import (FP32_RTOL, assert_close, exact_spectral_filter,
                              output_and_grads, random_inputs)

triton_hco = pytest.importorskip('mmvheat.ops.triton_hco')

ENV = 'MMVHEAT_HCO_BACKEND'
# Half an ulp (relative) of round-to-nearest.
HALF_ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# What the kernels' fp32 -> half casts achieve in the interpreter: it
# truncates to bfloat16 (a whole ulp) and rounds to float16.
INTERPRETER_ROUNDING = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-11}

# Fused path (slab on chip, padded sides 16 or 32): 1x1, 1xn, odd, square,
# non-square, C not a multiple of the channel block (BC = 8 at 16x16, 4 at
# 16x32, 2 at 32x32), and each padded size.
FUSED_SHAPES = [(1, 1, 1, 3), (2, 1, 5, 3), (1, 3, 7, 5), (2, 8, 8, 17),
                (1, 16, 12, 6), (1, 17, 30, 3), (2, 20, 9, 3)]
# Tiled path (GEMMs along H, the row kernel or GEMMs along W; any grid;
# forced on small grids too): each GEMM tile along H (length <= 16, <= 32,
# more), each padded row of the row kernel (16 to 128; channels in blocks
# that straddle the end, both gradients in one pass up to 64, two above),
# rows longer than it takes (two GEMMs along W), column tiles that straddle
# images and image rows, one-pixel sides, and grids above 256 on each axis
# (stage 1 of an 800 x 1333 detection input is 200 x 334).
TILED_SHAPES = [(1, 1, 1, 3), (2, 3, 7, 5), (1, 16, 12, 17), (2, 33, 40, 3),
                (2, 70, 1, 3), (1, 1, 90, 2), (2, 3, 100, 20), (1, 300, 7, 2),
                (1, 5, 260, 2), (1, 200, 334, 1)]
PATH_SHAPES = [('fused', s) for s in FUSED_SHAPES] + \
    [('tiled', s) for s in TILED_SHAPES]


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_rounded(actual, exact, what, rounding):
    """``actual`` (bf16/fp16) is ``exact`` rounded: elementwise error at most
    ``rounding[dtype] * |exact|`` plus ``1e-5 * max |exact|``."""
    assert actual.dtype in rounding
    rel = rounding[actual.dtype]
    exact = exact.double()
    tol = rel * exact.abs() + FP32_RTOL * exact.abs().max()
    err = (actual.double() - exact).abs()
    assert (err <= tol).all(), \
        f'{what}: {(err > tol).sum()} elements off by more than {rel:.3g}'


# ---------------------------------------------------------------------------
# Kernels against the exact filter, in the interpreter
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('path,shape', PATH_SHAPES)
def test_forward_and_grads_fp32(interpret, path, shape):
    x, transfer, grad = random_inputs(shape)
    y, gx, gt = output_and_grads(
        lambda a, t: spectral_filter_kernel(a, t, path=path), x, transfer,
        grad)
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    assert y.dtype == gx.dtype == gt.dtype == torch.float32
    assert_close(y, ey, f'{path} {shape} forward')
    assert_close(gx, egx, f'{path} {shape} grad x')
    assert_close(gt, egt, f'{path} {shape} grad transfer')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('path,shape', [('fused', (2, 3, 7, 5)),
                                        ('fused', (1, 16, 12, 6)),
                                        ('tiled', (2, 3, 7, 5)),
                                        ('tiled', (1, 5, 260, 2))])
def test_forward_and_grads_half(interpret, dtype, path, shape):
    x, transfer, grad = random_inputs(shape, dtype)
    y, gx, gt = output_and_grads(
        lambda a, t: spectral_filter_kernel(a, t, path=path), x, transfer,
        grad)
    assert y.dtype == gx.dtype == dtype and gt.dtype == torch.float32
    # Exact results for the same (already rounded) inputs.
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    _assert_rounded(y, ey, f'{dtype} forward', INTERPRETER_ROUNDING)
    _assert_rounded(gx, egx, f'{dtype} grad x', INTERPRETER_ROUNDING)
    assert_close(gt, egt, f'{dtype} grad transfer')


@pytest.mark.parametrize('path', ['fused', 'tiled'])
def test_grad_of_one_input_only(interpret, path):
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    _, egx, egt = exact_spectral_filter(x, transfer, grad)
    t = transfer.clone().requires_grad_()
    y = spectral_filter_kernel(x, t, path=path)
    (gt, ) = torch.autograd.grad(y, t, grad)
    assert_close(gt, egt, 'grad transfer only')
    xr = x.clone().requires_grad_()
    y = spectral_filter_kernel(xr, transfer, path=path)
    (gx, ) = torch.autograd.grad(y, xr, grad)
    assert_close(gx, egx, 'grad x only')


@pytest.mark.parametrize('target', [1, 2])
def test_grad_transfer_batch_chunks(interpret, monkeypatch, target):
    """grad_T summed over batch chunks: one chunk of 5, or chunks of 3 + 2."""
    monkeypatch.setattr(triton_hco, '_TARGET_PROGRAMS', target)
    x, transfer, grad = random_inputs((5, 7, 9, 3))
    _, gx, gt = output_and_grads(spectral_filter_kernel, x, transfer, grad)
    _, egx, egt = exact_spectral_filter(x, transfer, grad)
    assert_close(gx, egx, 'grad x')
    assert_close(gt, egt, 'grad transfer')


def test_leading_dims_and_noncontiguous(interpret):
    x, transfer, _ = random_inputs((6, 5, 4, 3))
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    for xi in (x[0], x.reshape(2, 3, 5, 4, 3), strided):
        for path in ('fused', 'tiled'):
            assert_close(
                spectral_filter_kernel(xi, transfer, path),
                exact_spectral_filter(xi, transfer), f'{path} {xi.shape}')
    # A float64 transfer is used in float32; its gradient comes back float64.
    t64 = transfer.double().requires_grad_()
    spectral_filter_kernel(x, t64).sum().backward()
    assert t64.grad.dtype == torch.float64


def test_paths_by_grid_size():
    """Fused for padded sides of 16 or 32, tiled for every grid."""
    assert triton_hco.kernel_paths(1, 1) == ('fused', 'tiled')
    assert triton_hco.kernel_paths(32, 17) == ('fused', 'tiled')
    assert triton_hco.kernel_paths(33, 2) == ('tiled', )
    assert triton_hco.kernel_paths(2, 1000) == ('tiled', )
    assert triton_hco.default_path(32, 32) == 'fused'
    assert triton_hco.default_path(56, 56) == 'tiled'


def test_kernel_rejects_bad_inputs(interpret):
    x, transfer, _ = random_inputs((1, 4, 5, 2))
    with pytest.raises(ValueError, match='does not match'):
        spectral_filter_kernel(x, transfer[:, :4])
    with pytest.raises(ValueError, match='Triton HCO kernel takes'):
        spectral_filter_kernel(x.double(), transfer)
    with pytest.raises(ValueError, match='Triton HCO kernel takes'):
        spectral_filter_kernel(x[:0], transfer)
    with pytest.raises(ValueError, match='path must be one of'):
        spectral_filter_kernel(
            torch.zeros(1, 33, 8, 1), torch.ones(33, 8, 1), path='fused')
    with pytest.raises(ValueError, match='path must be one of'):
        spectral_filter_kernel(x, transfer, path='tile')


class _RecordedKernel:
    """Stands in for a jitted kernel: records what each launch compiles
    (argument types, constexprs, warps) and runs the kernel."""

    def __init__(self, name, kernel, launched):
        self.name, self.kernel, self.launched = name, kernel, launched

    def __getitem__(self, grid):

        def run(*args, num_warps, **constexprs):
            names = [name for name, _ in triton_hco._KERNEL_ARGS[self.name]]
            pointers = frozenset(
                (name, '*' + triton_hco._TRITON_DTYPES[arg.dtype])
                for name, arg in zip(names, args)
                if isinstance(arg, torch.Tensor))
            self.launched.add(
                (self.name, pointers, tuple(constexprs.items()), num_warps))
            return self.kernel[grid](*args, num_warps=num_warps, **constexprs)

        return run


def _compiled_as(config):
    """What a launch of ``config`` compiles, as ``_RecordedKernel`` sees it.
    """
    pointers = frozenset((name, kind)
                         for name, kind in config.signature().items()
                         if kind.startswith('*'))
    return config.kernel, pointers, config.constexprs, config.num_warps


def test_launches_only_listed_configurations(interpret, monkeypatch):
    """Every launch, for each path, padded grid, GEMM tile, dtype and
    direction, compiles a configuration of ``kernel_configurations`` (the
    set the offline compile test checks) with the argument types listed
    there, and every listed configuration is launched by one of these
    calls."""
    launched = set()
    for name, kernel in triton_hco.KERNELS.items():
        monkeypatch.setitem(triton_hco.KERNELS, name,
                            _RecordedKernel(name, kernel, launched))
    # Padded grids 16x16, 16x32, 32x16, 32x32 (fused); transform lengths
    # along H in each GEMM tile (<= 16, <= 32, more).
    # Tiled: rows of each length the row kernel takes (padded 16 to 128),
    # and rows longer than it takes (two GEMMs along W of the largest
    # tile).
    shapes = {
        'fused': [(1, 3, 7, 1), (1, 5, 20, 1), (1, 20, 5, 1), (1, 20, 20, 1)],
        'tiled': [(1, 40, 20, 1), (1, 20, 3, 1), (1, 3, 40, 1), (1, 2, 100, 1),
                  (1, 1, 130, 1)]
    }
    for dtype in triton_hco.SUPPORTED_DTYPES:
        for path, path_shapes in shapes.items():
            for shape in path_shapes:
                x, transfer, grad = random_inputs(shape, dtype)
                for need in ((True, True), (True, False), (False, True)):
                    xr = x.clone().requires_grad_(need[0])
                    tr = transfer.clone().requires_grad_(need[1])
                    y = spectral_filter_kernel(xr, tr, path)
                    torch.autograd.grad(
                        y, [t for t in (xr, tr) if t.requires_grad], grad)
    listed = {
        _compiled_as(c)
        for c in triton_hco.kernel_configurations('ieee')
    }
    assert launched <= listed, launched - listed
    assert listed <= launched, listed - launched


class _Traffic(TorchDispatchMode):
    """Counts global-memory bytes, launch by launch: each tensor a kernel
    reads or writes by its role (patched ``_launch``; the filter and the
    DCT matrices aside) and each operand and result of the torch ops on
    maps (the product of the long-row backward, the sums over grad_T's
    partials)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def launch(self, config, n_programs, *args):
        arg = dict(
            zip([n for n, _ in triton_hco._KERNEL_ARGS[config.kernel]], args))
        params = dict(config.constexprs)
        if config.kernel == 'hco_gemm_kernel':
            used = ['in_ptr', 'out_ptr']
        else:
            used = ['src_ptr'] + ['x_ptr', 'gt_ptr'] * params['NEED_GT'] + \
                ['out_ptr'] * params['STORE_OUT']
        self.bytes += sum(arg[n].numel() * arg[n].element_size() for n in used)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mul.Tensor, torch.ops.aten.sum.dim_IntList):
            self.bytes += sum(t.numel() * t.element_size()
                              for t in (*args, out)
                              if isinstance(t, torch.Tensor))
        return out


@pytest.mark.parametrize('shape', [(3, 20, 20, 4), (64, 32, 32, 96),
                                   (3, 5, 40, 4), (3, 5, 100, 40),
                                   (64, 128, 128, 96), (3, 5, 130, 4)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_bytes_moved_counts_the_launches(monkeypatch, dtype, shape):
    """The bytes the GPU report shows per element are those the launchers'
    kernels and torch ops read and write, counted launch by launch on
    ``meta`` tensors: each path of each grid, rows in the row kernel with
    both gradients in one pass and in two, rows too long for it, batches
    of few and many chunks for grad_T."""
    x = torch.empty(shape, dtype=dtype, device='meta')
    transfer = torch.empty(shape[1:], device='meta')
    for n in shape[1:3]:
        dct_basis(n, 'meta')  # built before: not the kernels' traffic
    for path in triton_hco.kernel_paths(*shape[1:3]):
        traffic = _Traffic()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(triton_hco, '_launch', traffic.launch)
            with traffic:
                triton_hco.launch_forward(x, transfer, path)
                infer = traffic.bytes
                triton_hco.launch_backward(x, transfer, x, True, True, path)
        for train, counted in ((False, infer), (True, traffic.bytes)):
            assert triton_hco.bytes_moved(path, shape, x.element_size(),
                                          train) == counted, (path, train)


_PROBE = textwrap.dedent('''
    """pytest plugin: count the Triton HCO launches of the session."""
    import os

    import mmvheat.ops.triton_hco as hco

    _calls = []
    _original = hco.launch_forward


    def _counted(*args, **kwargs):
        _calls.append(1)
        return _original(*args, **kwargs)


    hco.launch_forward = _counted


    def pytest_sessionfinish(session, exitstatus):
        with open(os.environ['HCO_PROBE_OUT'], 'w') as f:
            f.write(str(len(_calls)))
''')


def test_golden_fixtures_with_triton_backend(reference_dir, project_root,
                                             tmp_path):
    """``MMVHEAT_HCO_BACKEND=triton TRITON_INTERPRET=1``: the golden-fixture
    tests pass with every spectral filter run by the kernel."""
    (tmp_path / 'hco_probe.py').write_text(_PROBE)
    out = tmp_path / 'calls.txt'
    env = dict(os.environ)
    env.update({
        ENV:
        'triton',
        'TRITON_INTERPRET':
        '1',
        'HCO_PROBE_OUT':
        str(out),
        'OMP_NUM_THREADS':
        '1',
        'PYTHONPATH':
        os.pathsep.join(
            p for p in (str(tmp_path), project_root, env.get('PYTHONPATH'))
            if p),
    })
    start = time.time()
    proc = subprocess.run([
        sys.executable, '-m', 'pytest', '-q', '-p', 'hco_probe', '-p',
        'no:cacheprovider',
        osp.join('tests', 'test_models', 'test_vheat_golden.py')
    ],
                          cwd=project_root,
                          env=env,
                          capture_output=True,
                          text=True,
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
        if triton_hco.triton_interpret_enabled():
            pytest.skip('the kernels were imported for the interpreter')
        monkeypatch.delenv(ENV, raising=False)

    # vHeat stages at 224 px (56 tiled; 28, 14, 7 fused), the fused limit
    # (32x32), non-square tiled grids, 128x128, 256x256 and the stage-1 map
    # of an 800 x 1333 detection input.
    SHAPES = [(4, 56, 56, 96), (4, 28, 28, 192), (8, 14, 14, 384),
              (8, 7, 7, 768), (2, 32, 32, 96), (2, 64, 96, 96),
              (2, 128, 128, 96), (1, 256, 256, 16), (3, 1, 200, 5),
              (2, 200, 334, 96)]

    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize('shape', SHAPES)
    def test_matches_exact(self, shape, dtype):
        x, transfer, grad = random_inputs(shape, dtype)
        h, w = shape[1:3]
        ey, egx, egt = exact_spectral_filter(x, transfer, grad)
        for path in triton_hco.kernel_paths(h, w):
            y, gx, gt = (
                t.cpu() for t in output_and_grads(
                    lambda a, t: spectral_filter_kernel(a, t, path), x.cuda(),
                    transfer.cuda(), grad.cuda()))
            assert y.dtype == gx.dtype == dtype
            if dtype == torch.float32:
                assert_close(y, ey, f'{path} {shape} forward')
                assert_close(gx, egx, f'{path} {shape} grad x')
            else:
                _assert_rounded(y, ey, f'{path} {shape} forward', HALF_ULP)
                _assert_rounded(gx, egx, f'{path} {shape} grad x', HALF_ULP)
            # Summed over the batch: relative to the largest entry.
            assert_close(gt, egt, f'{path} {shape} grad transfer', rtol=2e-5)
