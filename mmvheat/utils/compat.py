# Copyright (c) mmvheat contributors. All rights reserved.
"""Compatibility with the libraries around mmvheat, set up on import.

:func:`allow_torchvision_without_ops` covers mmpretrain on CPU-only machines:
mmpretrain imports torchvision's pure-Python transforms, but torchvision's
CUDA wheels cannot load their C++ ops next to a CPU build of torch, and
torchvision then crashes at import while registering fake kernels for ops it
failed to define.

(Loading mmengine checkpoints under torch >= 2.6 is
:mod:`mmvheat.utils.checkpoint_loading`; the version checks are
:mod:`mmvheat.utils.versions`.)
"""
import glob
import os.path as osp
import sys
from importlib.util import find_spec

import torch

__all__ = ['allow_torchvision_without_ops']

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
