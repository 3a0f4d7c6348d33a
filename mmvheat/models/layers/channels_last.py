# Copyright (c) mmvheat contributors. All rights reserved.
"""Convolutions whose weights are laid out for channels-last inputs."""
from torch import nn

__all__ = ['conv2d_channels_last', 'depthwise_conv2d']


def conv2d_channels_last(*args, **kwargs) -> nn.Conv2d:
    """``nn.Conv2d(*args, **kwargs)`` with its weight laid out channels-last.

    The backbones run their convolutions on channels-last maps. With such
    an input, torch's CPU kernels copy a weight of the default layout into
    the input's at every call, and give the weight's gradient channels-last
    strides: ``(k * k * c, 1, k * c, c)`` for a ``(C_out, c, k, k)`` weight,
    where ``c`` is the input channels per group (for a depth-wise weight,
    ``(k * k, 1, k, 1)``: the memory of the default layout under other
    strides). DistributedDataParallel lays its gradient buckets out as the
    parameters and copies, with a warning at every step, each gradient
    whose strides differ. A weight laid out as the input is used as it is,
    and its gradient comes in its own layout. Values and initialisation are
    those of ``nn.Conv2d``.
    """
    conv = nn.Conv2d(*args, **kwargs)
    weight = conv.weight.detach()
    out_channels, group_channels, kh, kw = weight.shape
    laid_out = weight.new_empty(out_channels, kh, kw,
                                group_channels).permute(0, 3, 1, 2)
    conv.weight = nn.Parameter(laid_out.copy_(weight))
    return conv


def depthwise_conv2d(channels: int, kernel_size: int) -> nn.Conv2d:
    """A depth-wise ``kernel_size`` convolution with 'same' padding, its
    weight laid out channels-last (:func:`conv2d_channels_last`).

    Args:
        channels (int): Input and output channels (one group each).
        kernel_size (int): An odd window side.
    """
    return conv2d_channels_last(
        channels,
        channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=channels)
