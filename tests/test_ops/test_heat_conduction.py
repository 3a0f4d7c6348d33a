# Copyright (c) mmvheat contributors. All rights reserved.
"""Tests of the Heat Conduction Operator (``mmvheat.ops.heat_conduction``).

References are built independently of the code under test: the DCT from
``scipy.fft``, the decay map from numpy, and the heat equation from an explicit
finite-difference solver on a refined grid. Tolerances are stated next to each
assertion together with the error measured when the test was written.
"""
import math
from unittest import mock

import numpy as np
import pytest
import scipy.fft
import torch

from mmvheat.ops import spectral
from mmvheat.ops.heat_conduction import (dct2d, dct_basis, decay_map,
                                         frequency_energy, heat_conduction,
                                         heat_transfer, idct2d,
                                         spectral_filter,
                                         spectral_filter_reference)
from .exact_reference import exact_spectral_filter
from .workloads import coco_batch_sizes, stage_grids

# Non-square, odd, square and degenerate (1 x n) grids.
SHAPES = [(5, 8), (7, 3), (1, 1), (1, 6), (6, 1), (9, 9), (4, 4)]


def _np_energy(h, w):
    """``(n*pi/H)^2 + (m*pi/W)^2`` built in numpy, independently of torch."""
    a = np.arange(h) * np.pi / h
    b = np.arange(w) * np.pi / w
    return a[:, None]**2 + b[None, :]**2


def _np_heat_conduction(x, k):
    """float64 reference: ``IDCTN(DCTN(x) * exp(-k * energy))``.

    ``x`` is ``(B, H, W, C)`` and ``k`` is ``(H, W, C)``, both numpy arrays.
    """
    h, w = x.shape[1:3]
    spec = scipy.fft.dctn(x, type=2, norm='ortho', axes=(1, 2))
    spec = spec * np.exp(-k * _np_energy(h, w)[:, :, None])
    return scipy.fft.idctn(spec, type=2, norm='ortho', axes=(1, 2))


def _const_k(h, w, c, value, dtype=torch.float32):
    return torch.full((h, w, c), float(value), dtype=dtype)


# ---------------------------------------------------------------------------
# 1. The DCT basis and the 2D transforms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('n', [1, 2, 3, 7, 16, 56])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_dct_basis_matches_scipy_and_is_orthonormal(n, dtype):
    basis = dct_basis(n, dtype=dtype)
    assert basis.shape == (n, n)
    assert basis.dtype == dtype
    ref = scipy.fft.dct(np.eye(n), type=2, norm='ortho', axis=0)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(basis.double().numpy(), ref, rtol=0, atol=tol)
    eye = (basis.double() @ basis.double().t()).numpy()
    np.testing.assert_allclose(eye, np.eye(n), rtol=0, atol=tol)


def test_dct_basis_is_cached_per_size_device_dtype():
    a = dct_basis(7)
    assert dct_basis(7) is a
    assert dct_basis(7, device='cpu') is a
    assert dct_basis(7, device=torch.device('cpu'), dtype=torch.float32) is a
    b = dct_basis(7, dtype=torch.float64)
    assert b is not a
    assert b.dtype == torch.float64
    assert dct_basis(7, dtype=torch.float64) is b
    assert dct_basis(8) is not a


def test_cached_tensors_made_under_inference_mode_serve_autograd():
    """A basis first asked for under ``inference_mode`` is cached as a
    normal tensor: a later pass with autograd can save it for backward.
    Sizes no other test uses, so that the first call happens here."""
    with torch.inference_mode():
        basis = dct_basis(37)
        energy = frequency_energy(37, 29)
    assert not basis.is_inference() and not energy.is_inference()
    x = torch.randn(1, 37, 29, 2, requires_grad=True)
    k = torch.rand(37, 29, 2, requires_grad=True)
    spectral_filter_reference(x, heat_transfer(k)).sum().backward()
    assert x.grad is not None and k.grad is not None


class DeviceLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the devices of every op's tensor outputs."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        return out


