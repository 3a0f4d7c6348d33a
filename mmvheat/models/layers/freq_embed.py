# Copyright (c) mmvheat contributors. All rights reserved.
"""Resizing of vHeat's frequency value embeddings (FVEs).

Each stage owns an ``(H0, W0, C)`` embedding sized for the pretraining
resolution. The one function below adapts it to another grid; the model uses
it at run time, the state-dict load hook uses it for checkpoints of another
resolution, and ``tools/interpolate4downstream.py`` uses it for ``--mode
bicubic``.
"""
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ['resize_freq_embed', 'pad_freq_embed']


def resize_freq_embed(embed: Tensor, size: Sequence[int]) -> Tensor:
    """Resample an ``(H0, W0, C)`` embedding to ``size = (H, W)``.

    Bicubic with ``align_corners=False``, as the published dense backbone
    does at every forward. Returns ``embed`` itself when the size matches.
    """
    if embed.dim() != 3:
        raise ValueError('freq_embed must be (H, W, C), got shape '
                         f'{tuple(embed.shape)}')
    h, w = int(size[0]), int(size[1])
    if tuple(embed.shape[:2]) == (h, w):
        return embed
    grid = embed.permute(2, 0, 1).unsqueeze(0)
    grid = F.interpolate(
        grid.float(), size=(h, w), mode='bicubic', align_corners=False)
    return grid[0].permute(1, 2, 0).to(embed.dtype).contiguous()


def pad_freq_embed(embed: Tensor, size: Sequence[int]) -> Tensor:
    """Zero-pad an ``(H0, W0, C)`` embedding at the bottom/right to ``size``.

    This is what the published ``interpolate4downstream.py`` does before
    downstream fine-tuning (despite the tool's name it does not interpolate).
    """
    h, w = int(size[0]), int(size[1])
    h0, w0 = embed.shape[:2]
    if h < h0 or w < w0:
        raise ValueError(f'cannot pad a {h0} x {w0} embedding to {h} x {w}')
    return F.pad(embed, (0, 0, 0, w - w0, 0, h - h0))
