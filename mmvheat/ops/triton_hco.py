# Copyright (c) mmvheat contributors. All rights reserved.
"""Triton kernels for the Heat Conduction Operator's spectral filter.

``spectral_filter_triton(x, transfer)`` computes the same function as
:func:`mmvheat.ops.heat_conduction.spectral_filter_reference`::

    y[b, :, :, c] = Dh^T ((Dh x[b, :, :, c] Dw^T) * transfer[:, :, c]) Dw

on a contiguous channels-last map ``x`` of shape ``(B, H, W, C)`` (any leading
dims are flattened into ``B``), for float32, bfloat16 and float16 ``x`` with
float32 arithmetic, ``1 <= H, W <= 256``. ``transfer`` is used in float32.
Gradients for ``x`` and ``transfer`` come from a ``torch.autograd.Function``.

Design
------
All matrix products are ``tl.dot`` on float32 operands with float32
accumulation: 3xTF32 on sm_80+ GPUs, IEEE FMA otherwise (see
:func:`_dot_precision`). The DCT matrices come from :func:`dct_basis` (cached
float32, read from L1/L2 at every ``tl.dot``). Two paths:

* **fused** (padded grid ``HP * WP <= 32 * 32``: the vHeat stages at 28, 14
  and 7 px of a 224 px input). One program per ``(channel block of BC
  channels, batch chunk)``; grid ``(ceil(C / BC), n_batch_chunks)``. The
  program loads the whole ``H x W x BC`` slab of an image as one
  ``[HP, WP * BC]`` register tile (``HP``, ``WP`` = next power of two >= 16,
  zero padded by masks; ``tl.dot`` needs dims >= 16) and does four
  ``tl.dot``: along H (``Dh @ X``), a permute to put W first, along W, the
  multiply by the transfer tile, the inverse along W, a permute back, the
  inverse along H; then stores. ``BC`` is the largest power of two with
  ``HP * WP * BC <= 2048`` (and <= next_pow2(C)).
  Global-memory traffic per activation element, forward: the input is read
  once (its own dtype) and the output written once (its own dtype); the
  spectrum is never written to memory. ``transfer`` (fp32) is read once per
  program (from L2 after the first batch chunk: it is shared by the batch).
  Backward: ``grad_out`` and ``x`` read once each, ``grad_x`` written once;
  ``grad_T`` is accumulated in registers over the program's batch chunk and
  written as one float32 partial per chunk (``n_chunks x H x W x C``),
  summed in torch. Forward: 4 ``tl.dot`` per image and channel block;
  backward: 4 for ``grad_x`` plus 2 for the spectrum of ``x``.
* **tiled** (larger grids, up to 256 x 256, where a slab does not fit on
  chip; this includes vHeat's first stage, 56 x 56). Three kernels: a
  batched GEMM along H (``Dh @ x[b]`` on the ``(H, W*C)`` matrix, input in
  its own dtype, float32 out), a row kernel per ``(image row, 16 channels)``
  that fuses ``Dw @ row``, the multiply by the transfer row and
  ``Dw^T @ (.)`` (a ``[WP, 16]`` float32 tile on chip), and the inverse GEMM
  along H, which writes the output dtype. Here the intermediates DO go
  through global memory: two float32 tensors of the size of ``x`` are
  written once and read back (the GEMM along H re-reads its input tiles
  ``ceil(H / 32)`` times, as any tiled GEMM does, mostly from L2). So per
  element: input read + 4 B written + 4 B read + 4 B written + 4 B read +
  output written. Backward on this path: ``grad_x`` is the same three
  launches on ``grad_out``; ``grad_T`` = sum over the batch of
  ``spectrum(x) * spectrum(grad_out)``, both spectra computed by the kernels
  in float32 and multiplied and reduced in torch (two extra float32 buffers
  of x's size).

Tile limits and warp counts come from compiling the kernels offline for
sm_90 (``triton.compile`` + ``cuobjdump --dump-resource-usage``, no GPU
needed), with 3xTF32, bf16 activations: fused fwd 186 registers / 24 KB
shared (16x16, BC 8, 4 warps) and 181 / 48 KB (32x32, BC 2, 8 warps), no
spills; fused bwd with grad_T 255 registers and a 24-byte spill, 28 / 64 KB;
tiled GEMM 179 / 12 KB; row kernel 150 / 26 KB (W <= 64), 226 / 50 KB
(<= 128), 255 + 440-byte spill / 72 KB (<= 256). Larger fused tiles spilled
heavily (64x64: 160-224 KB shared memory, KB-sized spills), and IEEE FMA
``tl.dot`` needs far more registers than 3xTF32. GPU run time has not been
measured: these are untuned first choices.

Backward: the filter is ``A^T diag(T) A`` with ``A = Dh (x) Dw`` orthonormal,
which is symmetric, so ``grad_x = A^T diag(T) A grad_out`` -- the same filter
applied to ``grad_out`` -- and ``grad_T = sum_b (A x) * (A grad_out)``. The
spectrum of ``x`` is recomputed from ``x`` in the backward pass (nothing but
``x`` and ``transfer`` is saved). Double backward is not supported.

Interpreter: the kernels are wrapped by ``triton.jit`` lazily, once per value
of Triton's interpreter switch (``TRITON_INTERPRET``) seen at launch time, so
the switch can be flipped while the process runs (tests do), and CPU tensors
run under the interpreter next to compiled kernels for CUDA tensors. For that
the kernels use only builtins of ``triton.language``, none of its
``@triton.jit`` library functions (``tl.zeros``, ``tl.sum``, ``tl.cdiv``...):
those are wrapped once, when ``triton`` is imported, and an interpreted
kernel cannot call a compiled-mode one (``tl.full`` replaces ``tl.zeros``).
"""
import contextlib
import functools
import os
import types

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .heat_conduction import dct_basis

