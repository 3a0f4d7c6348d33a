# Copyright (c) mmvheat contributors. All rights reserved.
"""A vHeat block's MLP and gated output projection, keeping only inputs.

Autograd keeps every intermediate an op needs for its gradient. For the
MLP ``fc2(GELU(fc1(x)))`` that is the GELU's input and output, ``2 * 4C``
values per pixel (eight times the block's ``C``-channel map), and for the
gated projection ``out_linear(LayerNorm(u) * SiLU(z))`` five ``C`` maps.
The functions here keep only their inputs (``x``; ``u`` and ``z``) and
redo the cheap part of the forward pass in the backward pass: ``fc1`` and
the GELU for the MLP, the LayerNorm, SiLU and product for the gate. The
gradients are formed directly, with the kernels autograd would call
(``gelu_backward``, ``silu_backward``, ``native_layer_norm_backward`` and
the linear layers' products), without recording a graph. The gate skips
the SiLU's and the LayerNorm's gradient kernels, and the product only its
weight's gradient uses, where no input needs them.

The MLP runs in row chunks of at most :data:`MLP_CHUNK_BYTES` of hidden
activations (:func:`mlp_in_chunks`), in both passes and in the inference
form: the ``4C`` hidden map is never whole. A hidden map of at most
:data:`MLP_KEEP_BYTES` (the low-resolution stages, small inputs) is the
exception: its pre-activation is kept, one ``4C`` map, and ``fc1`` is not
redone; the saving is where the maps are large. The backward pass runs
under the autocast state of the forward pass, with the forward pass's
kernels, so the recomputed values are the forward pass's, bit for bit.
Neither is differentiable twice.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmvheat.utils.torch_modes import (autocast, autocast_state,
                                       is_capturing_graph)
from .cpu_fast_paths import fused_linear, in_chunks

__all__ = [
    'MLP_CHUNK_BYTES', 'row_chunks', 'map_row_chunks', 'mlp_in_chunks',
    'mlp_recomputed', 'gated_linear_recomputed'
]

#: Budget of hidden activations an MLP chunk holds at a time.
MLP_CHUNK_BYTES = 16 << 20
#: The largest hidden map whose pre-activation the MLP keeps for its
#: backward pass (larger ones: ``fc1`` is redone there, chunk by chunk).
MLP_KEEP_BYTES = 16 << 20


def row_chunks(rows: int, row_bytes: int) -> int:
    """Rows per chunk for rows of ``row_bytes`` within
    :data:`MLP_CHUNK_BYTES`."""
    return max(1, min(rows, MLP_CHUNK_BYTES // max(row_bytes, 1)))


def map_row_chunks(rows: Tensor) -> int:
    """Rows per chunk of ``rows`` ``(N, C)`` for row-wise work written over
    them a chunk at a time (a deployed operator's gate and LayerNorm, the
    stem's LayerNorm and GELU): a quarter of :data:`MLP_CHUNK_BYTES`, as
    many rows as an MLP chunk whose hidden map is four times as wide."""
    return row_chunks(rows.shape[0], 4 * rows.shape[1] * rows.element_size())


def _linear_grads(ctx, first: int, rows: Tensor, grad: Tensor, weight: Tensor):
    """``(grad_rows, grad_weight, grad_bias)`` of ``F.linear(rows,
    weight, bias)`` for the output gradient ``grad``; ``first`` is the
    index of ``weight`` among the Function's inputs."""
    need = ctx.needs_input_grad
    grad_weight = grad.t().mm(rows).to(weight.dtype) if need[first] else None
    grad_bias = grad.sum(0, dtype=weight.dtype) if need[first + 1] else None
    return grad.mm(weight.to(grad.dtype)), grad_weight, grad_bias


def mlp_in_chunks(x: Tensor,
                  fc1_weight: Tensor,
                  fc1_bias: Tensor,
                  fc2_weight: Tensor,
                  fc2_bias: Tensor,
                  residual: Optional[Tensor] = None,
                  packed: Tuple[Optional[Tensor],
                                Optional[Tensor]] = (None, None),
                  norm: Optional[Callable[[Tensor], Tensor]] = None,
                  out: Optional[Tensor] = None) -> Tensor:
    """``F.linear(GELU(F.linear(norm(x), fc1)), fc2) + residual`` over the
    last axis of ``x``, a chunk of rows at a time: the hidden map (and the
    normalised input, ``norm`` being a per-row map such as a LayerNorm) is
    never whole (one chunk while a graph is captured). The GELU and the
    residual add run inside the linear layers where :func:`fused_linear`
    fuses them, with the weights ``packed`` (fc1's, fc2's) where given.
    Each chunk's result is written into ``out`` (``x`` itself, or the
    residual, may be it; by default a new tensor) as it comes, where there
    are several."""
    rows = x.reshape(-1, x.shape[-1])
    chunk = rows.shape[0] if is_capturing_graph() else row_chunks(
        rows.shape[0], fc1_weight.shape[0] * rows.element_size())

    def mlp(part: Tensor, residual: Optional[Tensor]) -> Tensor:
        hidden = fused_linear(
            part if norm is None else norm(part),
            fc1_weight,
            fc1_bias,
            activation='gelu',
            packed=packed[0])
        return fused_linear(
            hidden, fc2_weight, fc2_bias, residual=residual, packed=packed[1])

    out_rows = (rows.shape[0], fc2_weight.shape[0])
    if residual is not None:
        residual = residual.reshape(out_rows)
    if out is not None:
        out = out.view(out_rows)
    out = in_chunks(mlp, [rows, residual], chunk, out)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class _RecomputedMlp(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        ctx.autocast = autocast_state(x.device.type)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] * fc1_weight.shape[0] * rows.element_size(
        ) > MLP_KEEP_BYTES:
            ctx.save_for_backward(x, fc1_weight, fc1_bias, fc2_weight)
            return mlp_in_chunks(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        # A small hidden map: its pre-activation is kept, fc1 not redone.
        pre = fused_linear(rows, fc1_weight, fc1_bias)
        ctx.save_for_backward(x, fc1_weight, fc1_bias, fc2_weight, pre)
        out = fused_linear(F.gelu(pre), fc2_weight, fc2_bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, fc1_weight, fc1_bias, fc2_weight, *kept = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        grads = grad.reshape(-1, grad.shape[-1])
        chunk = rows.shape[0] if kept else row_chunks(
            rows.shape[0], fc1_weight.shape[0] * rows.element_size())
        grad_rows, totals = [], [None] * 4
        enabled, dtype = ctx.autocast
        with autocast(x.device.type, enabled, dtype):
            for part, grad_part in zip(rows.split(chunk), grads.split(chunk)):
                # fc1 as the forward pass ran it (to the last bit).
                pre = kept[0] if kept else fused_linear(
                    part, fc1_weight, fc1_bias)
                grad_hidden, *fc2_grads = _linear_grads(
                    ctx, 3, F.gelu(pre), grad_part, fc2_weight)
                grad_pre = torch.ops.aten.gelu_backward(grad_hidden, pre)
                grad_part, *fc1_grads = _linear_grads(ctx, 1, part, grad_pre,
                                                      fc1_weight)
                grad_rows.append(grad_part)
                totals = [
                    g if total is None else total + g
                    for total, g in zip(totals, fc1_grads + fc2_grads)
                ]
        need_x = ctx.needs_input_grad[0]
        grad_x = torch.cat(grad_rows).reshape(x.shape) if need_x else None
        return (grad_x, *totals)


class _RecomputedGatedLinear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, z, norm_weight, norm_bias, eps, weight, bias):
        ctx.save_for_backward(u, z, norm_weight, norm_bias, weight)
        ctx.eps = eps
        ctx.autocast = autocast_state(u.device.type)
        gated = F.layer_norm(u, u.shape[-1:], norm_weight, norm_bias,
                             eps) * F.silu(z)
        return F.linear(gated, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        u, z, norm_weight, norm_bias, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        shape = u.shape[-1:]
        enabled, dtype = ctx.autocast
        with autocast(u.device.type, enabled, dtype):
            # The dispatcher applies autocast's policy for the LayerNorm,
            # as F.layer_norm did in the forward pass.
            norm, mean, rstd = torch.ops.aten.native_layer_norm(
                u, shape, norm_weight, norm_bias, ctx.eps)
            gate = F.silu(z)
            # The gated map is needed only for the linear layer's weight.
            gated = (norm * gate).reshape(-1, shape[0]) if need[5] else None
            grad_gated, grad_weight, grad_bias = _linear_grads(
                ctx, 5, gated, grad.reshape(-1, grad.shape[-1]), weight)
        # Autograd's rules for the product, SiLU and LayerNorm, each
        # gradient rounded to the dtype of what it is the gradient of.
        grad_gated = grad_gated.reshape(u.shape).to(
            torch.promote_types(norm.dtype, gate.dtype))
        grad_z = torch.ops.aten.silu_backward(
            (grad_gated * norm).to(gate.dtype), z) if need[1] else None
        norm_need = [need[0], need[2], need[3]]
        grad_u = grad_norm_weight = grad_norm_bias = None
        if any(norm_need):
            # Autocast may have run the LayerNorm in float32 (as on CUDA),
            # casting its inputs.
            norm_inputs = [u, norm_weight, norm_bias]
            if norm.dtype != u.dtype:
                norm_inputs = [
                    t if t is None else t.to(norm.dtype) for t in norm_inputs
                ]
            grad_u, grad_norm_weight, grad_norm_bias = (
                torch.ops.aten.native_layer_norm_backward(
                    (grad_gated * gate).to(norm.dtype), norm_inputs[0], shape,
                    mean, rstd, *norm_inputs[1:], norm_need))
        return (_cast(grad_u, u), grad_z, _cast(grad_norm_weight, norm_weight),
                _cast(grad_norm_bias, norm_bias), None, grad_weight, grad_bias)


def _cast(grad: Optional[Tensor], like: Optional[Tensor]) -> Optional[Tensor]:
    return None if grad is None else grad.to(like.dtype)


def mlp_recomputed(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
                   fc2_weight: Tensor, fc2_bias: Tensor) -> Tensor:
    """``F.linear(GELU(F.linear(x, fc1)), fc2)`` over the last axis of
    ``x``, saving only ``x`` for the backward pass."""
    return _RecomputedMlp.apply(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)


def gated_linear_recomputed(u: Tensor, z: Tensor, norm: torch.nn.LayerNorm,
                            linear: torch.nn.Linear) -> Tensor:
    """``linear(norm(u) * SiLU(z))``, saving only ``u`` and ``z`` for the
    backward pass."""
    return _RecomputedGatedLinear.apply(u, z, norm.weight, norm.bias, norm.eps,
                                        linear.weight, linear.bias)
