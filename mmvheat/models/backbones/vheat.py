# Copyright (c) mmvheat contributors. All rights reserved.
"""vHeat: a vision backbone built on heat conduction.

Wang et al., "vHeat: Building Vision Models upon Heat Conduction", CVPR 2025
(arXiv 2405.16555). Each block mixes tokens with the Heat Conduction Operator
(see :mod:`mmvheat.ops.heat_conduction`), whose per-frequency, per-channel
exponent ``k = ReLU(Linear(freq_embed))`` is predicted from a learnable
frequency value embedding shared by the blocks of a stage.

Activations run channels-last (``B, H, W, C``) through the whole network: the
operator, the linear layers and the LayerNorms all want that layout, and the
few convolutions take the permuted view (``channels_last`` memory) without a
copy. The outputs are NCHW, as OpenMMLab necks and heads expect.

:meth:`VHeat.switch_to_deploy` specialises a model for inference, as
mmpretrain's RepVGG does: each stage then keeps the filters ``decay ** k``
it folded per input size, the blocks fuse their activations and residual
adds into the linear layers on the CPU
(:func:`mmvheat.models.layers.fused_linear`), and stages run on cache-sized
sub-batches of the batch on the CPU. Outputs and state-dict keys are
unchanged.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from mmvheat.ops import heat_transfer, spectral_filter
from mmvheat.registry import MODELS, register_plain_name
from ..layers import (DropPath, cpu_sub_batch_size, depthwise_conv2d,
                      fused_linear, resize_freq_embed)
from .base import DEFAULT_INIT_CFG, BaseBackbone

__all__ = ['VHeat', 'HeatStage', 'HeatBlock', 'HeatConduction2d', 'Mlp']

#: The backbones' rules, then the MLPs back at PyTorch's initialisation: the
#: published MLPs are 1x1 convolutions, which the truncated-normal rule for
#: Linear layers does not reach.
VHEAT_INIT_CFG = DEFAULT_INIT_CFG + [dict(type='ResetParameters', layer='Mlp')]


def _conv_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply an NCHW convolution to a channels-last ``(B, H, W, C)`` map."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _grid(x: Tensor) -> Tuple[int, int]:
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
        with torch.autocast(freq_embed.device.type, enabled=False):
            k = F.linear(
                freq_embed.to(dtype), self.to_k.weight.to(dtype),
                self.to_k.bias.to(dtype))
        return heat_transfer(F.relu(k))

    def _projections(self, x: Tensor):
        """``x`` after the depth-wise conv, and the halves of ``linear``.

        Two half-size projections give contiguous ``u`` and ``z`` (a chunk
        of one 2C projection would be strided) from the same parameters.
        """
        x = _conv_nhwc(self.dwconv, x)
        return (x, ) + tuple(
            zip(
                self.linear.weight.chunk(2, dim=0),
                self.linear.bias.chunk(2, dim=0)))

    def forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        """Filter ``x`` ``(B, H, W, C)`` with ``transfer`` ``(H, W, C)``."""
        x, (weight_u, bias_u), (weight_z, bias_z) = self._projections(x)
        u = spectral_filter(F.linear(x, weight_u, bias_u), transfer)
        gate = F.silu(F.linear(x, weight_z, bias_z))
        return self.out_linear(self.out_norm(u) * gate)


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


class Stem(nn.Module):
    """Two stride-2 3x3 convolutions with channel LayerNorms; stride 4."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(mid, eps=1e-6)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(mid, out_channels, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(out_channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """Map an NCHW image to a channels-last feature map."""
        x = self.act(self.norm1(self.conv1(x).permute(0, 2, 3, 1)))
        return self.norm2(_conv_nhwc(self.conv2, x))


class Downsample(nn.Module):
    """A stride-2 3x3 convolution (no bias) and a channel LayerNorm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(_conv_nhwc(self.conv, x))


