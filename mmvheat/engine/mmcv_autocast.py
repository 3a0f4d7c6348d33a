# Copyright (c) mmvheat contributors. All rights reserved.
"""mmcv's compiled ops inside CPU autocast regions.

mmcv's compiled CPU kernels (NMS, RoIAlign, ...) take float32 only, so under
``torch.autocast('cpu')`` they receive bfloat16 or float16 tensors and fail
with ``expected scalar type Float``.
:func:`mmcv_ops_in_float32_under_cpu_autocast` runs them in float32 there,
as mixed-precision training and testing on the CPU need.
"""
import functools
import sys
from typing import Optional

import torch

from mmvheat.utils.torch_modes import autocast_enabled
from mmvheat.utils.versions import check_mmcv_version

__all__ = ['mmcv_ops_in_float32_under_cpu_autocast']


def _cast_floats(value, dtype: torch.dtype):
    """``value`` with its floating-point CPU tensors (in lists, tuples and
    dicts too) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.device.type == 'cpu':
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    return value


def _first_float_dtype(values) -> Optional[torch.dtype]:
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return None


def _float32_under_cpu_autocast(forward, backward):
    """``forward``/``backward`` of an autograd Function, run in float32
    with autocast off when called inside a CPU autocast region; outputs are
    cast back to the dtype of the first floating-point input, as a
    half-precision kernel would return them."""

    @functools.wraps(forward)
    def float32_forward(ctx, *args, **kwargs):
        ctx.mmvheat_float32 = autocast_enabled('cpu')
        if not ctx.mmvheat_float32:
            return forward(ctx, *args, **kwargs)
        dtype = _first_float_dtype(args)
        with torch.autocast('cpu', enabled=False):
            outputs = forward(ctx, *_cast_floats(args, torch.float32),
                              **_cast_floats(kwargs, torch.float32))
        return outputs if dtype is None else _cast_floats(outputs, dtype)

    @functools.wraps(backward)
    def float32_backward(ctx, *grads):
        if not getattr(ctx, 'mmvheat_float32', False):
            return backward(ctx, *grads)
        # Autograd casts the returned gradients to each input's dtype.
        with torch.autocast('cpu', enabled=False):
            return backward(ctx, *_cast_floats(grads, torch.float32))

    return float32_forward, float32_backward


def mmcv_ops_in_float32_under_cpu_autocast() -> int:
    """Run mmcv's compiled ops in float32 inside ``torch.autocast('cpu')``.

    Every ``torch.autograd.Function`` of ``mmcv.ops`` then casts its
    floating-point inputs (and, in backward, the incoming gradients) to
    float32 and runs with autocast off, returning its floating-point outputs
    in the dtype of its first floating-point input -- what mmdet expects of
    these ops under AMP (e.g. RoI features written into a tensor of the
    feature maps' dtype), and what their CUDA kernels give in half
    precision. Outside a CPU autocast region nothing changes. Safe to call
    repeatedly.

    Returns:
        int: How many functions were adapted by this call.

    Raises:
        IncompatibleVersionError: for an mmcv outside the supported range.
    """
    check_mmcv_version()
    import mmcv.ops  # noqa: F401  (imports every op module)
    adapted = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith('mmcv.ops.') or module is None:
            continue
        for cls in list(vars(module).values()):
            if not (isinstance(cls, type)
                    and issubclass(cls, torch.autograd.Function)
                    and cls.__module__ == name and 'forward' in vars(cls)
                    and not vars(cls).get('mmvheat_float32', False)):
                continue
            forward, backward = _float32_under_cpu_autocast(
                cls.forward, cls.backward)
            cls.forward = staticmethod(forward)
            if 'backward' in vars(cls):
                cls.backward = staticmethod(backward)
            cls.mmvheat_float32 = True
            adapted += 1
    return adapted
