# Copyright (c) mmvheat contributors. All rights reserved.
"""The vHeat block and its parts, as trained (Wang et al., CVPR 2025).

A block mixes tokens with the Heat Conduction Operator
(:func:`mmvheat.ops.spectral_filter`): each channel of the map is filtered
in the cosine basis by ``decay ** k``, whose per-frequency, per-channel
exponent ``k = ReLU(to_k(freq_embed))`` each block predicts from the
frequency value embedding its stage shares (:class:`HeatBlocks`).

Everything runs channels-last (``B, H, W, C``). The inference forms of these
modules are in :mod:`mmvheat.models.backbones.deploy`.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from mmvheat.ops import heat_transfer, spectral_filter
from mmvheat.utils.torch_modes import autocast, is_capturing_graph
from .channels_last import depthwise_conv2d
from .drop_path import DropPath
from .freq_embed import resize_freq_embed
from .recompute import gated_linear_recomputed, mlp_recomputed

__all__ = [
    'HeatConduction2d', 'Mlp', 'HeatBlock', 'HeatBlocks', 'conv_nhwc',
    'grid_size', 'recording_gradients'
]


def conv_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply an NCHW convolution to a channels-last ``(B, H, W, C)`` map."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def recording_gradients(*tensors: Tensor) -> bool:
    """Whether autograd records a graph from ``tensors`` now, eagerly (a
    captured or compiled graph keeps plain ops, for its compiler to plan).
    """
    return (torch.is_grad_enabled() and not is_capturing_graph()
            and any(t.requires_grad for t in tensors))


def grid_size(x: Tensor) -> Tuple[int, int]:
    """``(H, W)`` of a channels-last map as plain ints, also under tracing
    (e.g. ONNX export), where shapes are 0-dim tensors."""
    return int(x.shape[1]), int(x.shape[2])


class HeatConduction2d(nn.Module):
    """The heat conduction layer of a vHeat block ("Heat2D").

    depth-wise 3x3 conv -> ``Linear(C, 2C)`` split into ``u`` and ``z`` ->
    ``u = IDCT2D(DCT2D(u) * decay ** k)`` -> ``LayerNorm(u) * SiLU(z)`` ->
    ``Linear(C, C)``.

    Args:
        dim (int): Number of channels.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        # Run on channels-last views of (B, H, W, C) maps.
        self.dwconv = depthwise_conv2d(dim, 3)
        self.linear = nn.Linear(dim, 2 * dim)
        self.out_norm = nn.LayerNorm(dim)
        self.out_linear = nn.Linear(dim, dim)
        # Predicts the exponent k per frequency and channel from the FVEs.
        self.to_k = nn.Linear(dim, dim)

    def heat_transfer(self, freq_embed: Tensor) -> Tensor:
        """The filter ``decay ** k`` for an ``(H, W, C)`` embedding.

        At least float32, autocast or not: ``k`` sits in an exponent, and a
        half-precision ``k`` would also leak into the filters a deployed
        model folds for later float32 passes.
        """
        dtype = torch.promote_types(self.to_k.weight.dtype, torch.float32)
        with autocast(freq_embed.device.type):
            k = F.linear(
                freq_embed.to(dtype), self.to_k.weight.to(dtype),
                self.to_k.bias.to(dtype))
        # ReLU by where: autograd keeps a one-byte mask for it, not a
        # float copy of k as for F.relu.
        return heat_transfer(torch.where(k > 0, k, 0.))

    def linear_halves(self) -> Tuple[Tuple[Tensor, Tensor], ...]:
        """``linear``'s weight and bias for ``u`` and for ``z``.

        Two half-size projections give contiguous ``u`` and ``z`` (a chunk
        of one 2C projection would be strided) from the same parameters.
        """
        return tuple(
            zip(
                self.linear.weight.chunk(2, dim=0),
                self.linear.bias.chunk(2, dim=0)))

    def _projections(self, x: Tensor):
        """``x`` after the depth-wise conv, and :meth:`linear_halves`."""
        return (conv_nhwc(self.dwconv, x), ) + self.linear_halves()

    def forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        """Filter ``x`` ``(B, H, W, C)`` with ``transfer`` ``(H, W, C)``."""
        x, (weight_u, bias_u), (weight_z, bias_z) = self._projections(x)
        u = spectral_filter(F.linear(x, weight_u, bias_u), transfer)
        z = F.linear(x, weight_z, bias_z)
        if recording_gradients(u, z):
            # Keeps u and z for the backward pass, not the four maps
            # between them and the output.
            return gated_linear_recomputed(u, z, self.out_norm,
                                           self.out_linear)
        return self.out_linear(self.out_norm(u) * F.silu(z))


