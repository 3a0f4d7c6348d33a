# Copyright (c) mmvheat contributors. All rights reserved.
"""Compatibility with the libraries around mmvheat, set up on import.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True`` and refuses
any global it does not know. mmengine 0.10 checkpoints hold its message hub
(``HistoryBuffer`` objects, whose statistics methods pickle as
``getattr(buffer, 'mean')``) and numpy scalars and arrays, so resuming and
testing fail with ``Unsupported global: ...HistoryBuffer``.

:func:`allow_mmengine_checkpoints` adds exactly those globals to torch's
allowlist, keeping the safe loader: ``builtins.getattr`` is answered by a
function that only returns public methods of a ``HistoryBuffer``, since the
real ``getattr`` would let a crafted file reach arbitrary code.

:func:`allow_torchvision_without_ops` covers mmpretrain on CPU-only machines:
mmpretrain imports torchvision's pure-Python transforms, but torchvision's
CUDA wheels cannot load their C++ ops next to a CPU build of torch, and
torchvision then crashes at import while registering fake kernels for ops it
failed to define.
"""
import glob
import os.path as osp
import pickle
import sys
from importlib.util import find_spec

import torch

__all__ = ['allow_mmengine_checkpoints', 'allow_torchvision_without_ops']


def _history_buffer_getattr(obj, name: str):
    from mmengine.logging.history_buffer import HistoryBuffer
    owner = obj if isinstance(obj, type) else type(obj)
    if (isinstance(owner, type) and issubclass(owner, HistoryBuffer)
            and not name.startswith('_')
            and callable(getattr(HistoryBuffer, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'mmvheat refuses getattr({owner.__name__}, {name!r}) while loading '
        'a checkpoint with weights_only=True')


def _numpy_globals():
    import numpy as np
    try:
        multiarray = np._core.multiarray
    except AttributeError:  # numpy < 2
        multiarray = np.core.multiarray
    entries = [np.ndarray, np.dtype]
    # Files written under numpy 1 and 2 name these two differently.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries.append((multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((multiarray.scalar, f'{module}.scalar'))
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        entries.extend(
            cls for cls in vars(dtypes).values()
            if isinstance(cls, type) and issubclass(cls, np.dtype))
    return entries


def allow_mmengine_checkpoints():
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints."""
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:  # torch < 2.4 loads them without help
        return
    from mmengine.logging.history_buffer import HistoryBuffer
    add_safe_globals([HistoryBuffer,
                      (_history_buffer_getattr, 'builtins.getattr'),
                      (_history_buffer_getattr, '__builtin__.getattr')] +
                     _numpy_globals())


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
