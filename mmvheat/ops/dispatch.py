# Copyright (c) mmvheat contributors. All rights reserved.
"""Choice of the implementation behind :func:`spectral_filter`.

* ``auto`` (default): the Triton kernel (:mod:`mmvheat.ops.triton_hco`) for
  CUDA tensors when Triton can be imported, the reference (four float32
  matmuls, :func:`spectral_filter_reference`) otherwise.
* The environment variable ``MMVHEAT_HCO_BACKEND`` forces a path:
  ``torch`` always takes the reference; ``triton`` takes the kernel on any
  device -- on CPU tensors only with ``TRITON_INTERPRET=1`` (Triton's
  interpreter), else a RuntimeError says so. ``auto`` or empty is the default.
  It is read at every call.

Inputs the kernel does not take -- float64 maps, ``H`` or ``W`` above 256,
empty maps -- go to the reference whatever the setting, so the operator keeps
its full domain; :func:`hco_backend` tells which path a tensor gets.
"""
import os
from typing import Optional

import torch
from torch import Tensor

from .heat_conduction import spectral_filter_reference

__all__ = ['HCO_BACKEND_ENV', 'HCO_BACKENDS', 'hco_backend',
           'triton_available', 'dispatch_spectral_filter']

#: The environment variable that forces a backend.
HCO_BACKEND_ENV = 'MMVHEAT_HCO_BACKEND'
#: Its allowed values ('' means 'auto').
HCO_BACKENDS = ('auto', 'torch', 'triton')

_triton_module = None
_triton_error: Optional[BaseException] = None


def _load_triton_hco():
    """The kernel module, or None when Triton cannot be imported."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            from . import triton_hco
            _triton_module = triton_hco
        except ImportError as e:  # no (usable) triton
            _triton_error = e
    return _triton_module


def triton_available() -> bool:
    """Whether Triton can be imported (not whether a GPU is present)."""
    return _load_triton_hco() is not None


def _requested_backend() -> str:
    value = os.environ.get(HCO_BACKEND_ENV, '').strip().lower() or 'auto'
    if value not in HCO_BACKENDS:
        raise ValueError(
            f'{HCO_BACKEND_ENV}={os.environ[HCO_BACKEND_ENV]!r} is not one of '
            f'{", ".join(HCO_BACKENDS)}')
    return value


def hco_backend(x: Optional[Tensor] = None) -> str:
    """``'triton'`` or ``'torch'``: the path :func:`spectral_filter` takes.

    Args:
        x (Tensor, optional): The map to filter. Without it, the answer is
            for a float32 map on the default device (CUDA when available).

    Raises:
        ValueError: ``MMVHEAT_HCO_BACKEND`` has a value not in
            :data:`HCO_BACKENDS`.
        RuntimeError: ``MMVHEAT_HCO_BACKEND=triton`` but Triton cannot run
            on ``x`` (not installed, or a CPU tensor without
            ``TRITON_INTERPRET=1``).
    """
    requested = _requested_backend()
    if requested == 'torch':
        return 'torch'
    if x is None:
        is_cuda = torch.cuda.is_available()
        device = 'cuda' if is_cuda else 'cpu'
    else:
        is_cuda, device = x.is_cuda, x.device
    module = _load_triton_hco()
    if module is None:
        if requested == 'auto':
            return 'torch'
        raise RuntimeError(
            f'{HCO_BACKEND_ENV}=triton but Triton cannot be imported '
            f'({_triton_error}); install it or unset {HCO_BACKEND_ENV}')
    if x is not None and not module.triton_supports(x):
        return 'torch'
    if requested == 'auto':
        return 'triton' if is_cuda else 'torch'
    if not is_cuda and not module.triton_interpret_enabled():
        raise RuntimeError(
            f'{HCO_BACKEND_ENV}=triton on a tensor on {device}: Triton runs '
            'CPU tensors only in its interpreter; set TRITON_INTERPRET=1 as '
            f'well, or {HCO_BACKEND_ENV}=torch')
    return 'triton'


def dispatch_spectral_filter(x: Tensor, transfer: Tensor) -> Tensor:
    """:func:`spectral_filter` by the backend :func:`hco_backend` picks."""
    if hco_backend(x) == 'triton':
        return _triton_module.spectral_filter_triton(x, transfer)
    return spectral_filter_reference(x, transfer)
