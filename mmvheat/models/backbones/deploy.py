# Copyright (c) mmvheat contributors. All rights reserved.
"""The backbones' inference forms, behind ``switch_to_deploy()``.

As mmpretrain's RepVGG does, a backbone switched to deploy mode builds the
modules it runs for inference from the trained ones and puts them in their
place (:func:`switch_to_deploy` switches every backbone inside a model).
MPViT has no inference form of its own. vHeat's, the modules below:

- each block becomes a :class:`FusedHeatBlock`, with a
  :class:`FusedHeatConduction2d` and a :class:`FusedMlp`, whose
  activations and residual adds run inside the linear layers on the CPU
  (:func:`mmvheat.models.layers.fused_linear`);
- each stage's blocks become :class:`DeployedHeatBlocks`, which keep the
  filters ``decay ** k`` they folded per input size and run the batch in
  cache-sized sub-batches on the CPU.

The inference forms hold the trained modules' parameters themselves (the
same tensors: nothing is copied, and nothing is folded into them), so a
deployed model's state dict is the trained model's, key for key and value
for value. The filters depend on the input size, so they are folded at run
time and never stored.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from mmvheat.ops import spectral_filter
from ..layers import (HeatBlock, HeatBlocks, HeatConduction2d, Mlp,
                      cpu_sub_batch_size, fused_linear, grid_size,
                      mlp_in_chunks)
from .base import BaseBackbone

__all__ = [
    'switch_to_deploy', 'FusedHeatConduction2d', 'FusedMlp', 'FusedHeatBlock',
    'DeployedHeatBlocks'
]


def switch_to_deploy(model: nn.Module) -> List[str]:
    """Call :meth:`BaseBackbone.switch_to_deploy` on every mmvheat backbone
    inside ``model`` (through any wrapper); return their names."""
    deployed = []
    for name, module in model.named_modules():
        if isinstance(module, BaseBackbone) and not module.deploy:
            module.switch_to_deploy()
            deployed.append(name or type(module).__name__)
    return deployed


def _built_with_parameters_of(trained: nn.Module, cls: type, *args):
    """``cls(*args)`` holding the parameters and buffers of ``trained``.

    It is built on the meta device (no memory, no initialisation), then
    given ``trained``'s tensors themselves by a strict
    ``load_state_dict(assign=True)``: a weight that one of the two lacks,
    or one of another shape, is an error. Which parameters require
    gradients stays as it was.
    """
    requires_grad = [p.requires_grad for p in trained.parameters()]
    with torch.device('meta'):
        module = cls(*args)
    module.load_state_dict(trained.state_dict(keep_vars=True), assign=True)
    for param, flag in zip(module.parameters(), requires_grad):
        param.requires_grad_(flag)
    return module


def _scaled_weights(linear: nn.Linear, scale: Optional[Tensor]):
    """``linear``'s weight and bias with its outputs scaled by ``scale``."""
    if scale is None:
        return linear.weight, linear.bias
    return linear.weight * scale[:, None], linear.bias * scale


class FusedHeatConduction2d(HeatConduction2d):
    """:class:`HeatConduction2d` with the SiLU gate and an optional
    residual add fused into its projections."""

    @classmethod
    def from_trained(cls, op: HeatConduction2d) -> 'FusedHeatConduction2d':
        """The fused form of ``op``, holding its parameters."""
        return _built_with_parameters_of(op, cls, op.dim)

    def forward(self,
                x: Tensor,
                transfer: Tensor,
                residual: Optional[Tensor] = None,
                scale: Optional[Tensor] = None) -> Tensor:
        """``residual + scale * HeatConduction2d(x)``."""
        x, (weight_u, bias_u), (weight_z, bias_z) = self._projections(x)
        u = spectral_filter(fused_linear(x, weight_u, bias_u), transfer)
        gate = fused_linear(x, weight_z, bias_z, activation='silu')
        return fused_linear(
            self.out_norm(u) * gate,
            *_scaled_weights(self.out_linear, scale),
            residual=residual)


class FusedMlp(Mlp):
    """:class:`Mlp` with the GELU and an optional residual add fused into
    its linear layers."""

    @classmethod
    def from_trained(cls, mlp: Mlp) -> 'FusedMlp':
        """The fused form of ``mlp``, holding its parameters."""
        return _built_with_parameters_of(mlp, cls, mlp.fc1.in_features,
                                         mlp.fc1.out_features)

    def forward(self,
                x: Tensor,
                residual: Optional[Tensor] = None,
                scale: Optional[Tensor] = None) -> Tensor:
        """``residual + scale * Mlp(x)``, a chunk of rows at a time."""
        return mlp_in_chunks(
            x,
            self.fc1.weight,
            self.fc1.bias,
            *_scaled_weights(self.fc2, scale),
            residual=residual)


