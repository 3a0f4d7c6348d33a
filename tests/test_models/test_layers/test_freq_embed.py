# Copyright (c) mmvheat contributors. All rights reserved.
"""The ``freq_embed`` resampler (``mmvheat.models.layers.freq_embed``)."""
import math

import numpy as np
import pytest
import torch

from mmvheat.models.layers import pad_freq_embed, resize_freq_embed


def test_resize_freq_embed():
    embed = torch.randn(4, 6, 3)
    assert resize_freq_embed(embed, (4, 6)) is embed
    resized = resize_freq_embed(embed, (7, 5))
    assert resized.shape == (7, 5, 3) and resized.is_contiguous()
    const = torch.full((3, 3, 2), 0.7)
    torch.testing.assert_close(
        resize_freq_embed(const, (8, 5)), torch.full((8, 5, 2), 0.7))
    half = resize_freq_embed(embed.to(torch.bfloat16), (7, 5))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), resized, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError):
        resize_freq_embed(torch.zeros(4, 4), (2, 2))


def test_pad_freq_embed():
    embed = torch.randn(3, 2, 4)
    padded = pad_freq_embed(embed, (5, 4))
    assert padded.shape == (5, 4, 4)
    torch.testing.assert_close(padded[:3, :2], embed)
    assert torch.all(padded[3:] == 0) and torch.all(padded[:, 2:] == 0)
    with pytest.raises(ValueError):
        pad_freq_embed(embed, (2, 4))


# -- the resampling mode, against an independent bicubic ----------------------
def _keys_cubic(distance, a=-0.75):
    """Keys' cubic convolution kernel at ``|distance|``, with torch's
    ``a = -0.75``."""
    d = abs(distance)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.


def _bicubic_matrix(in_size, out_size):
    """``(out_size, in_size)`` weights of 1-D bicubic resampling as
    ``F.interpolate(mode='bicubic', align_corners=False)`` defines it.

    Output ``i`` samples the input at ``(i + 0.5) * in / out - 0.5``
    (pixel centres, no clamping of the position), from the four inputs
    around it; taps outside the input repeat its border value.
    """
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        position = (i + 0.5) * in_size / out_size - 0.5
        base = math.floor(position)
        for tap in range(base - 1, base + 3):
            source = min(max(tap, 0), in_size - 1)
            matrix[i, source] += _keys_cubic(position - tap)
    return matrix


def test_resize_freq_embed_is_bicubic_hand_computed():
    """A step ``[0, 1]`` doubled: bicubic overshoots at both ends, where
    bilinear (``[0, .25, .75, 1]``) or nearest would not.

    By hand, with a = -0.75: the first output samples at -0.25, from the
    inputs at (clamped) -2, -1, 0, 1 with weights w(1.75), w(0.75),
    w(0.25), w(1.25) = -0.03515625, 0.26171875, 0.87890625, -0.10546875,
    so it is -0.10546875; the second samples at 0.25, taps -1, 0, 1, 2,
    giving w(0.75) + w(1.75) = 0.2265625; the other two by symmetry.
    These are exact binary fractions, so float32 gives them to the last
    bit (a 1e-6 tolerance leaves room for summation order only).
    """
    embed = torch.tensor([[0., 1.], [0., 1.]])[..., None]  # (H, W, C)
    resized = resize_freq_embed(embed, (4, 4))[..., 0]
    row = torch.tensor([-0.10546875, 0.2265625, 0.7734375, 1.10546875])
    torch.testing.assert_close(resized, row.expand(4, 4), atol=1e-6, rtol=0)


@pytest.mark.parametrize('size', [(9, 4), (7, 13), (3, 3)])
def test_resize_freq_embed_matches_numpy_bicubic(size):
    """Random ``(5, 6, 3)`` embeddings, enlarged, shrunk and both, against
    the separable numpy bicubic above in float64. torch computes in float32
    on values of order 1: 1e-5 covers its rounding (2e-6 at most here);
    bilinear is off by 0.3 or more in each case."""
    generator = torch.Generator().manual_seed(0)
    embed = torch.randn(5, 6, 3, generator=generator)
    rows = _bicubic_matrix(5, size[0])
    cols = _bicubic_matrix(6, size[1])
    expected = np.einsum('ih,hwc,jw->ijc', rows, embed.double().numpy(), cols)
    resized = resize_freq_embed(embed, size)
    torch.testing.assert_close(
        resized.double(), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
