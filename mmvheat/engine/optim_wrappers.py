# Copyright (c) mmvheat contributors. All rights reserved.
from contextlib import contextmanager
from typing import Union

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from torch import nn

__all__ = ['CPUAmpOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed-precision training on the CPU.

    mmengine's ``AmpOptimWrapper`` requires a GPU. This wrapper runs the
    forward pass under ``torch.autocast('cpu', dtype=bfloat16)``; bfloat16
    keeps float32's exponent range, so gradients need no loss scaling. The
    heat conduction operator accumulates in float32 either way.

    Args:
        dtype (str | torch.dtype): The autocast dtype; only bfloat16 is
            supported on the CPU. Defaults to ``'bfloat16'``.
        **kwargs: Passed to :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self,
                 dtype: Union[str, torch.dtype] = 'bfloat16',
                 **kwargs):
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype is not torch.bfloat16:
            raise ValueError('CPUAmpOptimWrapper supports bfloat16 only: '
                             'float16 on the CPU would need loss scaling '
                             f'and is slow; got {dtype}')
        super().__init__(**kwargs)
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
                'cpu', dtype=self.cast_dtype):
            yield
