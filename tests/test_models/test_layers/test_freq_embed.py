# Copyright (c) mmvheat contributors. All rights reserved.
"""The ``freq_embed`` resampler (``mmvheat.models.layers.freq_embed``)."""
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
