# Copyright (c) mmvheat contributors. All rights reserved.
"""Triton kernels for the Heat Conduction Operator's spectral filter.

:func:`launch_forward` computes the same function as
:func:`mmvheat.ops.spectral.spectral_filter_reference`::

    y[b, :, :, c] = Dh^T ((Dh x[b, :, :, c] Dw^T) * transfer[:, :, c]) Dw

on a contiguous channels-last map ``x`` of shape ``(B, H, W, C)`` for any
``H, W >= 1``, float32, bfloat16 and float16 ``x`` with float32 arithmetic;
``transfer`` is float32. :func:`launch_backward` computes its gradients.
Both are plain functions over kernel launches, without autograd: the
operator registered by :mod:`mmvheat.ops.dispatch` carries the autograd
formula, the self-check and the choice of path.

Design
------
All matrix products are ``tl.dot`` on float32 operands with float32
accumulation: 3xTF32 on sm_80+ GPUs, IEEE FMA otherwise (see
:func:`_dot_precision`). The DCT matrices come from :func:`dct_basis` (cached
float32, read through L1/L2). Two paths, both for any batch and channel
count:

* **fused**, for grids whose padded size ``HP x WP`` (next powers of two,
  at least 16 as ``tl.dot`` requires) is 16 or 32 on each side: one program
  per (image, block of ``BC`` channels) holds the whole ``H x W x BC`` slab
  as one ``[HP, WP * BC]`` register tile and does the four products (along
  H, a permute, along W, the multiply by the transfer, the two inverses) on
  chip. Activations are read and written once in their own dtype; the
  spectrum never reaches memory. The backward reuses the slab for
  ``grad_T``, accumulated over a chunk of the batch and written as one
  float32 partial per chunk.
* **tiled**, for any grid. Along H, batched GEMMs with the DCT matrix
  (:func:`hco_gemm_kernel`, ``out[g] = A' @ in[g]`` on ``(N, R)``
  matrices; a matrix is an image, ``(H, W * C)``): ``Z = Dh x`` reads ``x``
  in its dtype, ``y = Dh^T Q`` writes ``y``'s. Along W, for rows up to 128
  (padded), the row kernel (:func:`hco_row_kernel`) takes ``Z`` one image
  row ``(W, C)`` at a time, per block of channels: the row's DCT, the
  multiply by the transfer and the inverse in one pass, the row's spectrum
  held on chip, so ``Q = Dw^T (T * Dw Z)`` costs one float32 map read and
  one written. Longer rows take the same GEMM kernel along W (an image
  row is a matrix: the memory seen as ``(B * H, W, C)``) twice, the
  transfer multiplying the loaded operand of the inverse (a prologue,
  ``T`` broadcast over images through ``g % H``), with one float32 map
  more each way. A whole map per channel block does not stay on chip past
  32 x 32 (a 64 x 64 slab spills kilobytes per thread; Triton has no
  explicit shared-memory buffers to hold a 128 x 128 one), so the
  transform along H goes through global memory: ``2 s + 16`` bytes per
  element for an ``s``-byte dtype against ``2 s`` for a copy
  (:func:`bytes_moved`). Memory is the only size limit: the grids are
  one-dimensional and offsets are 64-bit.

Backward: the filter is ``A^T diag(T) A`` with ``A = Dh (x) Dw`` orthonormal,
which is symmetric, so ``grad_x = A^T diag(T) A grad_out`` -- the same filter
applied to ``grad_out`` -- and ``grad_T = sum_b (A x) * (A grad_out)``. On the
tiled path the unmultiplied spectrum of a row of ``Dh grad_out`` serves both:
the row kernel filters it for grad_x and multiplies it with the row's
spectrum of ``Dh x`` for grad_T, summed over a chunk of the batch into one
float32 partial per chunk (in one pass for rows up to 64, two above). The
spectrum of ``x`` is recomputed in the backward pass (nothing but ``x`` and
``transfer`` is needed).

Every launch goes through :func:`_launch` with a configuration from a fixed
set (:func:`kernel_configurations` lists them all), so an offline compile of
that set for each GPU architecture covers every kernel this module can run;
:func:`kernel_variant` says how Triton specialises a launch's integer
arguments (equal to 1, multiple of 16), which the offline check compiles
too.

Interpreter: the kernels are module-level ``@triton.jit`` functions, so
Triton decides when this module is imported whether they are compiled or
run in its CPU interpreter (``TRITON_INTERPRET=1`` at that moment);
:func:`triton_interpret_enabled` says which. The kernels use only builtins
of ``triton.language``, none of its ``@triton.jit`` library functions
(``tl.zeros``, ``tl.sum``, ``tl.cdiv``...): those are wrapped when
``triton`` itself is imported, which may be before the interpreter was
switched on, and an interpreted kernel cannot call a compiled-mode one
(``tl.full`` replaces ``tl.zeros``).
"""
import contextlib
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .spectral import dct_basis

