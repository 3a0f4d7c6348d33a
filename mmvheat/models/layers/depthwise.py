# Copyright (c) mmvheat contributors. All rights reserved.
"""A depth-wise convolution whose weight is laid out for channels-last
inputs."""
from torch import nn

__all__ = ['depthwise_conv2d']


def depthwise_conv2d(channels: int, kernel_size: int) -> nn.Conv2d:
    """A depth-wise ``kernel_size`` convolution with 'same' padding, its
    weight laid out channels-last.

    The backbones run these convolutions on channels-last views of their
    maps, and torch's CPU kernels then give the weight's gradient
    channels-last strides: ``(k * k, 1, k, 1)`` for a ``(C, 1, k, k)``
    weight, the memory of the default ``(k * k, k * k, k, 1)`` under other
    strides. DistributedDataParallel lays its gradient buckets out as the
    parameters and copies, with a warning at every step, each gradient
    whose strides differ; a weight laid out as its gradient comes needs no
    copy. Values and initialisation are those of ``nn.Conv2d``.

    Args:
        channels (int): Input and output channels (one group each).
        kernel_size (int): An odd window side.
    """
    conv = nn.Conv2d(
        channels,
        channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=channels)
    weight = conv.weight.detach()
    laid_out = weight.new_empty(channels, kernel_size, kernel_size,
                                1).permute(0, 3, 1, 2)
    conv.weight = nn.Parameter(laid_out.copy_(weight))
    return conv
