# Copyright (c) mmvheat contributors. All rights reserved.
"""The backbones' inference forms, behind ``switch_to_deploy()``.

As mmpretrain's RepVGG does, a backbone switched to deploy mode builds the
modules it runs for inference from the trained ones and puts them in their
place (:func:`switch_to_deploy` switches every backbone inside a model).
MPViT has no inference form of its own. vHeat's, the modules below:

- each block becomes a :class:`FusedHeatBlock`, with a
  :class:`FusedHeatConduction2d` and a :class:`FusedMlp`, whose
  activations and residual adds run inside the linear layers on the CPU
  (:func:`mmvheat.models.layers.fused_linear`), with the linear weights
  packed once for oneDNN;
- each stage's blocks become :class:`DeployedHeatBlocks`, which keep the
  filters ``decay ** k`` they folded per input size and run the batch in
  cache-sized sub-batches on the CPU (and so does the stem,
  ``Stem.in_sub_batches``).

The inference forms hold the trained modules' parameters themselves (the
same tensors, and nothing is folded into them), so a deployed model's state
dict is the trained model's, key for key and value for value. What they
derive from the parameters is kept beside them and made again when the
parameters change: the filters, which depend on the input size, are folded
at run time; the linear layers' weights with the layer scales folded in
and packed for oneDNN (a second copy of the blocks' linear weights) are
made when the blocks are built. Neither is stored in the state dict.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmvheat.ops import spectral_filter
from mmvheat.utils.torch_modes import may_overwrite
from ..layers import (HeatBlock, HeatBlocks, HeatConduction2d, Mlp, conv_nhwc,
                      fused_linear, grid_size, in_chunks, in_cpu_sub_batches,
                      map_row_chunks, mlp_in_chunks, pack_linear_weight)
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


#: A linear layer as an inference form runs it: its weight and bias, and
#: the weight packed for oneDNN (:func:`~mmvheat.models.layers.fused_linear`'s
#: ``packed``) or None.
InferenceLinear = Tuple[Tensor, Optional[Tensor], Optional[Tensor]]


def _inference_linear(weight: Tensor,
                      bias: Tensor,
                      scale: Optional[Tensor] = None,
                      pack: bool = False) -> InferenceLinear:
    """``(weight, bias)`` with the outputs scaled by ``scale``, and the
    weight packed when ``pack``."""
    if scale is not None:
        with torch.no_grad():
            weight, bias = weight * scale[:, None], bias * scale
    return weight, bias, pack_linear_weight(weight) if pack else None


def _linear(x: Tensor,
            linear: InferenceLinear,
            activation: Optional[str] = None,
            residual: Optional[Tensor] = None) -> Tensor:
    weight, bias, packed = linear
    return fused_linear(x, weight, bias, activation, residual, packed)


class FusedHeatConduction2d(HeatConduction2d):
    """:class:`HeatConduction2d` with the SiLU gate and an optional
    residual add fused into its projections."""

    @classmethod
    def from_trained(cls, op: HeatConduction2d) -> 'FusedHeatConduction2d':
        """The fused form of ``op``, holding its parameters."""
        return _built_with_parameters_of(op, cls, op.dim)

    def inference_linears(self,
                          scale: Optional[Tensor] = None,
                          pack: bool = False) -> Tuple[InferenceLinear, ...]:
        """``linear``'s two halves (``u``, the gate) and ``out_linear``,
        its outputs scaled by ``scale``, as :meth:`forward` runs them."""
        (weight_u, bias_u), (weight_z, bias_z) = self.linear_halves()
        return (_inference_linear(weight_u, bias_u, pack=pack),
                _inference_linear(weight_z, bias_z, pack=pack),
                _inference_linear(self.out_linear.weight, self.out_linear.bias,
                                  scale, pack))

    def forward(self,
                x: Tensor,
                transfer: Tensor,
                residual: Optional[Tensor] = None,
                linears: Optional[Tuple[InferenceLinear, ...]] = None,
                norm: Optional[nn.Module] = None) -> Tensor:
        """``residual + HeatConduction2d(norm(x))``, with ``linears`` from
        :meth:`inference_linears` (by default unscaled and unpacked).

        Where no graph is recorded, the operator holds two maps of its
        input's size besides its input (the depth-wise conv's output and
        ``u``), where its plain form holds five: the transforms write over
        ``u``, and the gate, the LayerNorm and ``out_linear`` run a chunk
        of rows at a time, each chunk's result written over the rows of
        ``u`` it came from.
        """
        linear_u, linear_z, out_linear = linears or self.inference_linears()
        x = conv_nhwc(self.dwconv, x if norm is None else norm(x))
        u = _linear(x, linear_u)
        overwrite = may_overwrite(u, x)
        u = spectral_filter(u, transfer, overwrite)

        def gated_projection(u: Tensor, x: Tensor,
                             residual: Optional[Tensor]) -> Tensor:
            gate = _linear(x, linear_z, activation='silu')
            u = self.out_norm(u)
            u = u.mul_(gate) if overwrite else u * gate
            return _linear(u, out_linear, residual=residual)

        if not overwrite:
            return gated_projection(u, x, residual)
        rows = u.view(-1, u.shape[-1])
        if residual is not None:
            residual = residual.reshape(rows.shape)
        return in_chunks(gated_projection,
                         [rows, x.reshape(rows.shape), residual],
                         map_row_chunks(rows), rows).view(u.shape)


class FusedMlp(Mlp):
    """:class:`Mlp` with the GELU and an optional residual add fused into
    its linear layers."""

    @classmethod
    def from_trained(cls, mlp: Mlp) -> 'FusedMlp':
        """The fused form of ``mlp``, holding its parameters."""
        return _built_with_parameters_of(mlp, cls, mlp.fc1.in_features,
                                         mlp.fc1.out_features)

    def inference_linears(self,
                          scale: Optional[Tensor] = None,
                          pack: bool = False) -> Tuple[InferenceLinear, ...]:
        """``fc1`` and ``fc2``, its outputs scaled by ``scale``, as
        :meth:`forward` runs them."""
        return (_inference_linear(self.fc1.weight, self.fc1.bias, pack=pack),
                _inference_linear(self.fc2.weight, self.fc2.bias, scale, pack))

    def forward(self,
                x: Tensor,
                residual: Optional[Tensor] = None,
                linears: Optional[Tuple[InferenceLinear, ...]] = None,
                norm: Optional[nn.Module] = None,
                out: Optional[Tensor] = None) -> Tensor:
        """``residual + Mlp(norm(x))``, a chunk of rows at a time (the
        ``norm`` too), with ``linears`` from :meth:`inference_linears` (by
        default unscaled and unpacked), written into ``out`` (``x`` itself
        or ``residual`` may be it) or a new tensor."""
        fc1, fc2 = linears or self.inference_linears()
        return mlp_in_chunks(
            x,
            *fc1[:2],
            *fc2[:2],
            residual=residual,
            packed=(fc1[2], fc2[2]),
            norm=norm,
            out=out)


class FusedHeatBlock(nn.Module):
    """:class:`HeatBlock` for inference: no stochastic depth or gradient
    checkpointing, a pre-norm block's residual adds (and layer scales)
    fused into each branch's last linear layer, and the linear layers'
    weights packed for oneDNN.

    The linear layers as the block runs them (layer scales folded into the
    weights, each weight packed: a second copy of the block's linear
    weights) are prepared once and kept until :meth:`clear_packed`; with
    :attr:`pack_weights` off only the scaled weights are kept.

    Args:
        block (HeatBlock): The trained block. Its norms and layer scales
            are taken as they are, its operator and MLP in their fused
            forms; the parameters keep their names.
    """
    #: Keep the linear weights packed for oneDNN (on the CPU, in float32).
    pack_weights = True

    def __init__(self, block: HeatBlock):
        super().__init__()
        self.post_norm = block.post_norm
        # In the trained block's order, so that the state dict's is the same.
        self.norm1 = block.norm1
        self.op = FusedHeatConduction2d.from_trained(block.op)
        self.norm2 = block.norm2
        self.mlp = FusedMlp.from_trained(block.mlp)
        self.gamma1, self.gamma2 = block.gamma1, block.gamma2
        self._linears: Optional[Tuple[tuple, tuple]] = None

    def inference_linears(self) -> Tuple[tuple, tuple]:
        """The operator's and the MLP's :meth:`inference_linears
        <FusedMlp.inference_linears>`, prepared at the first call and kept
        until :meth:`clear_packed`."""
        if self._linears is None:
            self._linears = self._prepare_linears()
        return self._linears

    @torch.inference_mode(False)
    @torch.no_grad()
    def _prepare_linears(self) -> Tuple[tuple, tuple]:
        # Outside any inference_mode, as the folded filters: constants that
        # a later pass with autograd can use too, and with no graph back to
        # the parameters (which still require gradients while the model is
        # being deployed). A post-norm block scales after its norms,
        # outside the operator and the MLP.
        scale1, scale2 = (None, None) if self.post_norm else (self.gamma1,
                                                              self.gamma2)
        return (self.op.inference_linears(scale1, self.pack_weights),
                self.mlp.inference_linears(scale2, self.pack_weights))

    def clear_packed(self):
        """Drop the prepared linear layers (made again when next needed)."""
        self._linears = None

    def __getstate__(self):
        # Copies and pickles prepare their own: packed weights are opaque
        # oneDNN tensors, which can be neither copied nor saved.
        return dict(super().__getstate__(), _linears=None)

    def forward(self,
                x: Tensor,
                transfer: Tensor,
                out: Optional[Tensor] = None) -> Tensor:
        """Map a ``(B, H, W, C)`` tensor, filtering with ``transfer``; a
        pre-norm block writes its output over ``out`` (given up by the
        caller; ``x`` itself may be it) where given, else over its
        operator's output, where no graph is recorded."""
        op_linears, mlp_linears = self.inference_linears()
        if self.post_norm:
            x = x + self._scale_by(
                self.norm1(self.op(x, transfer, linears=op_linears)),
                self.gamma1)
            return x + self._scale_by(
                self.norm2(self.mlp(x, linears=mlp_linears)), self.gamma2)
        x = self.op(
            x, transfer, residual=x, linears=op_linears, norm=self.norm1)
        # The operator's output is this block's own: the MLP may write over
        # it, its rows read before they are written.
        if not may_overwrite(x):
            out = None
        elif out is None:
            out = x
        return self.mlp(
            x, residual=x, linears=mlp_linears, norm=self.norm2, out=out)

    @staticmethod
    def _scale_by(value: Tensor, gamma: Optional[Tensor]) -> Tensor:
        return value if gamma is None else value * gamma