__all__ = [
    'launch_forward', 'launch_backward', 'triton_supports',
    'triton_interpret_enabled', 'kernel_paths', 'default_path',
    'kernel_configurations', 'kernel_variant', 'recorded_launches',
    'bytes_moved', 'KernelConfig', 'KernelVariant', 'KERNELS', 'KERNEL_PATHS',
    'SUPPORTED_DTYPES'
]

#: Activation dtypes the kernels accept (arithmetic is float32 throughout).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: The kernel paths, in the order the dispatcher lists them.
KERNEL_PATHS = ('fused', 'tiled')

# Fused path: the padded grid sides it takes, and the register tile
# HP * WP * BC (float32 elements) each program holds.
_FUSED_SIDES = (16, 32)
_FUSED_TILE = 2048
# Tiled path: (BM, BK) of the GEMM by the transform length N (the smallest
# that covers N, else the last), and BN, the columns per program.
_GEMM_TILES = ((16, 16), (32, 32), (64, 32))
_GEMM_BN = 64
# Tiled path, along W: the padded row lengths the row kernel takes (longer
# rows take two GEMMs), the longest for which one pass computes both
# gradients, and the K and output chunk of its products. Compiled for
# sm_80/sm_90, a row of 256 spills 0.7-1 KB per thread in the inverse
# product, and both gradients at once spill from 128 on.
_ROW_SIDES = (16, 32, 64, 128)
_ROW_BOTH_MAX = 64
_ROW_BK = 16
# Backward for grad_T: aim for about this many programs when splitting the
# batch into chunks (each writes one float32 partial).
_TARGET_PROGRAMS = 512
# Pointers are passed 16-byte aligned, as Triton's specialisation (and the
# offline compile check) assumes.
_ALIGNMENT = 16

_TRITON_DTYPES = {
    torch.float32: 'fp32',
    torch.bfloat16: 'bf16',
    torch.float16: 'fp16'
}


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
    """Whether this module's kernels run in Triton's CPU interpreter.

    Decided when the module was imported, by ``TRITON_INTERPRET``: set it
    before importing (a test session, a subprocess) to run the kernels on
    CPU tensors.
    """
    return _INTERPRETED


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
@triton.jit
def _load_basis(ptr, N, NP: tl.constexpr, TRANS: tl.constexpr):
    """The ``N x N`` basis (or its transpose) zero-padded to ``NP x NP``."""
    i = tl.arange(0, NP)[:, None]
    j = tl.arange(0, NP)[None, :]
    if TRANS:
        offs = j * N + i
    else:
        offs = i * N + j
    return tl.load(ptr + offs, mask=(i < N) & (j < N), other=0.0)


@triton.jit
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


@triton.jit
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


@triton.jit
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


@triton.jit
def hco_fused_kernel(src_ptr, x_ptr, t_ptr, dh_ptr, dw_ptr, out_ptr, gt_ptr, B,
                     H, W, C, B_PER_PROG, C_BLOCKS, STORE_OUT: tl.constexpr,
                     NEED_GT: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr,
                     BC: tl.constexpr, PREC: tl.constexpr):
    """Per (batch chunk, channel block): for each image ``b`` of the chunk,
    ``S = A src[b]``; if STORE_OUT, ``out[b] = A^T (T * S)``; if NEED_GT,
    ``acc += (A x[b]) * S`` and the chunk's ``acc`` goes to ``gt[chunk]``."""
    pid = tl.program_id(0)
    pid_b = pid // C_BLOCKS
    c0 = (pid % C_BLOCKS) * BC
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
            tl.store(out + x_offs, y.to(out_ptr.dtype.element_ty), mask=x_mask)
        if NEED_GT:
            v = tl.load(xp + x_offs, mask=x_mask, other=0.0).to(tl.float32)
            acc += _dct2_tile(v, dh_ptr, dw_ptr, H, W, HP, WP, BC, PREC) * spec
        src += hwc
        xp += hwc
        out += hwc
    if NEED_GT:
        tl.store(gt_ptr + pid_b.to(tl.int64) * hwc + s_offs, acc, mask=s_mask)


