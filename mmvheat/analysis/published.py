# Copyright (c) mmvheat contributors. All rights reserved.
"""The published vHeat computation, for speed and equivalence comparisons.

The published implementation runs the same function as :class:`VHeat` in a
different layout: NCHW blocks whose channel LayerNorms (``LayerNorm2d``:
the blocks' two, the downsamples' and the classifier's) copy the map to
channels-last and back (a ``.contiguous()`` each way; the stem's two norms
permute without copying), 1x1-convolution MLPs, the cosine transforms
applied as ``F.conv1d`` with ``(N, N, 1)`` kernels in four separate passes
(each behind a ``.contiguous()``), the filter applied by ``torch.einsum``,
and ``decay ** k`` recomputed at every forward, after a bicubic resampling
of the frequency embeddings. :func:`published_forward` replays that
dataflow, copies included, with the weights of one of our models, so the
two can be timed side by side and checked to agree.

The published classifier also has an inference mode, in which its
throughput was measured: each block's ``decay ** k`` is folded into a
constant once, at the pretraining size (the size of ``freq_embed``). The
published dense backbones never fold; at any other size the embedding is
resampled and ``decay ** k`` recomputed at every forward.
:class:`PublishedVHeat` with ``infer_mode=True`` does exactly that: folded
where the stage's grid is the pretraining grid, recomputed elsewhere.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmvheat.models.layers import resize_freq_embed
from mmvheat.ops import dct_basis, decay_map

__all__ = [
    'conv1d_spectral_filter', 'published_transfer', 'published_forward',
    'PublishedVHeat'
]

#: Per stage, the folded ``decay ** k`` of each block (pretraining grid).
FoldedTransfers = Sequence[Tuple[Tensor, ...]]


def conv1d_spectral_filter(x: Tensor, transfer: Tensor) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` through ``F.conv1d``, as published."""
    b, h, w, c = x.shape
    cos_h = dct_basis(h, x.device, x.dtype)
    cos_w = dct_basis(w, x.device, x.dtype)
    x = F.conv1d(x.contiguous().view(b, h, -1), cos_h.view(h, h, 1))
    x = F.conv1d(x.contiguous().view(-1, w, c), cos_w.view(w, w, 1))
    x = torch.einsum('bnmc,nmc->bnmc',
                     x.contiguous().view(b, h, w, -1), transfer)
    x = F.conv1d(x.contiguous().view(b, h, -1),
                 cos_h.t().contiguous().view(h, h, 1))
    x = F.conv1d(x.contiguous().view(-1, w, c),
                 cos_w.t().contiguous().view(w, w, 1))
    return x.contiguous().view(b, h, w, -1)


def published_transfer(k: Tensor) -> Tensor:
    """``decay ** k`` for an ``(H, W, C)`` exponent map, as published: the
    power of the float32 unit-time decay map (not an exponential of
    ``-k``), so a half-precision ``k`` gives a float32 filter."""
    h, w = k.shape[:2]
    dtype = torch.promote_types(k.dtype, torch.float32)
    return torch.pow(decay_map(h, w, k.device, dtype)[:, :, None], k)


def _layer_norm_2d(norm, x: Tensor, copies: bool = True) -> Tensor:
    """``norm`` over the channels of an NCHW map; with ``copies`` as the
    published ``LayerNorm2d``: to channels-last and back, copied each way
    (the stem permutes without copying)."""
    x = x.permute(0, 2, 3, 1)
    x = norm(x.contiguous() if copies else x).permute(0, 3, 1, 2)
    return x.contiguous() if copies else x


def _conv1x1(linear, x: Tensor) -> Tensor:
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def _block_transfer(op, embed: Tensor) -> Tensor:
    return published_transfer(F.relu(op.to_k(embed)))


def _heat_op(op, x: Tensor, transfer: Tensor) -> Tensor:
    x = op.dwconv(x)
    x = op.linear(x.permute(0, 2, 3, 1).contiguous())
    u, z = x.chunk(2, dim=-1)
    u = conv1d_spectral_filter(u, transfer)
    u = op.out_norm(u) * F.silu(z)
    return op.out_linear(u).permute(0, 3, 1, 2).contiguous()


def _block(block, x: Tensor, transfer: Tensor) -> Tensor:

    def branch(value, gamma):
        if gamma is not None:
            value = value * gamma[:, None, None]
        return block.drop_path(value)

    def mlp(value):
        hidden = F.gelu(_conv1x1(block.mlp.fc1, value))
        return _conv1x1(block.mlp.fc2, hidden)

    if block.post_norm:
        x = x + branch(
            _layer_norm_2d(block.norm1, _heat_op(block.op, x, transfer)),
            block.gamma1)
        x = x + branch(_layer_norm_2d(block.norm2, mlp(x)), block.gamma2)
    else:
        x = x + branch(
            _heat_op(block.op, _layer_norm_2d(block.norm1, x), transfer),
            block.gamma1)
        x = x + branch(mlp(_layer_norm_2d(block.norm2, x)), block.gamma2)
    return x


def fold_published(model) -> FoldedTransfers:
    """The published inference mode's constants: per stage, each block's
    ``decay ** k`` at the pretraining grid (the size of ``freq_embed``)."""
    with torch.no_grad():
        return [
            tuple(
                _block_transfer(block.op, stage.freq_embed)
                for block in stage.blocks) for stage in model.stages
        ]


def published_forward(model,
                      x: Tensor,
                      folded: Optional[FoldedTransfers] = None):
    """Run a :class:`mmvheat.models.VHeat` the way the published code does.

    Args:
        model (VHeat): The weights.
        x (Tensor): NCHW images.
        folded (sequence, optional): :func:`fold_published` of ``model``,
            used for the stages whose grid is the pretraining grid. Defaults
            to None: ``decay ** k`` recomputed everywhere.

    Returns:
        tuple: The same NCHW maps as ``model(x)``.
    """
    stem = model.patch_embed
    x = _layer_norm_2d(stem.norm1, stem.conv1(x), copies=False)
    x = _layer_norm_2d(stem.norm2, stem.conv2(stem.act(x)), copies=False)
    outs = []
    for i, stage in enumerate(model.stages):
        if stage.downsample is not None:
            x = _layer_norm_2d(stage.downsample.norm, stage.downsample.conv(x))
        if folded is not None and \
                tuple(x.shape[2:]) == tuple(stage.freq_embed.shape[:2]):
            transfers = folded[i]
        else:
            embed = resize_freq_embed(stage.freq_embed, x.shape[2:])
            transfers = [_block_transfer(b.op, embed) for b in stage.blocks]
        for block, transfer in zip(stage.blocks, transfers):
            x = _block(block, x, transfer)
        if i in model.out_indices:
            outs.append(_layer_norm_2d(getattr(model, f'norm{i}'), x))
    return tuple(outs)


class PublishedVHeat(nn.Module):
    """A :class:`~mmvheat.models.VHeat`'s weights run by
    :func:`published_forward`.

    Args:
        vheat (VHeat): The model whose weights are used (and registered
            under ``vheat``).
        infer_mode (bool): The published inference mode: fold ``decay ** k``
            once, at the first forward, for the pretraining grid (inference
            only; the weights must not change afterwards). Defaults to
            False: recomputed at every forward.
    """

    def __init__(self, vheat: nn.Module, infer_mode: bool = False):
        super().__init__()
        self.vheat = vheat
        self.infer_mode = infer_mode
        self._folded: Optional[FoldedTransfers] = None

    def forward(self, x: Tensor):
        if self.infer_mode and self._folded is None:
            self._folded = fold_published(self.vheat)
        return published_forward(self.vheat, x, self._folded)