__all__ = [
    'spectral_filter_triton', 'triton_supports', 'triton_interpret_enabled',
    'MAX_GRID_SIZE', 'SUPPORTED_DTYPES'
]

#: Largest H and W the kernels accept.
MAX_GRID_SIZE = 256
#: Activation dtypes the kernels accept (arithmetic is float32 throughout).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Fused path: padded HP * WP at most this, register tile HP * WP * BC at most
# _FUSED_MAX_TILE float32 elements. Chosen from sm_90 compile statistics
# (registers, spills, shared memory; see the module doc), not from timings.
_FUSED_MAX_GRID = 32 * 32
_FUSED_MAX_TILE = 2048
# Tiled path: GEMM along H and row-kernel block sizes.
_GEMM_BM, _GEMM_BN, _GEMM_BK = 32, 64, 32
_ROW_BC, _ROW_BK = 16, 32
# Fused backward: aim for about this many programs when splitting the batch.
_TARGET_PROGRAMS = 512


def _dot_precision(device: torch.device) -> str:
    """``tl.dot`` precision for float32 operands.

    Plain TF32 (10-bit mantissa) is too coarse for the 1e-4 golden fixtures.
    3xTF32 (``tf32x3``: hi/lo split, three tensor-core products, float32
    accumulation) is accurate to ~1e-6 relative and keeps the operands on
    tensor cores (sm_80+); elsewhere, and in the interpreter (which ignores
    the setting), IEEE float32 FMA.
    """
    if device.type == 'cuda' and not triton_interpret_enabled() and \
            torch.cuda.get_device_capability(device)[0] >= 8:
        return 'tf32x3'
    return 'ieee'


def triton_interpret_enabled() -> bool:
    """Whether Triton would run kernels in its CPU interpreter right now."""
    knobs = getattr(triton, 'knobs', None)
    if knobs is not None:
        try:
            return bool(knobs.runtime.interpret)
        except AttributeError:
            pass
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


# ---------------------------------------------------------------------------
# Kernel sources. Plain functions: ``_kernels`` wraps them with triton.jit.
# ---------------------------------------------------------------------------
def _load_basis(ptr, N, NP: tl.constexpr, TRANS: tl.constexpr):
    """The ``N x N`` basis (or its transpose) zero-padded to ``NP x NP``."""
    i = tl.arange(0, NP)[:, None]
    j = tl.arange(0, NP)[None, :]
    if TRANS:
        offs = j * N + i
    else:
        offs = i * N + j
    return tl.load(ptr + offs, mask=(i < N) & (j < N), other=0.0)


def _slab_offsets(R_N, R_STRIDE, Q_N, Q_STRIDE, c0, C, RP: tl.constexpr,
                  QP: tl.constexpr, BC: tl.constexpr):
    """Offsets and mask of an ``[RP, QP * BC]`` tile, column ``q * BC + c``."""
    r = tl.arange(0, RP)
    j = tl.arange(0, QP * BC)
    q = j // BC
    c = c0 + j % BC
    offs = r[:, None] * R_STRIDE + (q * Q_STRIDE + c)[None, :]
    mask = (r < R_N)[:, None] & ((q < Q_N) & (c < C))[None, :]
    return offs, mask


