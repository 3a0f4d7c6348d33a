# Copyright (c) mmvheat contributors. All rights reserved.
"""The Heat Conduction Operator (HCO) as pure tensor functions.

vHeat (Wang et al., "vHeat: Building Vision Models upon Heat Conduction",
CVPR 2025) treats a feature map ``u(x, y)`` on an ``H x W`` grid as a
temperature field with insulated borders (Neumann condition) and evolves it by
the heat equation ``du/dt = k * (u_xx + u_yy)``. In the cosine basis the
solution is exact::

    U   = DCT2D(u)                                  (orthonormal DCT-II)
    U_t = U * exp(-k * ((n * pi / H)^2 + (m * pi / W)^2))
    u_t = IDCT2D(U_t)

Here ``k`` is a per-frequency, per-channel exponent (the paper predicts it from
learnable frequency value embeddings). The two separable transforms cost
``O(C * H * W * (H + W))``, i.e. ``O(N^1.5)`` in the number of pixels ``N``.

All maps are channels-last, ``(..., H, W, C)``. The basis, the filter and the
reference path live in :mod:`mmvheat.ops.spectral`; :func:`spectral_filter`
hands each call to the implementation :mod:`mmvheat.ops.dispatch` picks.
"""
from torch import Tensor

from .dispatch import dispatch_spectral_filter
from .spectral import (dct2d, dct_basis, decay_map, frequency_energy,
                       heat_transfer, idct2d, spectral_filter_reference)

__all__ = [
    'dct_basis', 'decay_map', 'frequency_energy', 'heat_transfer', 'dct2d',
    'idct2d', 'spectral_filter', 'spectral_filter_reference', 'heat_conduction'
]


def spectral_filter(x: Tensor,
                    transfer: Tensor,
                    overwrite: bool = False) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` on a channels-last map.

    The same function as :func:`spectral_filter_reference`; on CUDA with
    Triton installed the dispatcher may run the Triton kernels instead
    (self-checked and autotuned, see :mod:`mmvheat.ops.dispatch`). The
    environment variable ``MMVHEAT_HCO_BACKEND=auto|torch|triton`` chooses.

    Args:
        x (Tensor): A channels-last map ``(..., H, W, C)``; float32, float16
            or bfloat16 (arithmetic in float32), or float64.
        transfer (Tensor): The per-frequency, per-channel filter
            ``(H, W, C)``.
        overwrite (bool): ``x`` is not needed afterwards, and the
            reference may write over it (see
            :func:`spectral_filter_reference`). Defaults to False.

    Returns:
        Tensor: The filtered map, shape and dtype of ``x``.
    """
    return dispatch_spectral_filter(x, transfer, overwrite)


def heat_conduction(x: Tensor, k: Tensor) -> Tensor:
    """Evolve ``x`` by the heat equation with per-frequency exponents ``k``.

    With a constant ``k`` this is the exact solution at unit time of
    ``du/dt = k * (u_xx + u_yy)`` on the grid with insulated borders, where
    the Laplacian's eigenvalues are ``(n*pi/H)^2 + (m*pi/W)^2``.

    Args:
        x (Tensor): ``(B, H, W, C)`` map (fp32, fp16 or bf16).
        k (Tensor): Non-negative exponents ``(H, W, C)``.

    Returns:
        Tensor: The evolved map, shape and dtype of ``x``.
    """
    return spectral_filter(x, heat_transfer(k))
