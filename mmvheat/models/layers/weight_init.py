# Copyright (c) mmvheat contributors. All rights reserved.
"""The backbones' weight initialisation: their default ``init_cfg`` and a
rule that puts layers back at PyTorch's own initialisation.

mmengine's rules (``TruncNormal``, ``Constant``, ...) match layers by class
name. Where a model keeps some layers at the initialisation PyTorch gives
them on construction while a broader rule re-initialises their class (vHeat's
MLPs among its truncated-normal Linear layers), a later ``ResetParameters``
rule on the enclosing module puts them back.
"""
from mmengine.model.weight_init import (BaseInit, _get_bases_name,
                                        update_init_info)
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

__all__ = ['DEFAULT_INIT_CFG', 'ResetParametersInit']

#: Truncated-normal Linear layers and unit LayerNorms, the backbones' init.
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
    dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
]


@WEIGHT_INITIALIZERS.register_module(name='ResetParameters')
class ResetParametersInit(BaseInit):
    """Call ``reset_parameters()`` on every submodule of the matched layers.

    For ``nn.Linear`` and ``nn.Conv2d`` that is kaiming-uniform weights with
    ``a=sqrt(5)`` and biases uniform in ``+-1/sqrt(fan_in)``, as when they
    were constructed.

    Args:
        layer (str | list[str]): Class names of the modules whose
            submodules are reset.
    """

    def __init__(self, layer):
        super().__init__(layer=layer)

    def __call__(self, module: nn.Module):

        def init(m):
            names = {type(m).__name__, *_get_bases_name(m)}
            if self.wholemodule or set(self.layer) & names:
                for sub in m.modules():
                    if hasattr(sub, 'reset_parameters'):
                        sub.reset_parameters()

        module.apply(init)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self):
        return f'{type(self).__name__}: layer={self.layer}'
