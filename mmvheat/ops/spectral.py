# Copyright (c) mmvheat contributors. All rights reserved.
"""The cosine basis of the Heat Conduction Operator and its reference path.

Everything here is plain tensor algebra on channels-last maps
``(..., H, W, C)``: the orthonormal DCT-II matrix, the squared wave numbers
and decay map of an ``H x W`` grid with insulated borders, the filter
``decay ** k``, the separable 2D transforms and the reference spectral
filter ``IDCT2D(DCT2D(x) * transfer)`` (four float32 matmuls per map) with
its gradients in closed form. The physics is computed here: the decay map
is the exact unit-time decay of each cosine mode of the heat equation on a
grid with insulated borders, and :func:`heat_transfer` raises it to the
learned exponents ``k``. :mod:`mmvheat.ops.heat_conduction` holds the
operator's public entry points (``heat_conduction``, ``spectral_filter``)
and the derivation in its docstring; the Triton kernels
(:mod:`mmvheat.ops.triton_hco`) and the dispatcher
(:mod:`mmvheat.ops.dispatch`) build on this module, which imports neither.

Analytic tensors are built in float64 on the device they are asked for (no
host-to-device copy; on a device without float64, such as Apple's MPS, on
the CPU), cast once and cached per ``(size, device, dtype)``, in caches
sized for a detection epoch (:data:`BASES_CACHED`, :data:`MAPS_CACHED`).
They are built outside ``torch.inference_mode`` even when first asked for
inside it: a cached tensor outlives the call, and an inference tensor
cannot be saved for a later backward pass.
"""
import math
from functools import lru_cache
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from mmvheat.utils.torch_modes import autocast, is_compiling, may_overwrite

__all__ = [
    'dct_basis', 'decay_map', 'frequency_energy', 'heat_transfer', 'dct2d',
    'idct2d', 'spectral_filter_reference', 'spectral_filter_reference_grads'
]

# The transforms accumulate in float32 whatever the activation dtype.
_LOW_PRECISION = (torch.float16, torch.bfloat16)

# Cache sizes. A COCO epoch at mmdet's keep-ratio resize to 1333 x 800,
# padded to 32 per batch of two images (every image has 640 pixels on its
# longer side), meets at most 372 padded input sizes: 372 maps per stage,
# 1488 over vHeat's four stages (126 MiB of float32 energy maps if all are
# met), built from 105 transform lengths. A cache smaller than an epoch's
# sizes rebuilds a tensor at every stage of every batch once it is full.
#: Entries of the DCT basis cache: the 105 lengths in float32 (the model),
#: float64 (the self-check) and bfloat16 (the published formulation), with
#: room to spare.
BASES_CACHED = 512
#: Entries of the frequency-energy cache: the 1488 maps of a COCO epoch,
#: with room to spare.
MAPS_CACHED = 2048