def _dct2_tile(t, dh_ptr, dw_ptr, H, W, HP: tl.constexpr, WP: tl.constexpr,
               BC: tl.constexpr, PREC: tl.constexpr):
    """``[HP, WP*BC]`` (h, w, c) tile -> spectrum ``[WP, HP*BC]`` (m, n, c).

    The bases are loaded where they are used (from L1/L2) rather than kept
    live in registers across the batch loop.
    """
    dh = _load_basis(dh_ptr, H, HP, False)
    z = tl.dot(dh, t, input_precision=PREC)
    z = tl.reshape(z, (HP, WP, BC))
    z = tl.permute(z, (1, 0, 2))
    z = tl.reshape(z, (WP, HP * BC))
    dw = _load_basis(dw_ptr, W, WP, False)
    return tl.dot(dw, z, input_precision=PREC)


def _idct2_tile(s, dh_ptr, dw_ptr, H, W, HP: tl.constexpr, WP: tl.constexpr,
                BC: tl.constexpr, PREC: tl.constexpr):
    """Inverse of :func:`_dct2_tile`: (m, n, c) spectrum -> (h, w, c) tile."""
    dwt = _load_basis(dw_ptr, W, WP, True)
    q = tl.dot(dwt, s, input_precision=PREC)
    q = tl.reshape(q, (WP, HP, BC))
    q = tl.permute(q, (1, 0, 2))
    q = tl.reshape(q, (HP, WP * BC))
    dht = _load_basis(dh_ptr, H, HP, True)
    return tl.dot(dht, q, input_precision=PREC)