def test_analytic_tensors_are_built_on_their_device():
    """The basis and the energy map of a device are computed there: no
    tensor on the CPU, so no host-to-device copy (shown on the ``meta``
    device, which stands for CUDA here; sizes no other test uses)."""
    with DeviceLog() as log:
        basis = dct_basis(41, device='meta')
        energy = frequency_energy(41, 43, device='meta')
    assert basis.device.type == energy.device.type == 'meta'
    assert log.devices == {'meta'}


def test_caches_hold_a_coco_epoch():
    """Every stage map of a COCO epoch (mmdet's 1333 x 800 keep-ratio
    resize, two images per batch padded to 32) and every transform length
    fit the caches at once: a second pass over the epoch's sizes builds
    nothing again."""
    maps = {(h, w)
            for size in coco_batch_sizes()
            for _, h, w in stage_grids(size)}
    lengths = {n for hw in maps for n in hw}
    assert (len(coco_batch_sizes()), len(maps), len(lengths)) == \
        (372, 1488, 105)
    caches = (spectral._cached_frequency_energy, spectral._cached_dct_basis)
    try:
        for cache in caches:
            cache.cache_clear()
        for _ in range(2):
            for h, w in sorted(maps):
                frequency_energy(h, w, device='meta')
            for n in sorted(lengths):
                for dtype in (torch.float32, torch.float64, torch.bfloat16):
                    dct_basis(n, device='meta', dtype=dtype)
        assert spectral._cached_frequency_energy.cache_info().misses == \
            len(maps)
        assert spectral._cached_dct_basis.cache_info().misses == \
            3 * len(lengths)
        assert len(maps) <= spectral.MAPS_CACHED
        assert 3 * len(lengths) <= spectral.BASES_CACHED
    finally:
        for cache in caches:
            cache.cache_clear()


def test_dct_basis_rejects_empty_size():
    with pytest.raises(ValueError):
        dct_basis(0)


@pytest.mark.parametrize('h,w', SHAPES)
def test_dct2d_matches_scipy_dctn(h, w):
    torch.manual_seed(0)
    x = torch.randn(h, w, 3, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm='ortho', axes=(0, 1))
    # float64 transforms: round-off only.
    np.testing.assert_allclose(dct2d(x).numpy(), ref, rtol=0, atol=1e-12)
    # float32 transforms of O(1) data: round-off ~1e-7, tolerance 1e-5.
    y32 = dct2d(x.float())
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.double().numpy(), ref, rtol=0, atol=1e-5)
    # The inverse is the orthonormal DCT-III.
    ref_inv = scipy.fft.idctn(x.numpy(), type=2, norm='ortho', axes=(0, 1))
    np.testing.assert_allclose(idct2d(x).numpy(), ref_inv, rtol=0, atol=1e-12)