def _canonical_device(device) -> torch.device:
    device = torch.device('cpu' if device is None else device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return device


def _float64_device(device: torch.device) -> torch.device:
    """Where a float64 tensor for ``device`` is built: there, unless it has
    no float64 arithmetic."""
    return torch.device('cpu') if device.type == 'mps' else device


def _from_cache(cached: Callable[..., Tensor], *args) -> Tensor:
    """``cached(*args)``; under ``torch.compile`` the function under the
    cache, whose result the graph computes (Dynamo cannot trace a cache
    lookup)."""
    return cached.__wrapped__(*args) if is_compiling() else cached(*args)


@lru_cache(maxsize=BASES_CACHED)
@torch.inference_mode(False)
def _cached_dct_basis(n: int, device: torch.device,
                      dtype: torch.dtype) -> Tensor:
    build = _float64_device(device)
    x = torch.arange(n, dtype=torch.float64, device=build)
    freq = torch.arange(n, dtype=torch.float64, device=build)[:, None]
    basis = torch.cos(math.pi * freq * (x + 0.5) / n) * math.sqrt(2.0 / n)
    basis[0] = math.sqrt(1.0 / n)
    return basis.to(device=device, dtype=dtype)


def dct_basis(n: int,
              device: Optional[torch.device] = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal DCT-II matrix of size ``n``.

    ``D[f, x] = s_f * cos(pi * f * (x + 0.5) / n)`` with ``s_0 = sqrt(1/n)``
    and ``s_f = sqrt(2/n)``, so ``D @ u`` equals
    ``scipy.fft.dct(u, type=2, norm='ortho')`` and ``D.T`` is its inverse.

    Args:
        n (int): The transform length, at least 1.
        device (torch.device, optional): Defaults to CPU.
        dtype (torch.dtype): Defaults to ``torch.float32``.

    Returns:
        Tensor: A cached, read-only ``(n, n)`` matrix. Do not modify in place.
    """
    if n < 1:
        raise ValueError(f'DCT size must be positive, got {n}')
    return _from_cache(_cached_dct_basis, int(n), _canonical_device(device),
                       dtype)


@lru_cache(maxsize=MAPS_CACHED)
@torch.inference_mode(False)
def _cached_frequency_energy(h: int, w: int, device: torch.device,
                             dtype: torch.dtype) -> Tensor:
    build = _float64_device(device)
    a = torch.linspace(
        0, math.pi, h + 1, dtype=torch.float64, device=build)[:h]
    b = torch.linspace(
        0, math.pi, w + 1, dtype=torch.float64, device=build)[:w]
    energy = a[:, None]**2 + b[None, :]**2
    return energy.to(device=device, dtype=dtype)


def frequency_energy(h: int,
                     w: int,
                     device: Optional[torch.device] = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """The squared wave numbers ``(n*pi/H)^2 + (m*pi/W)^2`` of an H x W grid.

    This is ``-log(decay_map(h, w))``; it is what multiplies ``k`` in the
    exponent of the heat kernel.

    Returns:
        Tensor: A cached ``(h, w)`` map.
    """
    if h < 1 or w < 1:
        raise ValueError(f'grid size must be positive, got {h} x {w}')
    return _from_cache(_cached_frequency_energy, int(h), int(w),
                       _canonical_device(device), dtype)


def decay_map(h: int,
              w: int,
              device: Optional[torch.device] = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """The unit-time decay ``exp(-((n*pi/H)^2 + (m*pi/W)^2))`` per frequency.

    Frequencies follow ``linspace(0, pi, H + 1)[:H]``, as in the paper.

    Returns:
        Tensor: An ``(h, w)`` map with ``decay[0, 0] == 1``.
    """
    return torch.exp(-frequency_energy(h, w, device, torch.float64)).to(dtype)


def heat_transfer(k: Tensor) -> Tensor:
    """The per-frequency filter ``decay_map ** k`` for an exponent map ``k``.

    Computed as ``exp(-k * energy)`` in float32 (float64 for a float64
    ``k``), which equals ``decay ** k`` without forming the tiny ``decay``
    values first.

    Args:
        k (Tensor): Non-negative exponents of shape ``(H, W, C)``.

    Returns:
        Tensor: The filter of shape ``(H, W, C)``, at least float32.
    """
    if k.dim() != 3:
        raise ValueError(f'k must be (H, W, C), got shape {tuple(k.shape)}')
    h, w, _ = k.shape
    dtype = torch.promote_types(k.dtype, torch.float32)
    energy = frequency_energy(h, w, k.device, dtype)
    return torch.exp(-k.to(dtype) * energy[:, :, None])


def _separable_transform(x: Tensor,
                         basis_h: Tensor,
                         basis_w: Tensor,
                         out: Optional[Tensor] = None) -> Tensor:
    """Apply ``basis_h`` along H and ``basis_w`` along W of ``(B, H, W, C)``,
    into ``out`` (contiguous, ``x``'s shape; ``x`` itself may be it) when
    given."""
    b, h, w, c = x.shape
    # Along H: one GEMM per image on an (H, W*C) matrix.
    along_h = torch.matmul(basis_h, x.reshape(b, h, w * c)).view(b * h, w, c)
    # Along W: one small GEMM per row on a (W, C) matrix.
    if out is None:
        return torch.matmul(basis_w, along_h).view(b, h, w, c)
    torch.matmul(basis_w, along_h, out=out.view(b * h, w, c))
    return out


#: The largest map (bytes) an overwriting filter transforms through one
#: buffer of its size. A larger one is transformed through a buffer of this
#: size, a slab at a time, and written back.
OVERWRITE_BUFFER_BYTES = 16 << 20


def _separable_transform_(x: Tensor, basis_h: Tensor,
                          basis_w: Tensor) -> Tensor:
    """:func:`_separable_transform` written over ``x`` (contiguous)."""
    if x.nbytes <= OVERWRITE_BUFFER_BYTES:
        return _separable_transform(x, basis_h, basis_w, out=x)
    b, h, w, c = x.shape
    # Along H each column is transformed on its own, along W each row.
    for basis, maps, axis in ((basis_h, x.view(b, h, w * c), 2),
                              (basis_w, x.view(b * h, w, c), 0)):
        step = max(1, OVERWRITE_BUFFER_BYTES * maps.shape[axis] // x.nbytes)
        for slab in maps.split(step, axis):
            slab.copy_(torch.matmul(basis, slab))
    return x


def _as_batched_float(x: Tensor):
    if x.dim() < 3:
        raise ValueError('expected a channels-last map (..., H, W, C), got '
                         f'shape {tuple(x.shape)}')
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    if x.dtype in _LOW_PRECISION:
        x = x.float()
    return x, lead


def dct2d(x: Tensor) -> Tensor:
    """Orthonormal 2D DCT-II over the (H, W) axes of ``(..., H, W, C)``."""
    out_dtype = x.dtype
    x, lead = _as_batched_float(x)
    with autocast(x.device.type):
        h, w = x.shape[1:3]
        y = _separable_transform(x, dct_basis(h, x.device, x.dtype),
                                 dct_basis(w, x.device, x.dtype))
    return y.reshape(*lead, *y.shape[1:]).to(out_dtype)


def idct2d(x: Tensor) -> Tensor:
    """Inverse of :func:`dct2d` (the orthonormal DCT-III)."""
    out_dtype = x.dtype
    x, lead = _as_batched_float(x)
    with autocast(x.device.type):
        h, w = x.shape[1:3]
        y = _separable_transform(x,
                                 dct_basis(h, x.device, x.dtype).t(),
                                 dct_basis(w, x.device, x.dtype).t())
    return y.reshape(*lead, *y.shape[1:]).to(out_dtype)


def spectral_filter_reference(x: Tensor,
                              transfer: Tensor,
                              overwrite: bool = False) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` with plain tensor algebra.

    Args:
        x (Tensor): A channels-last map ``(B, H, W, C)``; float32, float16 or
            bfloat16. Arithmetic runs in float32.
        transfer (Tensor): The per-frequency, per-channel filter
            ``(H, W, C)``.
        overwrite (bool): ``x`` is not needed afterwards: each transform
            writes over its input, so that the filter holds one buffer
            besides ``x`` (a map's size, at most
            :data:`OVERWRITE_BUFFER_BYTES`) instead of two maps. Only where
            no graph is recorded through ``x`` (else ignored); ``x``'s
            values are then lost. Defaults to False.

    Returns:
        Tensor: The filtered map, in the dtype of ``x``.
    """
    out_dtype = x.dtype
    overwrite = overwrite and may_overwrite(x)
    x, lead = _as_batched_float(x)
    if transfer.shape != x.shape[1:]:
        raise ValueError(f'transfer of shape {tuple(transfer.shape)} does not '
                         f'match the map {tuple(x.shape[1:])}')
    with autocast(x.device.type):
        h, w = x.shape[1:3]
        basis_h = dct_basis(h, x.device, x.dtype)
        basis_w = dct_basis(w, x.device, x.dtype)
        if overwrite:
            spectrum = _separable_transform_(x.contiguous(), basis_h, basis_w)
            y = _separable_transform_(
                spectrum.mul_(transfer.to(x.dtype)), basis_h.t(), basis_w.t())
        else:
            spectrum = _separable_transform(x, basis_h, basis_w)
            spectrum = spectrum * transfer.to(x.dtype)
            y = _separable_transform(spectrum, basis_h.t(), basis_w.t())
    return y.reshape(*lead, *y.shape[1:]).to(out_dtype)


def spectral_filter_reference_grads(
        x: Tensor,
        transfer: Tensor,
        grad: Tensor,
        need_x: bool = True,
        need_transfer: bool = True
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The gradients of :func:`spectral_filter_reference` in closed form.

    The filter is ``A^T diag(T) A`` with ``A = Dh (x) Dw`` orthonormal, a
    symmetric map, so ``grad_x`` is the same filter applied to ``grad`` and
    ``grad_transfer = sum_b DCT2D(x[b]) * DCT2D(grad[b])``. Plain tensor
    algebra: the results are differentiable again (double backward) when
    autograd records them.

    Args:
        x (Tensor): The filter's input ``(..., H, W, C)``.
        transfer (Tensor): The filter ``(H, W, C)``.
        grad (Tensor): The gradient of the output, ``x``'s shape.
        need_x (bool): Compute ``grad_x``. Defaults to True.
        need_transfer (bool): Compute ``grad_transfer``. Defaults to True.

    Returns:
        tuple: ``grad_x`` in ``grad``'s dtype (or None), ``grad_transfer``
        in the arithmetic dtype, float32 or float64 (or None).
    """
    grad_x = spectral_filter_reference(grad, transfer) if need_x else None
    grad_transfer = None
    if need_transfer:
        xs, _ = _as_batched_float(x)
        gs, _ = _as_batched_float(grad)
        grad_transfer = (dct2d(xs) * dct2d(gs.to(xs.dtype))).sum(0)
    return grad_x, grad_transfer