@triton.jit
def hco_gemm_kernel(in_ptr, out_ptr, a_ptr, t_ptr, N, R, T_BATCH, COLS,
                    TILES_M, TRANS: tl.constexpr, MUL: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    PREC: tl.constexpr):
    """Batched GEMM ``out[q] = A' @ (in[q] * T[q % T_BATCH])`` on ``(N, R)``
    matrices ``q``, where ``A' = A`` or ``A^T`` (TRANS) for the ``N x N``
    matrix ``A`` and the product with ``T`` is taken only if MUL.

    The batch is folded into the columns: column ``j`` of the ``N x COLS``
    problem is column ``j % R`` of matrix ``j // R``, so narrow matrices
    (an image row of a few channels) still fill a tile. Programs run over
    the row tiles of one column strip before the next strip, so a strip is
    read from L2 after its first use.
    """
    pid = tl.program_id(0)
    pid_m = pid % TILES_M
    rows = pid_m * BM + tl.arange(0, BM)
    cols = (pid // TILES_M).to(tl.int64) * BN + tl.arange(0, BN)
    q = cols // R
    col_base = q * N * R + cols % R
    col_ok = cols < COLS
    if MUL:
        t_base = (q % T_BATCH) * N * R + cols % R
    ks = tl.arange(0, BK)
    acc = tl.full((BM, BN), 0.0, tl.float32)
    for k0 in range(0, N, BK):
        k = k0 + ks
        if TRANS:
            a_offs = k[None, :] * N + rows[:, None]
        else:
            a_offs = rows[:, None] * N + k[None, :]
        a = tl.load(
            a_ptr + a_offs,
            mask=(rows < N)[:, None] & (k < N)[None, :],
            other=0.0)
        k_offs = k.to(tl.int64)[:, None] * R
        v_mask = (k < N)[:, None] & col_ok[None, :]
        v = tl.load(
            in_ptr + k_offs + col_base[None, :], mask=v_mask,
            other=0.0).to(tl.float32)
        if MUL:
            v = v * tl.load(
                t_ptr + k_offs + t_base[None, :], mask=v_mask, other=0.0)
        acc += tl.dot(a, v, input_precision=PREC)
    tl.store(
        out_ptr + rows.to(tl.int64)[:, None] * R + col_base[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=(rows < N)[:, None] & col_ok[None, :])


@triton.jit
def _row_spectrum(ptr, dw_ptr, W, C, c, c_ok, WP: tl.constexpr,
                  BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``Dw @ row`` for the ``(W, BC)`` channels ``c`` of one image row at
    ``ptr``, as a float32 ``[WP, BC]`` tile (rows past ``W`` are zero)."""
    m = tl.arange(0, WP)
    ks = tl.arange(0, BK)
    acc = tl.full((WP, BC), 0.0, tl.float32)
    for k0 in range(0, W, BK):
        k = k0 + ks
        a = tl.load(
            dw_ptr + m[:, None] * W + k[None, :],
            mask=(m < W)[:, None] & (k < W)[None, :],
            other=0.0)
        v = tl.load(
            ptr + k[:, None] * C + c[None, :],
            mask=(k < W)[:, None] & c_ok[None, :],
            other=0.0).to(tl.float32)
        acc += tl.dot(a, v, input_precision=PREC)
    return acc


@triton.jit
def hco_row_kernel(src_ptr, x_ptr, t_ptr, dw_ptr, out_ptr, gt_ptr, B, H, W, C,
                   B_PER_PROG, C_BLOCKS, STORE_OUT: tl.constexpr,
                   NEED_GT: tl.constexpr, WP: tl.constexpr, BC: tl.constexpr,
                   BK: tl.constexpr, PREC: tl.constexpr):
    """The three steps along W of the tiled path in one pass over an image
    row, per (batch chunk, row ``h``, block of ``BC`` channels): for each
    image ``b`` of the chunk, ``S = Dw src[b, h]`` (float32, ``(W, BC)``,
    held on chip); if STORE_OUT, ``out[b, h] = Dw^T (T[h] * S)``; if
    NEED_GT, ``acc += (Dw x[b, h]) * S``, and the chunk's ``acc`` goes to
    ``gt[chunk, h]``. ``src``, ``x`` and ``out`` are the float32 maps
    between the transforms along H."""
    pid = tl.program_id(0)
    c = (pid % C_BLOCKS) * BC + tl.arange(0, BC)
    h = (pid // C_BLOCKS) % H
    chunk = pid // (C_BLOCKS * H)
    c_ok = c < C
    m = tl.arange(0, WP)
    row_offs = m[:, None] * C + c[None, :]
    row_mask = (m < W)[:, None] & c_ok[None, :]
    t = tl.load(
        t_ptr + h.to(tl.int64) * W * C + row_offs, mask=row_mask, other=0.0)
    b0 = chunk * B_PER_PROG
    n_b = tl.minimum(B - b0, B_PER_PROG)
    acc = tl.full((WP, BC), 0.0, tl.float32)
    rs = tl.arange(0, BK)
    for i in range(0, n_b):
        row = ((b0 + i).to(tl.int64) * H + h) * W * C
        spec = _row_spectrum(src_ptr + row, dw_ptr, W, C, c, c_ok, WP, BC, BK,
                             PREC)
        if STORE_OUT:
            filtered = spec * t
            for r0 in range(0, W, BK):
                r = r0 + rs
                # Rows r of Dw^T: a[r, m] = Dw[m, r].
                a = tl.load(
                    dw_ptr + m[None, :] * W + r[:, None],
                    mask=(r < W)[:, None] & (m < W)[None, :],
                    other=0.0)
                q = tl.dot(a, filtered, input_precision=PREC)
                tl.store(
                    out_ptr + row + r[:, None] * C + c[None, :],
                    q.to(out_ptr.dtype.element_ty),
                    mask=(r < W)[:, None] & c_ok[None, :])
        if NEED_GT:
            acc += _row_spectrum(x_ptr + row, dw_ptr, W, C, c, c_ok, WP, BC,
                                 BK, PREC) * spec
    if NEED_GT:
        tl.store(
            gt_ptr + (chunk.to(tl.int64) * H + h) * W * C + row_offs,
            acc,
            mask=row_mask)


#: The launchable kernels by name.
KERNELS = {
    'hco_fused_kernel': hco_fused_kernel,
    'hco_gemm_kernel': hco_gemm_kernel,
    'hco_row_kernel': hco_row_kernel,
}
_INTERPRETED = not isinstance(hco_gemm_kernel, triton.runtime.JITFunction)

# The names and types of the launchable kernels' runtime arguments
# (pointers: '*' and the dtype, filled in per configuration).
_KERNEL_ARGS = {
    'hco_fused_kernel':
    (('src_ptr', '*'), ('x_ptr', '*'), ('t_ptr', '*fp32'), ('dh_ptr', '*fp32'),
     ('dw_ptr', '*fp32'), ('out_ptr', '*'), ('gt_ptr', '*fp32'), ('B', 'i32'),
     ('H', 'i32'), ('W', 'i32'), ('C', 'i32'), ('B_PER_PROG',
                                                'i32'), ('C_BLOCKS', 'i32')),
    'hco_gemm_kernel':
    (('in_ptr', '*'), ('out_ptr', '*'), ('a_ptr', '*fp32'), ('t_ptr', '*fp32'),
     ('N', 'i32'), ('R', 'i32'), ('T_BATCH',
                                  'i32'), ('COLS', 'i32'), ('TILES_M', 'i32')),
    'hco_row_kernel':
    (('src_ptr', '*fp32'), ('x_ptr', '*fp32'), ('t_ptr', '*fp32'), ('dw_ptr',
                                                                    '*fp32'),
     ('out_ptr', '*fp32'), ('gt_ptr', '*fp32'), ('B', 'i32'), ('H', 'i32'),
     ('W', 'i32'), ('C', 'i32'), ('B_PER_PROG', 'i32'), ('C_BLOCKS', 'i32')),
}


# ---------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------
class KernelConfig(NamedTuple):
    """A kernel with its constexprs, pointer dtypes and warps: what
    :func:`_launch` runs (Triton compiles one binary per
    :class:`KernelVariant` of it).

    Attributes:
        kernel (str): ``'hco_fused_kernel'`` or ``'hco_gemm_kernel'``.
        pointer_dtypes (tuple): ``(argument name, triton dtype)`` of the
            pointers whose dtype follows the activations.
        constexprs (tuple): ``(name, value)`` pairs, in signature order.
        num_warps (int): Warps per program.
    """
    kernel: str
    pointer_dtypes: Tuple[Tuple[str, str], ...]
    constexprs: Tuple[Tuple[str, object], ...]
    num_warps: int

    def signature(self) -> Dict[str, str]:
        """The argument types, as ``triton.compiler.ASTSource`` takes them."""
        dtypes = dict(self.pointer_dtypes)
        sig = {
            name: '*' + dtypes[name] if kind == '*' else kind
            for name, kind in _KERNEL_ARGS[self.kernel]
        }
        sig.update({name: 'constexpr' for name, _ in self.constexprs})
        return sig


class KernelVariant(NamedTuple):
    """A configuration as Triton compiles it for one launch.

    Triton specialises integer arguments at run time: one equal to 1 is
    compiled in as a constant, one that is a multiple of 16 is compiled as
    divisible by 16 (it allows wider loads, ``cp.async``). Each combination
    is a binary of its own, with its own registers and shared memory.

    Attributes:
        config (KernelConfig): The configuration.
        integers (tuple): ``(argument name, 1 | 'D' | '')`` for each integer
            argument: equal to 1, a multiple of 16, neither.
    """
    config: KernelConfig
    integers: Tuple[Tuple[str, object], ...]


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _fused_sides(h: int, w: int) -> Optional[Tuple[int, int]]:
    """``(HP, WP)`` of the fused path for an ``h x w`` grid, or None."""
    hp, wp = max(16, _next_pow2(h)), max(16, _next_pow2(w))
    if hp not in _FUSED_SIDES or wp not in _FUSED_SIDES:
        return None
    return hp, wp


def _fused_config(hp: int, wp: int, dtype: str, store_out: bool, need_gt: bool,
                  prec: str) -> KernelConfig:
    # The backward for both gradients keeps more live on a 16 x 16 grid
    # than 4 warps hold in registers.
    warps = 4 if hp * wp <= 256 and not (store_out and need_gt) else 8
    return KernelConfig(
        'hco_fused_kernel',
        (('src_ptr', dtype), ('x_ptr', dtype), ('out_ptr', dtype)),
        (('STORE_OUT', store_out), ('NEED_GT', need_gt), ('HP', hp),
         ('WP', wp), ('BC', _FUSED_TILE // (hp * wp)), ('PREC', prec)), warps)


def _gemm_tile(n: int) -> Tuple[int, int]:
    """``(BM, BK)`` for a transform of length ``n``."""
    for bm, bk in _GEMM_TILES:
        if n <= bm:
            return bm, bk
    return _GEMM_TILES[-1]


def _gemm_config(n: int, in_dtype: str, out_dtype: str, trans: bool, mul: bool,
                 prec: str) -> KernelConfig:
    bm, bk = _gemm_tile(n)
    return KernelConfig('hco_gemm_kernel',
                        (('in_ptr', in_dtype), ('out_ptr', out_dtype)),
                        (('TRANS', trans), ('MUL', mul), ('BM', bm),
                         ('BN', _GEMM_BN), ('BK', bk), ('PREC', prec)), 4)


def _row_side(w: int) -> Optional[int]:
    """The padded row length of the row kernel for rows of ``w``, or None
    (rows too long: two GEMMs along W)."""
    wp = max(16, _next_pow2(w))
    return wp if wp <= _ROW_SIDES[-1] else None


def _row_config(wp: int, store_out: bool, need_gt: bool,
                prec: str) -> KernelConfig:
    # Each program holds a few [WP, BC] float32 tiles (the spectrum, the
    # filter row, grad_T's sum) and a [BK, WP] slice of Dw^T: BC shrinks and
    # warps grow with WP.
    bc = 32 if wp <= 64 else 16
    warps = 4 if wp <= 32 else 8
    return KernelConfig('hco_row_kernel', (),
                        (('STORE_OUT', store_out), ('NEED_GT', need_gt),
                         ('WP', wp), ('BC', bc), ('BK', _ROW_BK),
                         ('PREC', prec)), warps)


def _row_roles(wp: int):
    """``(STORE_OUT, NEED_GT)`` of the row kernel's launches for rows of
    ``wp``: the forward, grad_T alone, and both gradients in one pass or,
    for long rows, in two."""
    roles = [(True, False), (False, True)]
    return roles + [(True, True)] if wp <= _ROW_BOTH_MAX else roles


def kernel_configurations(prec: str = 'tf32x3') -> List[KernelConfig]:
    """Every configuration the launchers can run with dot precision ``prec``.

    Fused: each padded grid, for the forward (which is also the backward for
    ``grad_x`` alone), the backward for ``grad_T`` alone and for both, per
    activation dtype. Tiled: each GEMM tile, for the GEMM roles along H
    (input dtype -> float32; float32 -> output dtype, the inverse); each
    row length of the row kernel, for the same three roles as the fused
    kernel; and for rows too long for it, the GEMMs along W of the largest
    tile (float32 -> float32, and the inverse with the transfer).
    """
    configs = []
    for dtype in _TRITON_DTYPES.values():
        for hp in _FUSED_SIDES:
            for wp in _FUSED_SIDES:
                for store_out, need_gt in ((True, False), (False, True),
                                           (True, True)):
                    configs.append(
                        _fused_config(hp, wp, dtype, store_out, need_gt, prec))
    roles = {(d, 'fp32', False, False) for d in _TRITON_DTYPES.values()}
    roles |= {('fp32', d, True, False) for d in _TRITON_DTYPES.values()}
    for bm, _ in _GEMM_TILES:
        for role in sorted(roles):
            configs.append(_gemm_config(bm, *role, prec))
    configs.append(
        _gemm_config(_GEMM_TILES[-1][0], 'fp32', 'fp32', True, True, prec))
    for wp in _ROW_SIDES:
        for store_out, need_gt in _row_roles(wp):
            configs.append(_row_config(wp, store_out, need_gt, prec))
    return configs


def kernel_paths(h: int, w: int) -> Tuple[str, ...]:
    """The kernel paths that take an ``h x w`` grid (tiled takes any)."""
    return KERNEL_PATHS if _fused_sides(h, w) is not None else ('tiled', )


def default_path(h: int, w: int) -> str:
    """The path taken without a choice: fused where it applies."""
    return kernel_paths(h, w)[0]


# ---------------------------------------------------------------------------
# Launchers on contiguous (B, H, W, C) tensors
# ---------------------------------------------------------------------------
_recording: Optional[set] = None


def _integer_class(value: int):
    """How Triton specialises an integer argument: 1, 'D' or ''."""
    if value == 1:
        return 1
    return 'D' if value % 16 == 0 else ''


def kernel_variant(config: KernelConfig, args) -> KernelVariant:
    """The variant Triton compiles for a launch of ``config`` with the
    runtime arguments ``args`` (in :data:`_KERNEL_ARGS` order)."""
    integers = tuple(
        (name, _integer_class(int(value)))
        for (name, kind), value in zip(_KERNEL_ARGS[config.kernel], args)
        if kind == 'i32')
    return KernelVariant(config, integers)


@contextlib.contextmanager
def recorded_launches():
    """Collect the :class:`KernelVariant` of every launch in the block,
    launching nothing: the launchers run on tensors of the ``meta`` device
    (shapes without data), so the variants of any map size are listed in
    no time."""
    global _recording
    previous, _recording = _recording, set()
    try:
        yield _recording
    finally:
        _recording = previous


def _launch(config: KernelConfig, n_programs: int, *args):
    """Run one kernel configuration on a one-dimensional grid."""
    if _recording is not None:
        _recording.add(kernel_variant(config, args))
        return
    KERNELS[config.kernel][(n_programs, )](
        *args, **dict(config.constexprs), num_warps=config.num_warps)


def _check_launchable(x: Tensor):
    if x.device.type not in ('cuda', 'meta') and not _INTERPRETED:
        raise RuntimeError(
            f'the Triton HCO kernel got a tensor on {x.device}; Triton runs '
            'on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 '
            'before importing mmvheat.ops.triton_hco, or '
            'MMVHEAT_HCO_BACKEND=torch for the reference path')


def _aligned(t: Tensor) -> Tensor:
    """``t`` contiguous, its data 16-byte aligned (a copy if a view starts
    elsewhere)."""
    t = t.contiguous()
    if t.device.type != 'meta' and t.data_ptr() % _ALIGNMENT:
        t = t.clone()
    return t


def _batch_chunks(b: int, programs_per_image: int, need_gt: bool):
    """``(images per program, chunks)``: one image per program, or for
    grad_T chunks of images that each sum into one partial, about
    :data:`_TARGET_PROGRAMS` programs in all."""
    if not need_gt:
        return 1, b
    n_chunks = min(b, max(1, triton.cdiv(_TARGET_PROGRAMS,
                                         programs_per_image)))
    per_prog = triton.cdiv(b, n_chunks)
    return per_prog, triton.cdiv(b, per_prog)


def _slab_run(config, src, transfer, x, out_dtype, store_out, need_gt,
              rows_per_image, bases):
    """One launch of the fused or the row kernel (the same arguments but
    the bases): ``(out or None, grad_T or None)``, grad_T summed over the
    chunks' partials."""
    b, h, w, c = src.shape
    n_cblocks = triton.cdiv(c, dict(config.constexprs)['BC'])
    per_prog, n_chunks = _batch_chunks(b, rows_per_image * n_cblocks, need_gt)
    out = torch.empty(
        src.shape, dtype=out_dtype, device=src.device) if store_out else src
    gt = torch.empty(
        (n_chunks, h, w,
         c), dtype=torch.float32, device=src.device) if need_gt else transfer
    _launch(config, n_chunks * rows_per_image * n_cblocks, src, x, transfer,
            *bases, out, gt, b, h, w, c, per_prog, n_cblocks)
    return (out if store_out else None), (gt.sum(0) if need_gt else None)


def _fused_run(src, transfer, x, store_out, need_gt):
    """One fused-kernel launch; returns ``(out or None, gt or None)``."""
    b, h, w, c = src.shape
    hp, wp = _fused_sides(h, w)
    config = _fused_config(hp, wp, _TRITON_DTYPES[x.dtype], store_out, need_gt,
                           _dot_precision(src.device))
    return _slab_run(config, src, transfer, x, x.dtype, store_out, need_gt, 1,
                     (dct_basis(h, src.device), dct_basis(w, src.device)))


def _row_run(src, transfer, x, store_out, need_gt):
    """The row kernel on float32 maps between the transforms along H:
    ``(Dw^T (T * Dw src) or None, sum_b (Dw x) * (Dw src) or None)``, in one
    launch, or two for both on long rows."""
    b, h, w, c = src.shape
    wp = _row_side(w)
    if store_out and need_gt and wp > _ROW_BOTH_MAX:
        return (_row_run(src, transfer, x, True,
                         False)[0], _row_run(src, transfer, x, False, True)[1])
    config = _row_config(wp, store_out, need_gt, _dot_precision(src.device))
    return _slab_run(config, src, transfer, x, torch.float32, store_out,
                     need_gt, h, (dct_basis(w, src.device), ))


def _gemm(src: Tensor,
          along_h: bool,
          inverse: bool,
          out_dtype: torch.dtype,
          transfer: Optional[Tensor] = None) -> Tensor:
    """One DCT (or inverse, ``D^T``) along H or W of ``(B, H, W, C)``.

    Along H the matrices are the images, ``(H, W * C)``; along W the image
    rows, ``(W, C)``. With ``transfer`` ``(H, W, C)``, the input is
    multiplied by it first (it repeats every ``H * W * C`` elements).
    """
    b, h, w, c = src.shape
    g, n, r = (b, h, w * c) if along_h else (b * h, w, c)
    out = torch.empty(src.shape, dtype=out_dtype, device=src.device)
    config = _gemm_config(n, _TRITON_DTYPES[src.dtype],
                          _TRITON_DTYPES[out_dtype], inverse, transfer
                          is not None, _dot_precision(src.device))
    params = dict(config.constexprs)
    tiles_m = triton.cdiv(n, params['BM'])
    basis = dct_basis(n, src.device)
    t_batch = 1 if transfer is None else transfer.numel() // (n * r)
    # Without a transfer, t_ptr is unused; any float32 tensor keeps the
    # compiled signature the listed one.
    _launch(config,
            triton.cdiv(g * r, params['BN']) * tiles_m, src, out, basis,
            basis if transfer is None else transfer, n, r, t_batch, g * r,
            tiles_m)
    return out


def _tiled_spectrum(src: Tensor) -> Tensor:
    """``Dw (Dh src)`` per image, float32."""
    z = _gemm(src, True, False, torch.float32)
    return _gemm(z, False, False, torch.float32)


def _tiled_forward(x: Tensor, transfer: Tensor) -> Tensor:
    """The filter by the tiled path: along H a GEMM, along W the row kernel
    (two GEMMs for rows too long for it), along H the inverse GEMM."""
    z = _gemm(x, True, False, torch.float32)
    if _row_side(x.shape[2]) is not None:
        q = _row_run(z, transfer, z, True, False)[0]
    else:
        q = _gemm(
            _gemm(z, False, False, torch.float32), False, True, torch.float32,
            transfer)
    return _gemm(q, True, True, x.dtype)


def _tiled_backward(x: Tensor, transfer: Tensor, grad: Tensor, need_gx: bool,
                    need_gt: bool):
    """The gradients by the tiled path: ``grad`` (and ``x`` for grad_T)
    along H, then the row kernel filters ``grad``'s rows for grad_x and sums
    the product of the two spectra for grad_T (two GEMMs along W and torch
    ops for rows too long for it)."""
    zg = _gemm(grad, True, False, torch.float32)
    if _row_side(x.shape[2]) is not None:
        zx = _gemm(x, True, False, torch.float32) if need_gt else zg
        q, gt = _row_run(zg, transfer, zx, need_gx, need_gt)
        gx = _gemm(q, True, True, x.dtype) if need_gx else None
        return gx, gt
    grad_spectrum = _gemm(zg, False, False, torch.float32)
    gx = _tiled_inverse(grad_spectrum, transfer, x.dtype) if need_gx \
        else None
    gt = (_tiled_spectrum(x) * grad_spectrum).sum(0) if need_gt else None
    return gx, gt


def _grad_t_bytes(shape, rows_per_image: int, bc: int) -> int:
    """The bytes of grad_T's reduction: each chunk's float32 partial written
    by a kernel and read by the sum over chunks, which writes grad_T."""
    b, h, w, c = shape
    programs = rows_per_image * triton.cdiv(c, bc)
    chunks = _batch_chunks(b, programs, True)[1]
    return (2 * chunks + 1) * h * w * c * 4


def bytes_moved(path: str, shape, itemsize: int, train: bool) -> int:
    """Global-memory bytes the kernels of ``path`` move for a map of
    ``shape`` ``(B, H, W, C)``: each activation read or written once in its
    dtype (``itemsize`` bytes), each float32 map between two kernels
    written once and read where it is used, and in training grad_T's
    partials (one float32 map per chunk of the batch) and grad_T. The filter
    and the DCT matrices, one map's size or less whatever the batch and
    read through L2, are left out.

    Per element, for an ``s``-byte dtype: fused, read ``x`` and write ``y``,
    ``2 s`` (train: also read ``x`` and the output gradient, write
    ``grad_x``: ``5 s``). tiled, rows up to 128: ``x`` -> ``Dh x`` -> the row
    kernel -> ``y``, one float32 map each way, ``2 s + 16``; the backward
    writes ``Dh grad`` and ``Dh x``, reads both in the row kernel, which
    writes one map for the inverse, ``3 s + 24`` (``+ 4`` for rows over 64,
    where grad_x's pass reads ``Dh grad`` once more). Longer rows: two GEMMs
    along W, a float32 map more each way, ``2 s + 24``; backward
    ``3 s + 52``, where the gradient's spectrum serves both gradients and
    the product of the spectra is summed in torch.
    """
    s = itemsize
    numel = math.prod(shape)
    h, w = shape[1:3]
    if path == 'fused':
        forward, backward = 2 * s * numel, 3 * s * numel
        config = _fused_config(*_fused_sides(h, w), 'fp32', True, True, 'ieee')
        backward += _grad_t_bytes(shape, 1, dict(config.constexprs)['BC'])
    elif _row_side(w) is not None:
        wp = _row_side(w)
        forward = (2 * s + 16) * numel
        backward = (3 * s + (24 if wp <= _ROW_BOTH_MAX else 28)) * numel
        config = _row_config(wp, False, True, 'ieee')
        backward += _grad_t_bytes(shape, h, dict(config.constexprs)['BC'])
    else:
        forward = (2 * s + 24) * numel
        backward = (3 * s + 52) * numel + h * w * shape[3] * 4
    return forward + backward if train else forward


def _tiled_inverse(spectrum: Tensor, transfer: Tensor,
                   out_dtype: torch.dtype) -> Tensor:
    """``Dh^T (Dw^T (transfer * spectrum))`` per image."""
    q = _gemm(spectrum, False, True, torch.float32, transfer)
    return _gemm(q, True, True, out_dtype)


def _prepare(x: Tensor, transfer: Tensor, path: str):
    h, w = x.shape[1:3]
    if path not in kernel_paths(h, w):
        raise ValueError(f'path must be one of {kernel_paths(h, w)} for a '
                         f'{h} x {w} grid, got {path!r}')
    _check_launchable(x)
    return _aligned(x), _aligned(transfer.to(torch.float32))


def _on_device(x: Tensor):
    """Triton launches on the current device. (Autograd runs the backward
    on a thread already set to the tensors' device.)"""
    return torch.cuda.device(x.device) if x.is_cuda else \
        contextlib.nullcontext()


def launch_forward(x: Tensor, transfer: Tensor, path: str) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` by the kernels of ``path``.

    Args:
        x (Tensor): ``(B, H, W, C)``, a dtype of :data:`SUPPORTED_DTYPES`,
            on CUDA (on CPU when :func:`triton_interpret_enabled`).
        transfer (Tensor): ``(H, W, C)``, used in float32.
        path (str): A path of :func:`kernel_paths` for the grid.

    Returns:
        Tensor: The filtered map, in ``x``'s dtype.
    """
    x, transfer = _prepare(x, transfer, path)
    with _on_device(x):
        if path == 'fused':
            return _fused_run(x, transfer, x, True, False)[0]
        return _tiled_forward(x, transfer)


def launch_backward(x: Tensor, transfer: Tensor, grad: Tensor, need_gx: bool,
                    need_gt: bool, path: str):
    """The gradients of :func:`launch_forward` by the kernels of ``path``.

    Args:
        x, transfer (Tensor): The forward's inputs.
        grad (Tensor): The gradient of its output, ``x``'s shape.
        need_gx, need_gt (bool): Which gradients to compute.
        path (str): A path of :func:`kernel_paths` for the grid.

    Returns:
        tuple: ``grad_x`` (``x``'s dtype) or None, ``grad_transfer``
        (float32) or None.
    """
    x, transfer = _prepare(x, transfer, path)
    grad = _aligned(grad.to(x.dtype))
    with _on_device(x):
        if path == 'fused':
            # grad_x comes out in x's dtype (the kernel stores in out's
            # dtype).
            return _fused_run(grad, transfer, x, need_gx, need_gt)
        return _tiled_backward(x, transfer, grad, need_gx, need_gt)


def triton_supports(x: Tensor) -> bool:
    """Whether the kernels take ``x``: a non-empty channels-last map of a
    dtype in :data:`SUPPORTED_DTYPES` (any ``H`` and ``W``)."""
    return x.dtype in SUPPORTED_DTYPES and x.dim() >= 3 and x.numel() > 0
