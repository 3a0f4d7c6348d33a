# Copyright (c) mmvheat contributors. All rights reserved.
"""The check of a backbone's input, in words about images.

The stem's convolutions would refuse a wrong input too, in words about
their kernels and weights; :func:`check_images` says what the backbone
takes instead.
"""
from torch import Tensor, nn

from mmvheat.utils.torch_modes import autocast_enabled, is_capturing_graph

__all__ = ['check_images']


def check_images(x: Tensor, stem: nn.Module, backbone: str) -> None:
    """Refuse an input that ``stem`` cannot take, saying what it expects.

    Any side of at least one pixel is taken: the padded stride-2
    convolutions round up, so a side below the total stride of 32 ends as a
    1-pixel map. Float64 runs when the weights are float64
    (``model.double()``); other dtypes must match the weights, unless
    autocast casts them. While tracing or exporting only the dimensions and
    dtype are checked, so that no shape enters the graph.

    Args:
        x: The input.
        stem (nn.Module): The stem; its first convolution, which the image
            meets, gives the channels and dtype expected.
        backbone (str): The backbone's name, which the message begins with.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: naming the expected input.
    """
    conv = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
    expected = f'{backbone} takes images (B, {conv.in_channels}, H, W)'
    if not isinstance(x, Tensor):
        raise TypeError(f'{expected}; got a {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{expected}; got a {x.dim()}-D input of shape '
                         f'{tuple(x.shape)}')
    if not x.is_floating_point():
        raise ValueError(
            f'{expected} of a floating dtype; got {x.dtype}: normalise '
            "integer images with the model's data preprocessor, or "
            'convert them with .float()')
    weight = conv.weight.dtype
    if x.dtype != weight and not autocast_enabled(x.device.type):
        raise ValueError(
            f'{expected}; got {x.dtype} for weights in {weight}: convert '
            f'the input (.to({weight})) or the model (e.g. .double() '
            'to run in float64)')
    if is_capturing_graph():
        return
    channels, height, width = x.shape[1:]
    if channels != conv.in_channels:
        raise ValueError(f'{expected}; got C={channels} (shape '
                         f'{tuple(x.shape)})')
    if height < 1 or width < 1:
        raise ValueError(f'{expected} with sides of at least 1 pixel; '
                         f'got {height} x {width}')
