# Copyright (c) mmvheat contributors. All rights reserved.
"""What a forward pass keeps for its backward pass, tensor by tensor.

A ``saved_tensors_hooks`` pack hook sees every tensor autograd saves, with
its shape, dtype and bytes and the block running; the graph behind the
outputs then names the ``grad_fn`` keeping it. Tensors are counted once per
storage: a tensor saved by two ops, or a view of one already saved, costs
nothing more.
"""
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ['Saved', 'record_saved', 'saved_bytes', 'per_module']


class Saved(NamedTuple):
    """One storage kept for the backward pass."""
    module: str
    op: str
    shape: tuple
    dtype: torch.dtype
    nbytes: int


def _savers(outputs: List[Tensor]) -> Dict[int, str]:
    """Storage -> the name of the first ``grad_fn`` found keeping it, over
    the graph behind ``outputs``."""
    savers: Dict[int, str] = {}
    nodes = [t.grad_fn for t in outputs if t.grad_fn is not None]
    visited = set()
    while nodes:
        node = nodes.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        values = list(getattr(node, 'saved_tensors', None) or ())
        values += [getattr(node, a) for a in dir(node) if a[:7] == '_saved_']
        for value in values:
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, Tensor):
                    savers.setdefault(t.untyped_storage().data_ptr(),
                                      type(node).__name__)
        nodes.extend(next_node for next_node, _ in node.next_functions)
    return savers


def record_saved(
    fn: Callable,
    *inputs,
    exclude: Iterable[Tensor] = (),
    block_types: tuple = ()
) -> List[Saved]:
    """Run ``fn(*inputs)`` and return what it keeps for backward.

    Args:
        fn (Callable): A module or function.
        *inputs: Its arguments.
        exclude (Iterable[Tensor]): Tensors whose storages are not counted
            (the parameters). Defaults to ().
        block_types (tuple): Module classes inside ``fn`` to attribute
            entries to (the innermost running one); ``-`` stands for the
            rest. Defaults to ().

    Returns:
        list[Saved]: One entry per storage, in the order saved.
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    running = ['-']
    packed: Dict[int, tuple] = {}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in excluded and ptr not in packed and storage.nbytes():
            packed[ptr] = (running[-1], tuple(t.shape), t.dtype,
                           storage.nbytes())
        return t

    handles = []
    modules = fn.named_modules() if isinstance(fn, nn.Module) else ()
    for name, module in modules:
        if block_types and isinstance(module, block_types):
            handles += [
                module.register_forward_pre_hook(
                    lambda m, a, name=name: running.append(name)),
                module.register_forward_hook(
                    lambda m, a, o: running.pop() and None)
            ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = fn(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    savers = _savers(outputs)
    return [
        Saved(module, savers.get(ptr, '?'), shape, dtype, nbytes)
        for ptr, (module, shape, dtype, nbytes) in packed.items()
    ]


def saved_bytes(fn: Callable, *inputs, exclude: Iterable[Tensor] = ()) -> int:
    """Bytes ``fn(*inputs)`` keeps for backward (see :func:`record_saved`).
    """
    return sum(
        entry.nbytes for entry in record_saved(fn, *inputs, exclude=exclude))


def per_module(saved: List[Saved]) -> Dict[str, int]:
    """Bytes kept per module, in the order they ran."""
    totals: Dict[str, int] = defaultdict(int)
    for entry in saved:
        totals[entry.module] += entry.nbytes
    return dict(totals)
