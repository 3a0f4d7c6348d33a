# Copyright (c) mmvheat contributors. All rights reserved.
"""CPU fast paths: fused linear layers and cache-sized sub-batches.

:func:`fused_linear` computes ``activation(x @ W.T + b) + residual`` in one
call. When no gradient is needed and the map is a float32 CPU tensor, the
activation or the residual add runs inside the oneDNN matrix multiply as a
post-op (the fusion PyTorch's compiler uses on CPU), so the output is
written once instead of being read and written again per elementwise step.
Everywhere else -- under autograd, autocast, tracing or export, on other
devices or dtypes, or with ``torch.backends.mkldnn`` disabled -- it is
``F.linear`` followed by the same elementwise ops, so results agree to
float32 rounding either way. A weight packed once by
:func:`pack_linear_weight` into the blocked layout oneDNN computes with
spares the call its reordering of the weight (5-7% of a call at the
shapes of vHeat's blocks); it is used where the oneDNN call runs, the plain
weight everywhere else.

:func:`cpu_sub_batch_size` says how many images of a batch to process at a
time so that a piece of work stays within the CPU caches: large maps
otherwise pass through memory once per op, each fresh allocation faulted in
page by page. Images are independent, so the result is the same.
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmvheat.utils.torch_modes import autocast_enabled, is_capturing_graph

__all__ = [
    'ACTIVATIONS', 'cpu_sub_batch_size', 'in_chunks', 'in_cpu_sub_batches',
    'fused_linear', 'pack_linear_weight'
]

#: Activation name -> (eager function, oneDNN post-op, its algorithm).
ACTIVATIONS = {
    'gelu': (F.gelu, 'gelu', 'none'),  # exact (erf) GELU, as nn.GELU
    'silu': (F.silu, 'swish', ''),
}

_ONEDNN_OPS = getattr(torch.ops.mkldnn, '_linear_pointwise', None) if hasattr(
    torch.ops, 'mkldnn') else None
_ONEDNN_PACK = getattr(torch.ops.mkldnn, '_reorder_linear_weight',
                       None) if _ONEDNN_OPS is not None else None


def _onednn_enabled() -> bool:
    return (_ONEDNN_OPS is not None and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def _onednn_applies(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether the fused oneDNN call computes the same as the eager ops."""
    # A captured graph before torch.backends.mkldnn's checks, which would
    # break a torch.compile graph at every call.
    if x.device.type != 'cpu' or is_capturing_graph() or \
            not _onednn_enabled():
        return False
    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if autocast_enabled('cpu'):
        return False
    return x.numel() > 0 and x.is_contiguous()


def _residual_fuses(x: Tensor, weight: Tensor, residual: Tensor) -> bool:
    """Whether oneDNN can add ``residual``: one float32 value per output
    element, contiguous and needing no gradient (broadcasts stay eager)."""
    return (residual.dtype == torch.float32
            and not (torch.is_grad_enabled() and residual.requires_grad)
            and residual.shape == x.shape[:-1] + weight.shape[:1]
            and residual.is_contiguous())


def pack_linear_weight(weight: Tensor) -> Optional[Tensor]:
    """``weight`` ``(C_out, C_in)`` in oneDNN's blocked layout, for
    :func:`fused_linear`'s ``packed``: a copy, as large as the weight, that
    no longer follows it. None where :func:`fused_linear` cannot use it (a
    weight not float32 on the CPU, or oneDNN unavailable or disabled)."""
    if (_ONEDNN_PACK is None or not _onednn_enabled()
            or weight.device.type != 'cpu' or weight.dtype != torch.float32):
        return None
    with torch.no_grad():
        return _ONEDNN_PACK(weight.detach().contiguous())