class Mlp(nn.Module):
    """``fc1`` -> GELU -> ``fc2`` over the channels of a ``(..., C)`` map.

    Args:
        dim (int): Input and output channels.
        hidden (int): Hidden channels.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if recording_gradients(x, self.fc1.weight, self.fc2.weight):
            # Keeps x for the backward pass, not the two hidden maps (but
            # fc1's output where the hidden map is small).
            return mlp_recomputed(x, self.fc1.weight, self.fc1.bias,
                                  self.fc2.weight, self.fc2.bias)
        return self.fc2(F.gelu(self.fc1(x)))


class HeatBlock(nn.Module):
    """A vHeat block: heat conduction and an MLP, each in a residual branch.

    Args:
        dim (int): Number of channels.
        mlp_ratio (float): Hidden width of the MLP relative to ``dim``.
            Defaults to 4.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        post_norm (bool): Normalise each branch's output instead of its
            input. Defaults to False.
        layer_scale (float, optional): Initial value of the per-channel
            branch scales ``gamma1``/``gamma2``; None disables them.
            Defaults to None.
        with_cp (bool): Recompute the block in the backward pass to save
            memory. Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 mlp_ratio: float = 4.,
                 drop_path: float = 0.,
                 post_norm: bool = False,
                 layer_scale: Optional[float] = None,
                 with_cp: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dim)
        self.op = HeatConduction2d(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim, ), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim, ), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path)

    def _branch(self, value: Tensor, gamma: Optional[Tensor]) -> Tensor:
        return self.drop_path(value if gamma is None else value * gamma)

    def _forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        if self.post_norm:
            x = x + self._branch(self.norm1(self.op(x, transfer)), self.gamma1)
            return x + self._branch(self.norm2(self.mlp(x)), self.gamma2)
        x = x + self._branch(self.op(self.norm1(x), transfer), self.gamma1)
        return x + self._branch(self.mlp(self.norm2(x)), self.gamma2)

    def forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        """Map a ``(B, H, W, C)`` tensor, filtering with ``transfer``."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(
                self._forward, x, transfer, use_reentrant=False)
        return self._forward(x, transfer)


class HeatBlocks(nn.ModuleList):
    """The blocks of a stage, run one after another; each filters with its
    own ``decay ** k``, predicted from the embedding the stage shares."""

    def heat_transfers(self, freq_embed: Tensor,
                       size: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """The filter of every block for an ``H x W`` grid, from the
        stage's ``(H0, W0, C)`` embedding (resampled to ``size``)."""
        embed = resize_freq_embed(freq_embed, size)
        return tuple(block.op.heat_transfer(embed) for block in self)

    def run(self, x: Tensor, transfers: Sequence[Tensor]) -> Tensor:
        """Map ``x`` ``(B, H, W, C)`` through the blocks, block ``i``
        filtering with ``transfers[i]``."""
        for block, transfer in zip(self, transfers):
            x = block(x, transfer)
        return x

    def forward(self,
                x: Tensor,
                freq_embed: Tensor,
                overwrite_input: bool = False) -> Tensor:
        """Map ``x`` ``(B, H, W, C)``, the filters predicted afresh from
        ``freq_embed``. (``overwrite_input`` lets the deployed form write
        over ``x``; these blocks never do.)"""
        return self.run(x, self.heat_transfers(freq_embed, grid_size(x)))
