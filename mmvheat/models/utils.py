# Copyright (c) mmvheat contributors. All rights reserved.
from typing import Iterable, Sequence, Tuple, Union

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['parse_out_indices', 'freeze_modules', 'norms_to_eval']

# Layers that ``norm_eval`` keeps in eval mode while training.
NORM_LAYERS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def parse_out_indices(out_indices: Union[int, Sequence[int]],
                      num_stages: int) -> Tuple[int, ...]:
    """Normalise ``out_indices`` (an int or ints, negatives allowed)."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    parsed = []
    for index in out_indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices must be in [-{num_stages}, '
                             f'{num_stages}), got {index}')
        parsed.append(index % num_stages)
    return tuple(parsed)


def freeze_modules(modules: Iterable[nn.Module]) -> None:
    """Eval mode and no gradients, for ``frozen_stages``."""
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False


def norms_to_eval(model: nn.Module) -> None:
    """Put every normalization layer of ``model`` in eval mode."""
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            module.eval()
