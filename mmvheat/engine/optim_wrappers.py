# Copyright (c) mmvheat contributors. All rights reserved.
from contextlib import contextmanager
from typing import Union

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

from .mmcv_autocast import mmcv_ops_in_float32_under_cpu_autocast

__all__ = ['CPUAmpOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """Mixed-precision training on the CPU.

    mmengine's ``AmpOptimWrapper`` asserts a GPU. This wrapper runs the
    forward pass under ``torch.autocast('cpu', dtype=...)`` and otherwise
    behaves as that wrapper (its backward, step and state dict are reused):

    * ``bfloat16`` keeps float32's exponent range, so gradients need no loss
      scaling and none is applied;
    * ``float16`` uses ``torch.amp.GradScaler('cpu')`` with ``loss_scale``,
      as on a GPU. Most CPUs lack float16 arithmetic, so it is slow.

    The heat conduction operator accumulates in float32 either way, and
    mmcv's compiled ops (NMS, RoIAlign, ...), which have float32 CPU kernels
    only, are run in float32 (see
    :func:`mmvheat.engine.mmcv_ops_in_float32_under_cpu_autocast`).

    Args:
        dtype (str | torch.dtype): ``'bfloat16'`` or ``'float16'``.
            Defaults to ``'bfloat16'``.
        loss_scale (str | float | dict): For float16: ``'dynamic'``, a fixed
            scale, or the arguments of ``GradScaler``. Defaults to
            ``'dynamic'``.
        **kwargs: Passed to :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self,
                 dtype: Union[str, torch.dtype] = 'bfloat16',
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 **kwargs):
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError('CPUAmpOptimWrapper casts to bfloat16 or '
                             f'float16, got {dtype}')
        # Not AmpOptimWrapper.__init__: it asserts a GPU and builds a CUDA
        # scaler. The attributes it sets are set here.
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = dtype
        self._scale_update_param = None
        scaler_kwargs = dict(enabled=dtype is torch.float16)
        if isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            scaler_kwargs['init_scale'] = loss_scale
        elif isinstance(loss_scale, dict):
            scaler_kwargs.update(loss_scale)
        elif loss_scale != 'dynamic':
            raise TypeError('loss_scale must be "dynamic", a float or a '
                            f'dict, got {loss_scale!r}')
        self.loss_scaler = torch.amp.GradScaler('cpu', **scaler_kwargs)

        try:
            mmcv_ops_in_float32_under_cpu_autocast()
        except ImportError:  # no mmcv with ops: nothing to adapt
            pass

    @contextmanager
    def optim_context(self, model: nn.Module):
        with OptimWrapper.optim_context(self, model), torch.autocast(
                'cpu', dtype=self.cast_dtype):
            yield