def fused_linear(x: Tensor,
                 weight: Tensor,
                 bias: Optional[Tensor] = None,
                 activation: Optional[str] = None,
                 residual: Optional[Tensor] = None,
                 packed: Optional[Tensor] = None) -> Tensor:
    """``activation(F.linear(x, weight, bias)) + residual``.

    oneDNN takes one post-op per call here: the activation, or else the
    residual add.

    Args:
        x (Tensor): Input ``(..., C_in)``.
        weight (Tensor): ``(C_out, C_in)``.
        bias (Tensor, optional): ``(C_out, )``. Defaults to None.
        activation (str, optional): A key of :data:`ACTIVATIONS`, or None.
            Defaults to None.
        residual (Tensor, optional): Added to the (activated) output, with
            broadcasting. Defaults to None.
        packed (Tensor, optional): ``weight`` as :func:`pack_linear_weight`
            gives it, for the oneDNN call to use in its place. Defaults to
            None.

    Returns:
        Tensor: ``(..., C_out)``.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)} '
                         f'or None, got {activation!r}')
    if not _onednn_applies(x, weight, bias):
        y = F.linear(x, weight, bias)
        if activation is not None:
            y = ACTIVATIONS[activation][0](y)
    elif activation is None and residual is not None and _residual_fuses(
            x, weight, residual):
        return _ONEDNN_OPS.binary(x, residual,
                                  weight if packed is None else packed, bias,
                                  'add')
    else:
        post_op, algorithm = ('none', '') if activation is None else \
            ACTIVATIONS[activation][1:]
        y = _ONEDNN_OPS(x, weight if packed is None else packed, bias, post_op,
                        [], algorithm)
    return y if residual is None else y + residual


def cpu_sub_batch_size(x: Tensor,
                       max_bytes: int,
                       image_bytes: Optional[int] = None) -> int:
    """Images of ``x`` (batch first) to process together on the CPU.

    As many as fit in ``max_bytes``, at least one; the whole batch for
    tensors off the CPU, for ``max_bytes <= 0`` and while a graph is being
    captured (a traced split would fix the batch size).

    Args:
        x (Tensor): The batch.
        max_bytes (int): The budget.
        image_bytes (int, optional): What one image takes; defaults to its
            size in ``x``.
    """
    batch = x.shape[0]
    if (x.device.type != 'cpu' or max_bytes <= 0 or batch <= 1
            or is_capturing_graph()):
        return batch
    if image_bytes is None:
        image_bytes = x[0].numel() * x.element_size()
    return max(1, min(batch, max_bytes // max(image_bytes, 1)))


def in_chunks(fn: Callable[..., Tensor],
              inputs: Sequence[Optional[Tensor]],
              chunk: int,
              out: Optional[Tensor] = None) -> Tensor:
    """``fn`` over slices of ``chunk`` entries (along the first axis) of
    ``inputs`` (a None passes as None), each result written into ``out``
    as it comes.

    ``out`` (a new tensor by default) may be one of ``inputs`` where each
    slice of the result depends on the same slice of the inputs alone: a
    slice is read before it is written. With one slice, ``fn``'s own
    result (``out`` untouched).
    """
    size = next(t for t in inputs if t is not None).shape[0]
    if chunk >= size:
        return fn(*inputs)
    for start in range(0, size, chunk):
        part = fn(*(None if t is None else t[start:start + chunk]
                    for t in inputs))
        if out is None:
            out = part.new_empty((size, ) + part.shape[1:])
        out[start:start + part.shape[0]] = part
    return out


def in_cpu_sub_batches(fn: Callable[[Tensor], Tensor],
                       x: Tensor,
                       max_bytes: int,
                       image_bytes: Optional[int] = None,
                       out: Optional[Tensor] = None) -> Tensor:
    """``fn(x)`` for a ``fn`` that maps each image on its own, run on the
    sub-batches of :func:`cpu_sub_batch_size` (written into ``out`` as
    :func:`in_chunks` does)."""
    return in_chunks(fn, [x], cpu_sub_batch_size(x, max_bytes, image_bytes),
                     out)
