# Copyright (c) mmvheat contributors. All rights reserved.
"""Which of torch's modes the code runs under: graph capture (TorchScript,
tracing, ONNX export, ``torch.compile``) and autocast.

Eager-only shortcuts (oneDNN fusions, data-dependent batch splits, the HCO
autotuner) must stay out of captured graphs, and float32-only code must
know when autocast would hand it half-precision tensors.
"""
import torch

__all__ = [
    'is_capturing_graph', 'is_compiling', 'may_overwrite', 'autocast_enabled'
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


def autocast_enabled(device_type: str = 'cpu') -> bool:
    """``torch.is_autocast_enabled(device_type)`` on any torch 2.x."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()