class FusedHeatBlock(nn.Module):
    """:class:`HeatBlock` for inference: no stochastic depth or gradient
    checkpointing, and a pre-norm block's residual adds (and layer scales)
    fused into each branch's last linear layer.

    Args:
        block (HeatBlock): The trained block. Its norms and layer scales
            are taken as they are, its operator and MLP in their fused
            forms; the parameters keep their names.
    """

    def __init__(self, block: HeatBlock):
        super().__init__()
        self.post_norm = block.post_norm
        # In the trained block's order, so that the state dict's is the same.
        self.norm1 = block.norm1
        self.op = FusedHeatConduction2d.from_trained(block.op)
        self.norm2 = block.norm2
        self.mlp = FusedMlp.from_trained(block.mlp)
        self.gamma1, self.gamma2 = block.gamma1, block.gamma2

    def forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        """Map a ``(B, H, W, C)`` tensor, filtering with ``transfer``."""
        if self.post_norm:
            x = x + self._scale_by(
                self.norm1(self.op(x, transfer)), self.gamma1)
            return x + self._scale_by(self.norm2(self.mlp(x)), self.gamma2)
        x = self.op(self.norm1(x), transfer, residual=x, scale=self.gamma1)
        return self.mlp(self.norm2(x), residual=x, scale=self.gamma2)

    @staticmethod
    def _scale_by(value: Tensor, gamma: Optional[Tensor]) -> Tensor:
        return value if gamma is None else value * gamma


class DeployedHeatBlocks(HeatBlocks):
    """A stage's :class:`HeatBlocks` for inference: fused blocks, filters
    folded once per input size, and sub-batches on the CPU.

    The filters of the last :attr:`fold_cache_size` input sizes are kept in
    :attr:`folded`; they are dropped (and folded again when next needed)
    on ``load_state_dict``, a device or dtype move, ``train()``/``eval()``
    and :meth:`clear_folded`. On the CPU the batch runs through the blocks
    in sub-batches of about :attr:`cpu_sub_batch_bytes` of activations
    (images are independent), so that a block's intermediates stay in the
    CPU caches.

    Args:
        blocks (HeatBlocks): The trained blocks, each replaced by its
            :class:`FusedHeatBlock`.
    """
    #: Sub-batch budget in bytes on the CPU; 0 runs the whole batch.
    cpu_sub_batch_bytes = 4 << 20
    #: Number of input sizes whose folded filters are kept.
    fold_cache_size = 4

    def __init__(self, blocks: HeatBlocks):
        super().__init__(FusedHeatBlock(block) for block in blocks)
        #: ``(H, W)`` -> the blocks' filters, the most recently used last.
        self.folded: Dict[Tuple[int, int], Tuple[Tensor, ...]] = \
            OrderedDict()
        self.register_load_state_dict_pre_hook(self._clear_on_load)

    def folded_heat_transfers(self, freq_embed: Tensor,
                              size: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """:meth:`heat_transfers`, computed once per size and kept.

        They are computed outside any ``inference_mode`` (as constants, with
        no graph), so that a later pass with autograd can use them.
        """
        transfers = self.folded.get(size)
        if transfers is None:
            with torch.inference_mode(False), torch.no_grad():
                transfers = self.heat_transfers(freq_embed, size)
            self.folded[size] = transfers
            while len(self.folded) > self.fold_cache_size:
                self.folded.popitem(last=False)
        else:
            self.folded.move_to_end(size)
        return transfers

    def clear_folded(self):
        """Drop the folded filters."""
        self.folded.clear()

    def _clear_on_load(self, *args, **kwargs):
        self.clear_folded()

    def train(self, mode: bool = True):
        self.clear_folded()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self.clear_folded()  # a device or dtype move
        return super()._apply(*args, **kwargs)

    def forward(self, x: Tensor, freq_embed: Tensor) -> Tensor:
        transfers = self.folded_heat_transfers(freq_embed, grid_size(x))
        parts = x.split(cpu_sub_batch_size(x, self.cpu_sub_batch_bytes))
        outs = [self.run(part, transfers) for part in parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)