@pytest.mark.parametrize('h,w', SHAPES)
def test_idct2d_inverts_dct2d(h, w):
    torch.manual_seed(1)
    x = torch.randn(2, h, w, 3)
    torch.testing.assert_close(idct2d(dct2d(x)), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(dct2d(idct2d(x)), x, rtol=0, atol=1e-5)
    x64 = x.double()
    torch.testing.assert_close(idct2d(dct2d(x64)), x64, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# 2. Decay map and heat transfer
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('h,w', SHAPES)
def test_decay_map_values(h, w):
    decay = decay_map(h, w, dtype=torch.float64)
    assert decay.shape == (h, w)
    assert decay[0, 0].item() == 1.0
    ref = np.exp(-_np_energy(h, w))
    np.testing.assert_allclose(decay.numpy(), ref, rtol=1e-12, atol=0)
    # float32 map: rounding of the values only.
    decay32 = decay_map(h, w)
    assert decay32.dtype == torch.float32
    np.testing.assert_allclose(decay32.double().numpy(), ref, rtol=1e-6)
    # frequency_energy is -log(decay).
    np.testing.assert_allclose(
        frequency_energy(h, w, dtype=torch.float64).numpy(),
        _np_energy(h, w),
        rtol=1e-12,
        atol=1e-12)


@pytest.mark.parametrize('h,w', [(7, 9), (5, 8), (1, 6), (12, 12)])
def test_heat_transfer_equals_decay_power_k(h, w):
    torch.manual_seed(2)
    k = torch.rand(h, w, 3)  # in [0, 1)
    transfer = heat_transfer(k)
    assert transfer.shape == (h, w, 3)
    assert transfer.dtype == torch.float32
    ref = np.exp(-_np_energy(h, w))[:, :, None]**k.double().numpy()
    # The exponent k * energy (up to 2 pi^2) is formed in float32, so the
    # relative error is up to ~|k * energy| * 2^-24 ~ 1.2e-6; measured 5.8e-7.
    np.testing.assert_allclose(
        transfer.double().numpy(), ref, rtol=2e-6, atol=0)
    # Same against the package's own decay map (float64).
    ref2 = decay_map(h, w, dtype=torch.float64)[:, :, None]**k.double()
    np.testing.assert_allclose(
        transfer.double().numpy(), ref2.numpy(), rtol=2e-6, atol=0)


def test_heat_transfer_zero_k_is_identity():
    k = torch.zeros(6, 5, 4)
    assert torch.equal(heat_transfer(k), torch.ones(6, 5, 4))
    torch.manual_seed(3)
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(heat_conduction(x, k), x, rtol=0, atol=1e-5)


def test_heat_transfer_rejects_non_3d_k():
    with pytest.raises(ValueError):
        heat_transfer(torch.zeros(4, 5))
    with pytest.raises(ValueError):
        heat_transfer(torch.zeros(1, 4, 5, 2))


@pytest.mark.parametrize('h,w', [(5, 8), (7, 3), (1, 6), (9, 9)])
def test_heat_conduction_matches_float64_reference(h, w):
    """Per-frequency, per-channel k against scipy dctn/idctn in float64."""
    torch.manual_seed(4)
    x = torch.randn(2, h, w, 3)
    k = torch.rand(h, w, 3) * 2
    ref = _np_heat_conduction(x.double().numpy(), k.double().numpy())
    out = heat_conduction(x, k)
    assert out.dtype == torch.float32 and out.shape == x.shape
    # float32 arithmetic on O(1) data: measured ~3e-7, tolerance 1e-5.
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# 3. Physics with a constant diffusivity k = c
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('h,w', SHAPES + [(12, 9)])
@pytest.mark.parametrize('c', [0.1, 1.0, 5.0])
def test_channel_means_are_conserved(h, w, c):
    """Insulated borders: no heat leaves, so every channel keeps its mean."""
    torch.manual_seed(5)
    x = torch.randn(2, h, w, 3) + torch.tensor([0.0, 1.0, -2.0])
    out = heat_conduction(x, _const_k(h, w, 3, c))
    # fp32 round-off on means of O(1) data: tolerance 1e-5.
    torch.testing.assert_close(
        out.mean(dim=(1, 2)), x.mean(dim=(1, 2)), rtol=0, atol=1e-5)


@pytest.mark.parametrize('h,w', SHAPES)
def test_constant_map_is_a_fixed_point(h, w):
    x = torch.full((1, h, w, 2), 3.25)
    x[..., 1] = -0.5
    out = heat_conduction(x, _const_k(h, w, 2, 2.0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_semigroup_property():
    """Evolving for k1 then k2 equals evolving for k1 + k2 (any k map)."""
    torch.manual_seed(6)
    x = torch.randn(2, 7, 5, 3, dtype=torch.float64)
    k1 = torch.rand(7, 5, 3, dtype=torch.float64)
    k2 = torch.rand(7, 5, 3, dtype=torch.float64)
    two_steps = heat_conduction(heat_conduction(x, k1), k2)
    one_step = heat_conduction(x, k1 + k2)
    # Transfers are float32 (by design), so agreement is to ~1e-7.
    torch.testing.assert_close(two_steps, one_step, rtol=0, atol=1e-6)


def _point_source(n, c, dtype=torch.float32):
    x = torch.zeros(1, n, n, 1, dtype=dtype)
    x[0, n // 2, n // 2, 0] = 1.0
    return heat_conduction(x, _const_k(n, n, 1, c, dtype))[0, :, :, 0]


@pytest.mark.parametrize('n', [5, 9, 11])
@pytest.mark.parametrize('c', [0.5, 1.0, 2.0, 4.0])
def test_point_source_spreads_symmetrically(n, c):
    y = _point_source(n, c)
    # Mirror symmetry about the centre of an odd grid; measured <= 2.5e-7
    # (transpose) and <= 1.5e-8 (flips).
    torch.testing.assert_close(y, y.flip(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(y, y.flip(1), rtol=0, atol=1e-6)
    # Square grid and isotropic k: symmetric under transposition.
    torch.testing.assert_close(y, y.t(), rtol=0, atol=1e-6)
    # Total heat is conserved.
    assert abs(y.double().sum().item() - 1.0) < 1e-5
    # The peak stays at the source.
    assert y.argmax().item() == (n // 2) * n + n // 2


@pytest.mark.parametrize('n', [5, 7, 9, 11, 15])
@pytest.mark.parametrize('c', [1.0, 2.0, 4.0])
def test_point_source_stays_non_negative(n, c):
    """The Neumann heat kernel is positive.

    The operator keeps only the H x W lowest cosine modes, so a discrete unit
    impulse is evolved as its band-limited interpolant; for small k (weak
    damping of the highest modes) this rings and dips below zero (measured
    min ~ -0.013 at k = 0.1 and -1e-5 at k = 0.5 on 11 x 11). That is a
    property of the spectral discretisation, not a bug, so positivity is only
    asserted for k >= 1, where the measured minimum is >= -6e-11.
    """
    y = _point_source(n, c, torch.float64)
    assert y.min().item() >= -1e-6


@pytest.mark.parametrize('n', [9, 11])
def test_point_source_spreads_further_for_larger_k(n):
    ks = [0.5, 1.0, 2.0, 4.0]
    idx = torch.arange(n, dtype=torch.float64) - n // 2
    r2 = idx[:, None]**2 + idx[None, :]**2
    peaks, variances = [], []
    for c in ks:
        y = _point_source(n, c, torch.float64)
        p = y / y.sum()
        peaks.append(y.max().item())
        variances.append((p * r2).sum().item())
    # Measured on 9x9: peaks 0.159, 0.080, 0.040, 0.020; variances
    # 2.0, 4.0, 7.3, 11.0 (the unbounded-plane value is 4 k until the
    # borders are felt).
    assert all(a > b for a, b in zip(peaks, peaks[1:])), peaks
    assert all(a < b for a, b in zip(variances, variances[1:])), variances
    # Before the borders matter the variance is the free-space 2 * 2k.
    assert variances[0] == pytest.approx(2.0, rel=1e-2)
    assert variances[1] == pytest.approx(4.0, rel=1e-2)


# --- Agreement with a finite-difference solution of the PDE -----------------
def _smooth_initial_condition(x, y, h, w):
    """Low-frequency cosines plus a wide Gaussian centred on a corner.

    Every term has zero normal derivative on the borders of [0, h] x [0, w]
    (the Gaussian's even reflection is smooth and it is ~0 at the far
    borders), so the data is compatible with insulated borders and its cosine
    coefficients decay fast: the coarse grid resolves it.
    """
    gauss = np.exp(-(x**2 + y**2) / (2 * 2.0**2))
    return (1.0 + 0.5 * np.cos(np.pi * x / h) +
            0.3 * np.cos(2 * np.pi * y / w) +
            0.2 * np.cos(np.pi * x / h) * np.cos(3 * np.pi * y / w) + gauss)


def _fd_heat_solution(h, w, kc, refine, t=1.0):
    """Explicit-Euler 5-point solver of du/dt = k (u_xx + u_yy) on [0,h]x[0,w].

    Cell-centred fine grid of spacing 1 / refine; insulated (Neumann) borders
    through reflecting ghost cells. ``refine`` is odd so that the coarse cell
    centre ``x + 0.5`` coincides with the fine cell centre
    ``x * refine + (refine - 1) / 2``; the solution is sampled there.
    """
    assert refine % 2 == 1
    dx = 1.0 / refine
    xf = (np.arange(h * refine) + 0.5) * dx
    yf = (np.arange(w * refine) + 0.5) * dx
    kc = np.asarray(kc, dtype=np.float64)
    u = _smooth_initial_condition(xf[:, None], yf[None, :], h, w)
    u = u[:, :, None] * np.ones_like(kc)
    # Stability of explicit Euler in 2D: dt <= dx^2 / (4 k).
    steps = int(math.ceil(t / (0.9 * dx * dx / (4 * kc.max()))))
    dt = t / steps
    for _ in range(steps):
        p = np.pad(u, ((1, 1), (1, 1), (0, 0)), mode='edge')
        lap = (p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] -
               4 * u) / (
                   dx * dx)
        u = u + dt * kc * lap
    mid = (refine - 1) // 2
    return u[mid::refine, mid::refine]


def test_heat_conduction_matches_finite_difference_solution():
    h, w, refine = 12, 9, 5
    kc = [0.5, 1.5]  # a different diffusivity per channel
    xc = np.arange(h) + 0.5
    yc = np.arange(w) + 0.5
    u0 = _smooth_initial_condition(xc[:, None], yc[None, :], h, w)
    u0 = np.repeat(u0[:, :, None], 2, axis=2)
    ref = _fd_heat_solution(h, w, kc, refine)
    dev = ref - ref.mean(axis=(0, 1))

    def rel_err(scale):
        k = torch.tensor(kc, dtype=torch.float64).expand(h, w, 2) * scale
        out = heat_conduction(torch.from_numpy(u0)[None], k)[0].numpy()
        # Error relative to the non-constant part of the solution, per
        # channel (the conserved mean would otherwise hide errors).
        return [
            np.linalg.norm(out[..., i] - ref[..., i]) /
            np.linalg.norm(dev[..., i]) for i in range(2)
        ]

    # The FD solution really evolved (the comparison is not trivial).
    moved = np.linalg.norm(ref - u0) / np.linalg.norm(dev)
    assert moved > 0.2, moved
    # Measured 1.6e-4 / 2.1e-4 (it shrinks as O(dx^2): 5e-4 at refine 3,
    # 1e-4 at refine 7); tolerance 2e-3.
    errs = rel_err(1.0)
    assert max(errs) < 2e-3, errs
    # Negative controls: the wrong time/frequency scaling is caught. A k off
    # by the factor (H / (H - 1))^2 (i.e. frequencies n pi / (H - 1)) gives
    # errors of 0.025 / 0.046, a 4x too large k gives 0.27 / 0.38.
    assert min(rel_err((h / (h - 1))**2)) > 1e-2
    assert min(rel_err(1 / (h / (h - 1))**2)) > 1e-2
    assert min(rel_err(4.0)) > 1e-1


# ---------------------------------------------------------------------------
# 4. Low-precision inputs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    'dtype,tol',
    [
        # Relative to max |y|; measured 5.3e-4 (fp16) and 3.7e-3 (bf16; up to
        # 5.2e-3 over 20 seeds),
        # dominated by rounding the input and the output.
        (torch.float16, 2e-3),
        (torch.bfloat16, 2e-2),
    ])
def test_low_precision_inputs(dtype, tol):
    torch.manual_seed(7)
    x = torch.randn(2, 7, 9, 4)
    k = torch.rand(7, 9, 4) * 2
    y32 = heat_conduction(x, k)
    y = heat_conduction(x.to(dtype), k)
    assert y.dtype == dtype
    assert y.shape == x.shape
    err = (y.float() - y32).abs().max() / y32.abs().max()
    assert err < tol, err
    # Arithmetic runs in float32: the result is the float32 result for the
    # same (rounded) input, rounded once to the dtype; allow 1 ulp. (Doing the
    # GEMMs in the low dtype instead gives errors of ~75-250 ulp here.)
    ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[dtype]
    y_ref = heat_conduction(x.to(dtype).float(), k).to(dtype).float()
    torch.testing.assert_close(y.float(), y_ref, rtol=ulp, atol=1e-6)
    # The low-precision k of a low-precision model also works.
    y_k = heat_conduction(x.to(dtype), k.to(dtype))
    assert y_k.dtype == dtype
    err = (y_k.float() - y32).abs().max() / y32.abs().max()
    assert err < tol, err
    # The transforms alone preserve the dtype too.
    assert dct2d(x.to(dtype)).dtype == dtype
    assert idct2d(x.to(dtype)).dtype == dtype


def test_works_under_cpu_autocast():
    torch.manual_seed(8)
    x = torch.randn(2, 6, 5, 3)
    k = torch.rand(6, 5, 3)
    y32 = heat_conduction(x, k)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = heat_conduction(x, k)
        y_bf16 = heat_conduction(x.bfloat16(), k)
    # The transforms opt out of autocast: fp32 in, fp32 out, same numbers.
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y32, rtol=0, atol=1e-6)
    assert y_bf16.dtype == torch.bfloat16
    err = (y_bf16.float() - y32).abs().max() / y32.abs().max()
    assert err < 2e-2, err


# ---------------------------------------------------------------------------
# 5. Autograd
# ---------------------------------------------------------------------------
def test_gradcheck_wrt_x_float64():
    torch.manual_seed(9)
    x = torch.randn(1, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    k = torch.rand(3, 4, 2, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(lambda x: heat_conduction(x, k), (x, ))


def test_gradient_wrt_k():
    """``heat_transfer`` downcasts k to float32 (``k.float()``) by design.

    ``gradcheck`` in float64 therefore cannot be used for k: its 1e-6
    perturbations are rounded away. The gradient is checked instead against
    (a) a float64 reference built from scipy's DCT and (b) central finite
    differences with a step large enough for float32 transfers.
    """
    torch.manual_seed(10)
    x = torch.randn(1, 3, 4, 2, dtype=torch.float64)
    k = (torch.rand(3, 4, 2, dtype=torch.float64) * 2).requires_grad_()
    weight = torch.randn(1, 3, 4, 2, dtype=torch.float64)
    loss = (heat_conduction(x, k) * weight).sum()
    (grad, ) = torch.autograd.grad(loss, k)
    assert grad.dtype == torch.float64
    assert torch.isfinite(grad).all()

    # (a) Analytic: d loss / d k = -E * DCT(x) * e^(-k E) * DCT(weight).
    xs = scipy.fft.dctn(x.numpy(), type=2, norm='ortho', axes=(1, 2))[0]
    ws = scipy.fft.dctn(weight.numpy(), type=2, norm='ortho', axes=(1, 2))[0]
    energy = _np_energy(3, 4)[:, :, None]
    kk = k.detach().numpy()
    ref = -energy * np.exp(-kk * energy) * xs * ws
    # float32 transfers: measured ~1e-7 of the largest entry; tolerance 1e-5.
    scale = np.abs(ref).max()
    np.testing.assert_allclose(grad.numpy(), ref, rtol=0, atol=1e-5 * scale)

    # (b) Central differences on the operator itself, step 1e-3: truncation
    # ~eps^2 ~ 1e-6 relative, float32 rounding ~6e-8 / eps ~ 6e-5 relative.
    eps = 1e-3
    fd = torch.zeros_like(k)
    with torch.no_grad():
        for i in range(k.numel()):
            dk = torch.zeros(k.numel(), dtype=k.dtype)
            dk[i] = eps
            dk = dk.view_as(k)
            lp = (heat_conduction(x, k + dk) * weight).sum()
            lm = (heat_conduction(x, k - dk) * weight).sum()
            fd.view(-1)[i] = (lp - lm) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=0, atol=1e-3 * scale)


def test_gradients_flow_to_x_and_k_float32():
    torch.manual_seed(11)
    x = torch.randn(2, 5, 6, 3, requires_grad=True)
    k = (torch.rand(5, 6, 3) + 0.1).requires_grad_()
    heat_conduction(x, k).pow(2).sum().backward()
    for g in (x.grad, k.grad):
        assert g is not None
        assert torch.isfinite(g).all()
        assert g.abs().max() > 0
    # k[0, 0] multiplies a zero frequency: it cannot affect the output.
    assert torch.all(k.grad[0, 0] == 0)


# ---------------------------------------------------------------------------
# 6. Shapes and errors
# ---------------------------------------------------------------------------
def test_leading_batch_dims():
    torch.manual_seed(12)
    x = torch.randn(2, 3, 5, 4, 2)
    k = torch.rand(5, 4, 2)
    out = heat_conduction(x, k)
    assert out.shape == x.shape
    flat = heat_conduction(x.reshape(6, 5, 4, 2), k).reshape(x.shape)
    torch.testing.assert_close(out, flat, rtol=0, atol=1e-6)
    # No batch dim at all: (H, W, C).
    single = heat_conduction(x[0, 0], k)
    assert single.shape == (5, 4, 2)
    torch.testing.assert_close(single, out[0, 0], rtol=0, atol=1e-6)
    for fn in (dct2d, idct2d):
        assert fn(x).shape == x.shape
        torch.testing.assert_close(fn(x)[1, 2], fn(x[1, 2]), rtol=0, atol=1e-6)


def test_shape_errors():
    x = torch.randn(2, 5, 4, 3)
    # Transfer / k not matching the map.
    with pytest.raises(ValueError):
        spectral_filter(x, torch.ones(5, 4, 2))
    with pytest.raises(ValueError):
        spectral_filter(x, torch.ones(4, 5, 3))
    with pytest.raises(ValueError):
        heat_conduction(x, torch.ones(5, 4, 2))
    with pytest.raises(ValueError):
        heat_conduction(x, torch.ones(5, 4))
    # A 2-D input is not a channels-last map.
    x2d = torch.randn(5, 4)
    with pytest.raises(ValueError):
        heat_conduction(x2d, torch.ones(5, 4, 1))
    with pytest.raises(ValueError):
        spectral_filter(x2d, torch.ones(5, 4, 1))
    with pytest.raises(ValueError):
        dct2d(x2d)
    with pytest.raises(ValueError):
        idct2d(x2d)


# ---------------------------------------------------------------------------
# 7. spectral_filter (the dispatcher's entry point) and the reference path
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('h,w', [(5, 8), (7, 3), (1, 1), (14, 14)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('fn', [spectral_filter, spectral_filter_reference])
def test_spectral_filter_matches_scipy(fn, h, w, dtype):
    torch.manual_seed(13)
    x = torch.randn(2, h, w, 4).to(dtype)
    transfer = torch.rand(h, w, 4)
    out = fn(x, transfer)
    assert out.dtype == dtype and out.shape == x.shape
    exact = exact_spectral_filter(x, transfer)
    scale = exact.abs().max().item()
    err = (out.double() - exact).abs().max().item()
    # float32 transforms of length <= 14: measured <= 2e-7 of the largest
    # value; tolerance 1e-5. bfloat16: the float32 result of the rounded
    # input rounded once, at most an ulp (2^-7) of the largest value.
    tol = 1e-5 if dtype == torch.float32 else 2.0**-7 + 1e-5
    assert err <= tol * scale, (err, scale)


@pytest.mark.parametrize('shape', [(2, 7, 5, 4), (1, 16, 12, 8)])
def test_spectral_filter_may_overwrite_its_input(shape, monkeypatch):
    """``overwrite=True`` gives the same values, bit for bit, in the input's
    own memory, and so it does through a buffer smaller than the map (a
    slab at a time, to float32 rounding: the products are split
    differently); where autograd records a graph through the input, or a
    graph is traced, the input is left as it was."""
    torch.manual_seed(0)
    x, transfer = torch.randn(*shape), torch.rand(*shape[1:])
    expected = spectral_filter_reference(x, transfer)
    scratch = x.clone()
    out = spectral_filter(scratch, transfer, overwrite=True)
    assert torch.equal(out, expected)
    assert out.data_ptr() == scratch.data_ptr()
    # A buffer of a sixth of the map: slabs of uneven sizes on both axes.
    monkeypatch.setattr(spectral, 'OVERWRITE_BUFFER_BYTES', x.nbytes // 6)
    scratch = x.clone()
    with mock.patch.object(torch, 'matmul', wraps=torch.matmul) as matmul:
        out = spectral_filter(scratch, transfer, overwrite=True)
    assert matmul.call_count > 4 and out.data_ptr() == scratch.data_ptr()
    # Values of order 1, transforms of 5 to 16 points: float32 rounding
    # is below 1e-6.
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    kept = x.clone().requires_grad_()
    out = spectral_filter(kept, transfer, overwrite=True)
    assert torch.equal(kept.detach(), x) and out.grad_fn is not None
    traced = torch.jit.trace(
        lambda t: spectral_filter_reference(t, transfer, overwrite=True),
        x.clone())
    scratch = x.clone()
    assert torch.equal(traced(scratch), expected)
    assert torch.equal(scratch, x)
