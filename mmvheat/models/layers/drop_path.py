# Copyright (c) mmvheat contributors. All rights reserved.
from torch import Tensor, nn


def drop_path(x: Tensor,
              drop_prob: float = 0.,
              training: bool = False) -> Tensor:
    """Stochastic depth per sample (Huang et al., ECCV 2016)."""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class DropPath(nn.Module):
    """Drop residual branches per sample during training.

    Args:
        drop_prob (float): Probability of dropping a branch. Defaults to 0.
    """

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'
