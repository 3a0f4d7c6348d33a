# Copyright (c) mmvheat contributors. All rights reserved.
"""The published vHeat computation, for speed and equivalence comparisons.

The published implementation runs the same function as :class:`VHeat` in a
different layout: NCHW blocks with channel LayerNorms done by permuting,
1x1-convolution MLPs, the cosine transforms applied as ``F.conv1d`` with
``(N, N, 1)`` kernels in four separate passes (each behind a
``.contiguous()``), and ``decay ** k`` recomputed at every forward, after a
bicubic resampling of the frequency embeddings. :func:`published_forward`
replays that dataflow with the weights of one of our models, so the two can
be timed side by side and checked to agree.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from mmvheat.models.layers import resize_freq_embed
from mmvheat.ops import dct_basis, decay_map

__all__ = ['conv1d_spectral_filter', 'published_forward']


def conv1d_spectral_filter(x: Tensor, transfer: Tensor) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` through ``F.conv1d``, as published."""
    b, h, w, c = x.shape
    cos_h = dct_basis(h, x.device, x.dtype)
    cos_w = dct_basis(w, x.device, x.dtype)
    x = F.conv1d(x.contiguous().view(b, h, -1), cos_h.view(h, h, 1))
    x = F.conv1d(x.contiguous().view(-1, w, c), cos_w.view(w, w, 1))
    x = x.contiguous().view(b, h, w, -1) * transfer
    x = F.conv1d(x.contiguous().view(b, h, -1),
                 cos_h.t().contiguous().view(h, h, 1))
    x = F.conv1d(x.contiguous().view(-1, w, c),
                 cos_w.t().contiguous().view(w, w, 1))
    return x.contiguous().view(b, h, w, -1)


def _layer_norm_2d(norm, x: Tensor) -> Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv1x1(linear, x: Tensor) -> Tensor:
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def _heat_op(op, x: Tensor, embed: Tensor) -> Tensor:
    x = op.dwconv(x)
    x = op.linear(x.permute(0, 2, 3, 1).contiguous())
    u, z = x.chunk(2, dim=-1)
    h, w = u.shape[1:3]
    decay = decay_map(h, w, u.device, u.dtype)[:, :, None]
    transfer = torch.pow(decay, F.relu(op.to_k(embed)))
    u = conv1d_spectral_filter(u, transfer)
    u = op.out_norm(u) * F.silu(z)
    return op.out_linear(u).permute(0, 3, 1, 2).contiguous()


def _block(block, x: Tensor, embed: Tensor) -> Tensor:

    def branch(value, gamma):
        if gamma is not None:
            value = value * gamma[:, None, None]
        return block.drop_path(value)

    def mlp(value):
        hidden = F.gelu(_conv1x1(block.mlp.fc1, value))
        return _conv1x1(block.mlp.fc2, hidden)

    if block.post_norm:
        x = x + branch(
            _layer_norm_2d(block.norm1, _heat_op(block.op, x, embed)),
            block.gamma1)
        x = x + branch(_layer_norm_2d(block.norm2, mlp(x)), block.gamma2)
    else:
        x = x + branch(
            _heat_op(block.op, _layer_norm_2d(block.norm1, x), embed),
            block.gamma1)
        x = x + branch(mlp(_layer_norm_2d(block.norm2, x)), block.gamma2)
    return x


def published_forward(model, x: Tensor):
    """Run a :class:`mmvheat.models.VHeat` the way the published code does.

    Returns the same tuple of NCHW maps as ``model(x)``.
    """
    stem = model.patch_embed
    x = _layer_norm_2d(stem.norm1, stem.conv1(x))
    x = _layer_norm_2d(stem.norm2, stem.conv2(stem.act(x)))
    outs = []
    for i, stage in enumerate(model.stages):
        if stage.downsample is not None:
            x = _layer_norm_2d(stage.downsample.norm, stage.downsample.conv(x))
        embed = resize_freq_embed(stage.freq_embed, x.shape[2:])
        for block in stage.blocks:
            x = _block(block, x, embed)
        if i in model.out_indices:
            outs.append(_layer_norm_2d(getattr(model, f'norm{i}'), x))
    return tuple(outs)
