# Copyright (c) mmvheat contributors. All rights reserved.
"""Environment checks and compatibility with the libraries around us.

:func:`check_mm_versions` fails early, with the fix, on an unsupported
mmengine or mmcv. (Loading mmengine checkpoints under torch >= 2.6 is
:mod:`mmvheat.utils.checkpoint_loading`.)

:func:`allow_torchvision_without_ops` covers mmpretrain on CPU-only machines:
mmpretrain imports torchvision's pure-Python transforms, but torchvision's
CUDA wheels cannot load their C++ ops next to a CPU build of torch, and
torchvision then crashes at import while registering fake kernels for ops it
failed to define.

:func:`mmcv_ops_in_float32_under_cpu_autocast` covers mixed precision on the
CPU: mmcv's compiled CPU kernels (NMS, RoIAlign, ...) take float32 only, so
under ``torch.autocast('cpu')`` they receive bfloat16 or float16 tensors and
fail with ``expected scalar type Float``.
"""
import functools
import glob
import os.path as osp
import sys
from importlib import metadata
from importlib.util import find_spec
from typing import Optional

import torch

from mmvheat.ops.cpu import cpu_autocast_enabled

__all__ = [
    'check_mm_versions', 'allow_torchvision_without_ops',
    'mmcv_ops_in_float32_under_cpu_autocast'
]

MMENGINE_RANGE = ('0.10.0', '1.0.0')
MMCV_RANGE = ('2.0.0', '2.2.0')


def _release(version: str):
    parts = []
    for part in version.split('+')[0].split('.')[:3]:
        digits = ''.join(ch for ch in part if ch.isdigit()) or '0'
        parts.append(int(digits))
    return tuple(parts)


def _check(package: str, installed: str, bounds, hint: str):
    low, high = bounds
    if not _release(low) <= _release(installed) < _release(high):
        raise ImportError(
            f'mmvheat needs {package}>={low},<{high}, but {package} '
            f'{installed} is installed. {hint}')


def check_mm_versions():
    """Fail early, with the fix, on an unsupported mmengine or mmcv."""
    import mmengine
    _check('mmengine', mmengine.__version__, MMENGINE_RANGE,
           f"Run: python -m pip install 'mmengine>={MMENGINE_RANGE[0]},"
           f"<{MMENGINE_RANGE[1]}'")
    # mmcv is needed by the detection/segmentation configs only; check its
    # version from the metadata so that ``import mmvheat`` stays light.
    if find_spec('mmcv') is None:
        return
    try:
        installed = metadata.version('mmcv')
    except metadata.PackageNotFoundError:
        return  # mmcv-lite or a source tree: ops are checked where used
    _check('mmcv', installed, MMCV_RANGE,
           'mmdet 3.3 and mmseg 1.2 need it with its compiled ops; run '
           'bash tools/setup_env.sh, or see the README.')


# Ops for which torchvision registers fake kernels even without its library.
_TORCHVISION_FAKE_OPS = {
    'nms': '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms': '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
}


def allow_torchvision_without_ops():
    """Let torchvision import when its compiled ops cannot load.

    Only when torchvision is installed, not yet imported, and its ``_C``
    library fails to load: the schemas torchvision registers fake kernels
    for are declared, so its pure-Python modules import. Its compiled ops
    (``nms``, ``roi_align``, ...) still raise when called; mmdet and mmseg use
    mmcv's instead.
    """
    if 'torchvision' in sys.modules:
        return
    spec = find_spec('torchvision')
    if spec is None or spec.origin is None:
        return
    libraries = glob.glob(osp.join(osp.dirname(spec.origin), '_C.*so'))
    try:
        if libraries:
            torch.ops.load_library(libraries[0])
            return
    except (ImportError, OSError):
        pass
    for name, schema in _TORCHVISION_FAKE_OPS.items():
        try:
            torch.library.define(f'torchvision::{name}', schema)
        except RuntimeError:
            pass  # already defined


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
        ctx.mmvheat_float32 = cpu_autocast_enabled()
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
    """
    import mmcv.ops  # noqa: F401  (imports every op module)
    adapted = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith('mmcv.ops.') or module is None:
            continue
        for cls in list(vars(module).values()):
            if not (isinstance(cls, type)
                    and issubclass(cls, torch.autograd.Function)
                    and cls.__module__ == name
                    and 'forward' in vars(cls)
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
