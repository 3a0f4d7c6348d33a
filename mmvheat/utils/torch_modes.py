# Copyright (c) mmvheat contributors. All rights reserved.
"""Which of torch's modes the code runs under: graph capture (TorchScript,
tracing, ONNX export, ``torch.compile``) and autocast.

Eager-only shortcuts (oneDNN fusions, data-dependent batch splits, the HCO
autotuner) must stay out of captured graphs, and float32-only code must
know when autocast would hand it half-precision tensors. Autocast exists
for some devices only (not for ``meta``, say): on the others it is off,
and turning it on or off there does nothing.
"""
import contextlib
from typing import ContextManager, Optional, Tuple

import torch

__all__ = [
    'is_capturing_graph', 'is_compiling', 'may_overwrite', 'autocast_enabled',
    'autocast_state', 'autocast'
]


def is_compiling() -> bool:
    """Whether ``torch.compile`` (Dynamo) is tracing the code."""
    compiler = getattr(torch, 'compiler', None)
    return compiler is not None and compiler.is_compiling()


def is_capturing_graph() -> bool:
    """Whether the code runs under TorchScript, tracing, ONNX export or
    ``torch.compile``, where eager-only shortcuts must stay out."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    return is_compiling()


def may_overwrite(*tensors: torch.Tensor) -> bool:
    """Whether maps computed from ``tensors`` may be written over in place:
    no graph is recorded through them, by autograd or a graph capture."""
    return not (is_capturing_graph()
                or torch.is_grad_enabled() and any(t.requires_grad
                                                   for t in tensors))


def _autocast_available(device_type: str) -> bool:
    is_available = getattr(torch.amp, 'is_autocast_available', None)
    if is_available is None:  # torch < 2.4
        return device_type in ('cpu', 'cuda')
    return is_available(device_type)


def autocast_enabled(device_type: str = 'cpu') -> bool:
    """``torch.is_autocast_enabled(device_type)`` on any torch 2.x and any
    device."""
    if not _autocast_available(device_type):
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def autocast_state(device_type: str) -> Tuple[bool, Optional[torch.dtype]]:
    """Whether autocast is on for ``device_type``, and its dtype (None on a
    device without autocast), to restore later with :func:`autocast`."""
    if not _autocast_available(device_type):
        return False, None
    return autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def autocast(device_type: str,
             enabled: bool = False,
             dtype: Optional[torch.dtype] = None) -> ContextManager:
    """``torch.autocast(device_type, dtype, enabled)``; on a device without
    autocast, a context that does nothing. Off by default."""
    if not _autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype, enabled=enabled)