class HeatStage(nn.Module):
    """An optional downsample, then blocks sharing one frequency embedding.

    Args:
        dim (int): Number of channels of the stage.
        depth (int): Number of blocks.
        embed_size (int): Side of the square frequency embedding, the
            stage's grid at the pretraining resolution.
        in_channels (int, optional): Channels of the previous stage; a
            downsample is added when given. Defaults to None.
        drop_paths (Sequence[float]): Stochastic depth rate per block;
            empty for none. Defaults to ().
        **block_kwargs: Passed to :class:`HeatBlock`.
    """

    def __init__(self,
                 dim: int,
                 depth: int,
                 embed_size: int,
                 in_channels: Optional[int] = None,
                 drop_paths: Sequence[float] = (),
                 **block_kwargs):
        super().__init__()
        self.downsample = (
            Downsample(in_channels, dim) if in_channels is not None else None)
        self.freq_embed = nn.Parameter(
            torch.zeros(embed_size, embed_size, dim))
        drop_paths = list(drop_paths) or [0.] * depth
        self.blocks = nn.ModuleList([
            HeatBlock(dim, drop_path=drop_paths[i], **block_kwargs)
            for i in range(depth)
        ])
        self._register_load_state_dict_pre_hook(self._resize_loaded_embed)

    def heat_transfers(self, size: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """The filters ``decay ** k`` of every block for an ``H x W`` grid."""
        embed = resize_freq_embed(self.freq_embed, size)
        return tuple(block.op.heat_transfer(embed) for block in self.blocks)

    def _resize_loaded_embed(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'freq_embed'
        embed = state_dict.get(key)
        if embed is None or embed.shape == self.freq_embed.shape:
            return
        if embed.dim() != 3 or embed.shape[-1] != self.freq_embed.shape[-1]:
            return  # leave the shape error to load_state_dict
        size = tuple(self.freq_embed.shape[:2])
        MMLogger.get_current_instance().info(
            f'Resize {key} from {tuple(embed.shape[:2])} to {size} '
            '(bicubic).')
        state_dict[key] = resize_freq_embed(embed, size)

    def _blocks(self, x: Tensor, transfers: Sequence[Tensor]) -> Tensor:
        for block, transfer in zip(self.blocks, transfers):
            x = block(x, transfer)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Map a ``(B, H, W, C_in)`` tensor to ``(B, H', W', C)``."""
        if self.downsample is not None:
            x = self.downsample(x)
        return self._blocks(x, self.heat_transfers(_grid(x)))


@register_plain_name
@MODELS.register_module()
class VHeat(BaseBackbone):
    """vHeat backbone.

    A PyTorch implementation of `vHeat: Building Vision Models upon Heat
    Conduction <https://arxiv.org/abs/2405.16555>`_.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` (or ``'t'``,
            ``'s'``, ``'b'``), or a dict with the keys ``depths``, ``dims``
            (an int, doubled per stage, or four ints), ``post_norm``,
            ``layer_scale`` and ``mlp_ratio``. Defaults to ``'tiny'``.
        img_size (int): The pretraining resolution; it sizes each stage's
            ``freq_embed`` (``img_size / 4 / 2**i`` square). Inputs of any
            size work: the embeddings are resampled to each stage's grid.
            Defaults to 224.
        in_channels (int): Number of input image channels. Defaults to 3.
        out_indices (Sequence[int] | int): Stages whose outputs are returned,
            each through its own LayerNorm. Defaults to ``(3, )``.
        drop_path_rate (float): Stochastic depth rate, rising linearly over
            all blocks. Defaults to 0.
        frozen_stages (int): Freeze the stem and the first ``frozen_stages``
            stages (no gradients, eval mode); 0 or -1 freezes nothing.
            Defaults to 0.
        norm_eval (bool): Keep normalization layers in eval mode during
            training (this matters for BatchNorm only; vHeat's LayerNorms
            keep no statistics). Defaults to False.
        with_cp (bool): Use gradient checkpointing in every block.
            Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config. A
            ``Pretrained`` config fails if any backbone weight is left
            unloaded; only the output norms (``norm{i}``) may differ, since
            a classification checkpoint holds just the last one. Defaults
            to truncated-normal Linear layers, except the MLPs', which keep
            PyTorch's initialisation (:data:`VHEAT_INIT_CFG`).
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {
            'depths': [2, 2, 6, 2],
            'dims': 96,
            'post_norm': False,
            'layer_scale': None,
            'mlp_ratio': 4.,
        }),
        **dict.fromkeys(['s', 'small'], {
            'depths': [2, 2, 18, 2],
            'dims': 96,
            'post_norm': True,
            'layer_scale': 1e-5,
            'mlp_ratio': 4.,
        }),
        **dict.fromkeys(['b', 'base'], {
            'depths': [2, 2, 18, 2],
            'dims': 128,
            'post_norm': True,
            'layer_scale': 1e-5,
            'mlp_ratio': 4.,
        }),
    }  # yapf: disable
    arch_keys = ('depths', 'dims', 'post_norm', 'layer_scale', 'mlp_ratio')
    stem_name = 'patch_embed'
    optional_weights = r'norm\d+\.'
    converter = 'tools/model_converters/vheat_to_mmvheat.py'
    published_prefixes = ('layers.', 'freq_embed.')

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: int = 224,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (3, ),
                 drop_path_rate: float = 0.,
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = VHEAT_INIT_CFG):
        super().__init__(arch, out_indices, frozen_stages, norm_eval, init_cfg)
        self.depths = self.arch_settings['depths']
        self.dims = self.arch_settings['dims']
        self.stage_channels = tuple(self.dims)
        min_size = 4 * 2**(self.num_stages - 1)
        if img_size < min_size or img_size % min_size:
            raise ValueError(f'img_size must be a positive multiple of '
                             f'{min_size}, got {img_size}')
        self.img_size = img_size

        self.patch_embed = Stem(in_channels, self.dims[0])
        # Python floats, computed on the CPU whatever the default device.
        rates = torch.linspace(
            0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            first = sum(self.depths[:i])
            self.stages.append(
                HeatStage(
                    dim,
                    depth,
                    embed_size=img_size // 4 // 2**i,
                    in_channels=self.dims[i - 1] if i > 0 else None,
                    drop_paths=rates[first:first + depth],
                    mlp_ratio=self.arch_settings['mlp_ratio'],
                    post_norm=self.arch_settings['post_norm'],
                    layer_scale=self.arch_settings['layer_scale'],
                    with_cp=with_cp))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.dims[i]))
        self._init_own_weights()
        self._freeze_stages()

    @classmethod
    def _complete_arch(cls, settings: dict) -> dict:
        depths, dims = settings['depths'], settings['dims']
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(cls.num_stages)]
        if len(depths) != cls.num_stages or len(dims) != cls.num_stages:
            raise ValueError(f'depths and dims need {cls.num_stages} entries, '
                             f'got {depths} and {dims}')
        settings['depths'], settings['dims'] = list(depths), list(dims)
        return settings

    def _block_of(self, name: str, depth: int) -> int:
        # The downsample and freq_embed come before the first block.
        block = re.match(r'blocks\.(\d+)\.', name)
        return int(block.group(1)) if block else 0

    def _init_own_weights(self):
        for stage in self.stages:
            trunc_normal_(stage.freq_embed, std=.02)

    def _missing_checkpoint_hint(self) -> str:
        return (f'Convert the published ImageNet weights with '
                f'{self.converter}, enlarge them to the downstream '
                'resolution with tools/interpolate4downstream.py, or set '
                'model.backbone.init_cfg=None to train from scratch.')

    def switch_to_deploy(self):
        """Specialise the model for inference; see the module doc.

        Gradients still reach the input, but no longer the weights, which
        are frozen. A deployed model recomputes its folded filters after
        ``load_state_dict``, a device or dtype move, ``train()``/``eval()``
        or :meth:`clear_folded`; call one of them after changing weights in
        place. Training a deployed model is refused.
        """
        if self.deploy:
            return
        for stage in self.stages:
            DeployedHeatStage.specialise(stage)
        self.requires_grad_(False)
        self.deploy = True

    def clear_folded(self):
        """Drop the filters a deployed model folded."""
        for stage in self.stages:
            if isinstance(stage, DeployedHeatStage):
                stage.clear_folded()

    def train(self, mode: bool = True):
        if mode and self.deploy:
            raise RuntimeError(
                'This VHeat was switched to deploy mode (inference only); '
                'build a new one to train.')
        return super().train(mode)

    def _output(self, i: int, x: Tensor) -> Tensor:
        out = getattr(self, f'norm{i}')(x)
        return out.permute(0, 3, 1, 2).contiguous()


# -- inference specialisation (VHeat.switch_to_deploy) -----------------------
# Each class below is a subclass whose instances are made by retyping a
# trained module in place (as torch.nn.utils.parametrize does), so that
# parameters, buffers, hooks and state-dict keys stay exactly as they were.
def _retype(module: nn.Module, cls: type) -> nn.Module:
    if not isinstance(module, cls.__bases__[0]):
        raise TypeError(f'cannot make a {cls.__name__} of a '
                        f'{type(module).__name__}')
    module.__class__ = cls
    return module


def _scaled_weights(linear: nn.Linear, scale: Optional[Tensor]):
    """``linear``'s weight and bias with its outputs scaled by ``scale``."""
    if scale is None:
        return linear.weight, linear.bias
    return linear.weight * scale[:, None], linear.bias * scale


class FusedHeatConduction2d(HeatConduction2d):
    """:class:`HeatConduction2d` with the SiLU gate and an optional
    residual add fused into its projections."""

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

    def forward(self,
                x: Tensor,
                residual: Optional[Tensor] = None,
                scale: Optional[Tensor] = None) -> Tensor:
        """``residual + scale * Mlp(x)``."""
        hidden = fused_linear(
            x, self.fc1.weight, self.fc1.bias, activation='gelu')
        return fused_linear(
            hidden, *_scaled_weights(self.fc2, scale), residual=residual)


class FusedHeatBlock(HeatBlock):
    """:class:`HeatBlock` for inference: no stochastic depth or gradient
    checkpointing, and a pre-norm block's residual adds (and layer scales)
    fused into each branch's last linear layer."""

    @classmethod
    def specialise(cls, block: HeatBlock) -> 'FusedHeatBlock':
        _retype(block.op, FusedHeatConduction2d)
        _retype(block.mlp, FusedMlp)
        return _retype(block, cls)

    def forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        if self.post_norm:
            x = x + self._scale_by(
                self.norm1(self.op(x, transfer)), self.gamma1)
            return x + self._scale_by(self.norm2(self.mlp(x)), self.gamma2)
        x = self.op(self.norm1(x), transfer, residual=x, scale=self.gamma1)
        return self.mlp(self.norm2(x), residual=x, scale=self.gamma2)

    @staticmethod
    def _scale_by(value: Tensor, gamma: Optional[Tensor]) -> Tensor:
        return value if gamma is None else value * gamma


class DeployedHeatStage(HeatStage):
    """:class:`HeatStage` for inference: the filters are folded once per
    input size, and the batch runs through the blocks in sub-batches of
    about :attr:`cpu_sub_batch_bytes` of activations on the CPU (images are
    independent), so that a block's intermediates stay in the CPU caches."""
    #: Sub-batch budget in bytes on the CPU; 0 runs the whole batch.
    cpu_sub_batch_bytes = 4 << 20
    #: Number of input sizes whose folded filters are kept.
    fold_cache_size = 4

    @classmethod
    def specialise(cls, stage: HeatStage) -> 'DeployedHeatStage':
        for block in stage.blocks:
            FusedHeatBlock.specialise(block)
        _retype(stage, cls)
        stage._folded: Dict[Tuple[int, int], Tuple[Tensor, ...]] = \
            OrderedDict()
        stage._register_load_state_dict_pre_hook(stage._clear_on_load)
        return stage

    def folded_heat_transfers(self, size: Tuple[int,
                                                int]) -> Tuple[Tensor, ...]:
        """:meth:`heat_transfers`, computed once per size and kept.

        They are computed outside any ``inference_mode`` (as constants, with
        no graph), so that a later pass with autograd can use them.
        """
        transfers = self._folded.get(size)
        if transfers is None:
            with torch.inference_mode(False), torch.no_grad():
                transfers = self.heat_transfers(size)
            self._folded[size] = transfers
            while len(self._folded) > self.fold_cache_size:
                self._folded.popitem(last=False)
        else:
            self._folded.move_to_end(size)
        return transfers

    def clear_folded(self):
        """Drop the folded filters."""
        self._folded.clear()

    def _clear_on_load(self, *args, **kwargs):
        self.clear_folded()

    def train(self, mode: bool = True):
        self.clear_folded()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        self.clear_folded()  # a device or dtype move
        return super()._apply(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        transfers = self.folded_heat_transfers(_grid(x))
        parts = x.split(cpu_sub_batch_size(x, self.cpu_sub_batch_bytes))
        outs = [self._blocks(part, transfers) for part in parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)