def _hco_fused_kernel(src_ptr, x_ptr, t_ptr, dh_ptr, dw_ptr, out_ptr, gt_ptr,
                      B, H, W, C, B_PER_PROG,
                      STORE_OUT: tl.constexpr, NEED_GT: tl.constexpr,
                      HP: tl.constexpr, WP: tl.constexpr, BC: tl.constexpr,
                      PREC: tl.constexpr):
    """Per (channel block, batch chunk): for each image ``b`` of the chunk,
    ``S = A src[b]``; if STORE_OUT, ``out[b] = A^T (T * S)``; if NEED_GT,
    ``acc += (A x[b]) * S`` and the chunk's ``acc`` goes to ``gt[chunk]``."""
    pid_c = tl.program_id(0)
    pid_b = tl.program_id(1)
    c0 = pid_c * BC
    hwc = H * W * C
    # Activations in (h, w, c) order; spectra and T in (m, n, c) order.
    x_offs, x_mask = _slab_offsets(H, W * C, W, C, c0, C, HP, WP, BC)
    s_offs, s_mask = _slab_offsets(W, C, H, W * C, c0, C, WP, HP, BC)
    t = tl.load(t_ptr + s_offs, mask=s_mask, other=0.0).to(tl.float32)

    b0 = pid_b * B_PER_PROG
    n_b = tl.minimum(B - b0, B_PER_PROG)
    base = b0.to(tl.int64) * hwc
    src = src_ptr + base
    xp = x_ptr + base
    out = out_ptr + base
    acc = tl.full((WP, HP * BC), 0.0, tl.float32)
    for _ in range(0, n_b):
        g = tl.load(src + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        spec = _dct2_tile(g, dh_ptr, dw_ptr, H, W, HP, WP, BC, PREC)
        if STORE_OUT:
            y = _idct2_tile(spec * t, dh_ptr, dw_ptr, H, W, HP, WP, BC, PREC)
            tl.store(out + x_offs, y.to(out_ptr.dtype.element_ty),
                     mask=x_mask)
        if NEED_GT:
            v = tl.load(xp + x_offs, mask=x_mask, other=0.0).to(tl.float32)
            acc += _dct2_tile(v, dh_ptr, dw_ptr, H, W, HP, WP, BC,
                              PREC) * spec
        src += hwc
        xp += hwc
        out += hwc
    if NEED_GT:
        tl.store(gt_ptr + pid_b.to(tl.int64) * hwc + s_offs, acc,
                 mask=s_mask)


def _hco_cols_kernel(in_ptr, out_ptr, a_ptr, N, R,
                     TRANS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, PREC: tl.constexpr):
    """Batched GEMM ``out[b] = A' @ in[b]`` on ``(N, R)`` matrices, where
    ``A' = A`` or ``A^T`` (TRANS) for the ``N x N`` matrix ``A``."""
    pid_r = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_b = tl.program_id(2)
    base = pid_b.to(tl.int64) * N * R
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_r * BN + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    acc = tl.full((BM, BN), 0.0, tl.float32)
    for k0 in range(0, N, BK):
        k = k0 + ks
        if TRANS:
            a_offs = k[None, :] * N + rows[:, None]
        else:
            a_offs = rows[:, None] * N + k[None, :]
        a = tl.load(a_ptr + a_offs, mask=(rows < N)[:, None] &
                    (k < N)[None, :], other=0.0)
        v = tl.load(in_ptr + base + k[:, None] * R + cols[None, :],
                    mask=(k < N)[:, None] & (cols < R)[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.dot(a, v, input_precision=PREC)
    tl.store(out_ptr + base + rows[:, None] * R + cols[None, :],
             acc.to(out_ptr.dtype.element_ty),
             mask=(rows < N)[:, None] & (cols < R)[None, :])


def _hco_rows_kernel(in_ptr, out_ptr, t_ptr, dw_ptr, H, W, C,
                     FWD: tl.constexpr, MUL: tl.constexpr, INV: tl.constexpr,
                     WP: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                     BM: tl.constexpr, PREC: tl.constexpr):
    """Per (image row ``g = b * H + n``, channel block), on the ``(W, C)``
    row: ``S = Dw @ row`` (if FWD, else the row), ``S *= T[n]`` (if MUL),
    ``out = Dw^T @ S`` (if INV, else S)."""
    g = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = g % H
    base = g.to(tl.int64) * W * C
    rows = tl.arange(0, WP)
    cs = pid_c * BC + tl.arange(0, BC)
    c_ok = cs < C
    if FWD:
        ks = tl.arange(0, BK)
        s = tl.full((WP, BC), 0.0, tl.float32)
        for k0 in range(0, W, BK):
            k = k0 + ks
            a = tl.load(dw_ptr + rows[:, None] * W + k[None, :],
                        mask=(rows < W)[:, None] & (k < W)[None, :],
                        other=0.0)
            v = tl.load(in_ptr + base + k[:, None] * C + cs[None, :],
                        mask=(k < W)[:, None] & c_ok[None, :],
                        other=0.0).to(tl.float32)
            s += tl.dot(a, v, input_precision=PREC)
    else:
        s = tl.load(in_ptr + base + rows[:, None] * C + cs[None, :],
                    mask=(rows < W)[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)
    if MUL:
        t = tl.load(t_ptr + n * W * C + rows[:, None] * C + cs[None, :],
                    mask=(rows < W)[:, None] & c_ok[None, :], other=0.0)
        s = s * t.to(tl.float32)
    if INV:
        ms = tl.arange(0, BM)
        for m0 in range(0, W, BM):
            m = m0 + ms
            # Dw^T[m, k] = Dw[k, m]
            a = tl.load(dw_ptr + rows[None, :] * W + m[:, None],
                        mask=(m < W)[:, None] & (rows < W)[None, :],
                        other=0.0)
            q = tl.dot(a, s, input_precision=PREC)
            tl.store(out_ptr + base + m[:, None] * C + cs[None, :],
                     q.to(out_ptr.dtype.element_ty),
                     mask=(m < W)[:, None] & c_ok[None, :])
    else:
        tl.store(out_ptr + base + rows[:, None] * C + cs[None, :],
                 s.to(out_ptr.dtype.element_ty),
                 mask=(rows < W)[:, None] & c_ok[None, :])


_KERNEL_SOURCES = (_load_basis, _slab_offsets, _dct2_tile, _idct2_tile,
                   _hco_fused_kernel, _hco_cols_kernel, _hco_rows_kernel)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> types.SimpleNamespace:
    """The kernels wrapped by ``triton.jit`` for one interpreter setting.

    ``triton.jit`` decides between a compiled and an interpreted function
    when it is applied, from ``TRITON_INTERPRET``. Each setting gets its own
    copies of the functions, with a private globals dict in which the helper
    names resolve to the helpers wrapped the same way.
    """
    assert interpret == triton_interpret_enabled()
    ns = {'tl': tl, 'triton': triton, '__name__': __name__,
          '__builtins__': __builtins__}
    for fn in _KERNEL_SOURCES:
        clone = types.FunctionType(fn.__code__, ns, fn.__name__,
                                   fn.__defaults__, fn.__closure__)
        clone.__annotations__ = dict(fn.__annotations__)
        clone.__kwdefaults__ = fn.__kwdefaults__
        clone.__module__ = fn.__module__
        clone.__qualname__ = fn.__qualname__
        clone.__doc__ = fn.__doc__
        ns[fn.__name__] = triton.jit(clone)
    return types.SimpleNamespace(
        **{fn.__name__.lstrip('_'): ns[fn.__name__]
           for fn in _KERNEL_SOURCES})


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _fused_config(h: int, w: int, c: int):
    """``(HP, WP, BC)`` of the fused path, or None if the grid is too big."""
    hp, wp = max(16, _next_pow2(h)), max(16, _next_pow2(w))
    if hp * wp > _FUSED_MAX_GRID:
        return None
    bc = max(1, min(_next_pow2(c), _FUSED_MAX_TILE // (hp * wp)))
    return hp, wp, bc


# ---------------------------------------------------------------------------
# Launchers on contiguous (B, H, W, C) tensors
# ---------------------------------------------------------------------------
def _check_launchable(x: Tensor):
    if x.device.type != 'cuda' and not triton_interpret_enabled():
        raise RuntimeError(
            f'the Triton HCO kernel got a tensor on {x.device}; Triton runs '
            'on CPU tensors only in its interpreter: set TRITON_INTERPRET=1, '
            'or MMVHEAT_HCO_BACKEND=torch for the reference path')


def _fused_run(src, transfer, x, store_out, need_gt, cfg):
    """One fused-kernel launch; returns ``(out or None, gt or None)``."""
    b, h, w, c = src.shape
    hp, wp, bc = cfg
    n_cblocks = triton.cdiv(c, bc)
    if need_gt:
        n_chunks = min(b, max(1, triton.cdiv(_TARGET_PROGRAMS, n_cblocks)))
        per_prog = triton.cdiv(b, n_chunks)
        n_chunks = triton.cdiv(b, per_prog)
    else:
        per_prog, n_chunks = 1, b
    out = torch.empty(src.shape, dtype=x.dtype,
                      device=src.device) if store_out else src
    gt = torch.empty((n_chunks, h, w, c), dtype=torch.float32,
                     device=src.device) if need_gt else transfer
    k = _kernels(triton_interpret_enabled())
    k.hco_fused_kernel[(n_cblocks, n_chunks)](
        src, x, transfer, dct_basis(h, src.device), dct_basis(w, src.device),
        out, gt, b, h, w, c, per_prog,
        STORE_OUT=store_out, NEED_GT=need_gt, HP=hp, WP=wp, BC=bc,
        PREC=_dot_precision(src.device), num_warps=4 if hp * wp <= 256 else 8)
    return (out if store_out else None), (gt.sum(0) if need_gt else None)


def _cols(src, out_dtype, inverse):
    """``Dh @ src[b]`` (or ``Dh^T @``) on the ``(H, W*C)`` matrices."""
    b, h, w, c = src.shape
    out = torch.empty(src.shape, dtype=out_dtype, device=src.device)
    r = w * c
    k = _kernels(triton_interpret_enabled())
    grid = (triton.cdiv(r, _GEMM_BN), triton.cdiv(h, _GEMM_BM), b)
    k.hco_cols_kernel[grid](
        src, out, dct_basis(h, src.device), h, r, TRANS=inverse, BM=_GEMM_BM,
        BN=_GEMM_BN, BK=_GEMM_BK, PREC=_dot_precision(src.device))
    return out


def _rows(src, transfer, fwd, mul, inv):
    """Per image row: ``Dw @``, ``* T[n]``, ``Dw^T @`` as selected."""
    b, h, w, c = src.shape
    out = torch.empty(src.shape, dtype=torch.float32, device=src.device)
    k = _kernels(triton_interpret_enabled())
    grid = (b * h, triton.cdiv(c, _ROW_BC))
    wp = max(16, _next_pow2(w))
    k.hco_rows_kernel[grid](
        src, out, transfer, dct_basis(w, src.device), h, w, c, FWD=fwd,
        MUL=mul, INV=inv, WP=wp, BC=_ROW_BC, BK=_ROW_BK,
        BM=16 if wp >= 256 else 32, PREC=_dot_precision(src.device),
        num_warps=8 if wp >= 128 else 4)
    return out


def _tiled_filter(src, transfer, out_dtype):
    z = _cols(src, torch.float32, inverse=False)
    z = _rows(z, transfer, fwd=True, mul=True, inv=True)
    return _cols(z, out_dtype, inverse=True)


def _tiled_spectrum(src):
    return _rows(
        _cols(src, torch.float32, inverse=False), None, True, False, False)


def _resolve_path(path, h, w, c):
    cfg = _fused_config(h, w, c)
    if path is None:
        path = 'fused' if cfg is not None else 'tiled'
    if path == 'fused':
        if cfg is None:
            raise ValueError(f'the fused path takes padded grids up to '
                             f'{_FUSED_MAX_GRID} cells, got {h} x {w}')
        return path, cfg
    if path == 'tiled':
        return path, None
    raise ValueError(f"path must be None, 'fused' or 'tiled', got {path!r}")


def _forward(x, transfer, path):
    _, h, w, c = x.shape
    path, cfg = _resolve_path(path, h, w, c)
    if path == 'fused':
        return _fused_run(x, transfer, x, True, False, cfg)[0]
    return _tiled_filter(x, transfer, x.dtype)


def _backward(x, transfer, grad, need_gx, need_gt, path):
    _, h, w, c = x.shape
    path, cfg = _resolve_path(path, h, w, c)
    if path == 'fused':
        if not need_gt:
            return _fused_run(grad, transfer, x, True, False, cfg)[0], None
        # grad_x comes out in x's dtype (the kernel stores in out's dtype).
        return _fused_run(grad, transfer, x, need_gx, True, cfg)
    gx = _tiled_filter(grad, transfer, x.dtype) if need_gx else None
    gt = None
    if need_gt:
        gt = (_tiled_spectrum(x) * _tiled_spectrum(grad)).sum(0)
    return gx, gt


class _SpectralFilterTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, transfer, path):
        ctx.save_for_backward(x, transfer)
        ctx.path = path
        return _forward(x, transfer, path)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, transfer = ctx.saved_tensors
        need_gx, need_gt = ctx.needs_input_grad[:2]
        if not (need_gx or need_gt):
            return None, None, None
        grad = grad.contiguous()
        gx, gt = _backward(x, transfer, grad, need_gx, need_gt, ctx.path)
        return gx, gt, None


def triton_supports(x: Tensor) -> bool:
    """Whether the kernels take ``x`` (dtype, rank, ``1 <= H, W <= 256``)."""
    return (x.dtype in SUPPORTED_DTYPES and x.dim() >= 3 and x.numel() > 0
            and x.shape[-3] <= MAX_GRID_SIZE and x.shape[-2] <= MAX_GRID_SIZE)


def spectral_filter_triton(x: Tensor, transfer: Tensor, path=None) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` by the Triton kernels (see module doc).

    Args:
        x (Tensor): A channels-last map ``(..., H, W, C)``, float32, float16
            or bfloat16, ``1 <= H, W <= 256``, on CUDA (or on CPU with
            ``TRITON_INTERPRET=1``).
        transfer (Tensor): The filter ``(H, W, C)``, used in float32.
        path (str, optional): ``'fused'`` or ``'tiled'``; by default the
            fused kernel where the grid fits on chip. For tests.

    Returns:
        Tensor: The filtered map, shape and dtype of ``x``.
    """
    if x.dim() < 3:
        raise ValueError('expected a channels-last map (..., H, W, C), got '
                         f'shape {tuple(x.shape)}')
    if transfer.shape != x.shape[-3:]:
        raise ValueError(f'transfer of shape {tuple(transfer.shape)} does not '
                         f'match the map {tuple(x.shape[-3:])}')
    if not triton_supports(x):
        raise ValueError(
            f'the Triton HCO kernel takes {[str(d) for d in SUPPORTED_DTYPES]}'
            f' maps with 1 <= H, W <= {MAX_GRID_SIZE}, got {x.dtype} '
            f'{tuple(x.shape)}')
    if transfer.device != x.device:
        raise ValueError(f'transfer is on {transfer.device}, x on {x.device}')
    _check_launchable(x)
    lead = x.shape[:-3]
    x4 = x.reshape(-1, *x.shape[-3:]).contiguous()
    t = transfer.to(torch.float32).contiguous()
    # Triton launches on the current device. (Autograd runs the backward on
    # a thread already set to the tensors' device.)
    with (torch.cuda.device(x.device)
          if x.is_cuda else contextlib.nullcontext()):
        y = _SpectralFilterTriton.apply(x4, t, path)
    return y.reshape(*lead, *y.shape[1:])