class DeployedHeatBlocks(HeatBlocks):
    """A stage's :class:`HeatBlocks` for inference: fused blocks, filters
    folded once per input size, and sub-batches on the CPU.

    The filters of the last :attr:`fold_cache_size` input sizes are kept in
    :attr:`folded`. They and the blocks' prepared linear layers
    (:meth:`FusedHeatBlock.inference_linears`, prepared here) are dropped,
    and made again when next needed, on ``load_state_dict``, a device or
    dtype move, ``train()``/``eval()`` and :meth:`clear_folded`. On the CPU
    the batch runs through the blocks
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
        for block in self:
            block.inference_linears()

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
        """Drop the folded filters and the blocks' prepared linear
        layers."""
        self.folded.clear()
        for block in self:
            block.clear_packed()

    def _clear_on_load(self, *args, **kwargs):
        self.clear_folded()

    def train(self, mode: bool = True):
        self.clear_folded()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self.clear_folded()  # a device or dtype move
        return super()._apply(*args, **kwargs)

    def run(self,
            x: Tensor,
            transfers: Sequence[Tensor],
            overwrite_input: bool = False) -> Tensor:
        """:meth:`HeatBlocks.run`; with ``overwrite_input`` each block
        writes its output over its input, ``x`` first (see
        :meth:`FusedHeatBlock.forward`)."""
        for block, transfer in zip(self, transfers):
            x = block(x, transfer, x if overwrite_input else None)
        return x

    def forward(self,
                x: Tensor,
                freq_embed: Tensor,
                overwrite_input: bool = False) -> Tensor:
        """Map ``x`` ``(B, H, W, C)``; with ``overwrite_input`` (``x`` is
        given up by the caller) every block's output, and so the stage's,
        is written over ``x``, where no graph is recorded, so that ``x``
        is not held beside the later blocks' maps."""
        transfers = self.folded_heat_transfers(freq_embed, grid_size(x))
        given_up = overwrite_input and may_overwrite(x)
        return in_cpu_sub_batches(
            lambda part: self.run(part, transfers, given_up),
            x,
            self.cpu_sub_batch_bytes,
            out=x if given_up else None)
