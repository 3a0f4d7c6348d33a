# Copyright (c) mmvheat contributors. All rights reserved.
"""MPViT: a vision transformer whose stages run several patch scales at once.

Lee, Kim, Willette and Hwang, "MPViT: Multi-Path Vision Transformer for Dense
Prediction", CVPR 2022 (arXiv 2112.11010). Each stage embeds its input at
several scales with a chain of depth-wise separable 3x3 convolutions (path
``j`` sees the output after ``j + 1`` convolutions: 3x3, 5x5, 7x7 receptive
fields), runs every scale through its own transformer encoder, adds a local
convolutional path, and fuses the concatenated paths with a 1x1 convolution.

The encoders use CoaT's factorised attention (Xu et al., arXiv 2104.06399):
``scale * Q @ (softmax(K)^T @ V)``, linear in the number of tokens, plus a
convolutional relative position encoding ``Q * dwconv(V)`` whose kernel size
differs between groups of heads, and a convolutional position encoding
before each block. The blocks of one encoder share both encodings.

Published checkpoints convert with
``tools/model_converters/mpvit_to_mmvheat.py``.
"""
import copy
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmvheat.registry import MODELS, register_plain_name
from ..layers import DEFAULT_INIT_CFG, DropPath, depthwise_conv2d
from .base import BaseBackbone

__all__ = [
    'MPViT', 'MPViTStage', 'MHCAEncoder', 'MHCABlock', 'FactorizedAttention',
    'ConvRelPosEnc', 'ConvPosEnc', 'crpe_head_groups', 'build_norm'
]


def build_norm(cfg: dict, channels: int) -> nn.Module:
    """A normalization layer from an mmcv-style ``norm_cfg``.

    mmcv's ``build_norm_layer`` (imported here: the rest of the package
    needs only torch and mmengine), with its errors about the config raised
    as ``ValueError``.
    """
    try:
        from mmcv.cnn import build_norm_layer
    except ImportError as exc:
        raise ImportError(
            'MPViT builds its normalization layers with mmcv, which is not '
            f'installed ({exc}); install mmcv>=2.0 (bash tools/setup_env.sh, '
            'or pip install mmcv-lite for the backbone alone).') from exc
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(f'norm_cfg must be a dict with a "type", got {cfg!r}')
    try:
        return build_norm_layer(cfg, channels)[1]
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f'Unsupported norm_cfg {cfg!r} for MPViT: '
                         f'{exc}') from exc


def crpe_head_groups(num_heads: int) -> List[Tuple[int, int]]:
    """``(window, heads)`` of each group of the relative position encoding.

    The published models have 8 heads: 2 with a 3x3 window, 3 with 5x5 and 3
    with 7x7. Other head counts are split in the same proportions (the two
    larger windows get ``3 * num_heads // 8`` heads each, the 3x3 window the
    rest); empty groups are left out.
    """
    larger = 3 * num_heads // 8
    groups = [(3, num_heads - 2 * larger), (5, larger), (7, larger)]
    return [(window, heads) for window, heads in groups if heads > 0]


def _init_conv_norm(module: nn.Module):
    """The published init of the conv-norm units: conv weights normal with
    std ``sqrt(2 / fan_out)`` (``fan_out = k * k * out_channels``), norms
    weight 1 and bias 0. Biased convolutions (position encodings) keep
    PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.bias is None:
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0., (2. / fan_out)**0.5)
        elif isinstance(m, _BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv(in_channels: int,
          out_channels: int,
          kernel_size: int,
          stride: int = 1,
          groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution whose padding keeps the grid at stride 1."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        groups=groups,
        bias=False)


class ConvNormAct(nn.Sequential):
    """A bias-free convolution, a normalization layer and an optional
    Hardswish (``Conv2d_BN`` of the paper's code).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Kernel size; padding keeps the grid at stride 1.
            Defaults to 1.
        stride (int): Stride. Defaults to 1.
        norm_cfg (dict): Normalization layer. Defaults to ``dict(type='BN')``.
        act (bool): Apply Hardswish last. Defaults to True.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int = 1,
                 stride: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act: bool = True):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel_size, stride)
        self.norm = build_norm(norm_cfg, out_channels)
        self.act = nn.Hardswish() if act else nn.Identity()
        _init_conv_norm(self)


class DWConvNormAct(nn.Sequential):
    """Depth-wise ``k x k`` conv, point-wise 1x1 conv, norm, Hardswish.

    Args:
        channels (int): Input and output channels.
        kernel_size (int): Kernel of the depth-wise conv. Defaults to 3.
        stride (int): Stride of the depth-wise conv. Defaults to 1.
        norm_cfg (dict): Normalization layer. Defaults to ``dict(type='BN')``.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: int = 3,
                 stride: int = 1,
                 norm_cfg: dict = dict(type='BN')):
        super().__init__()
        self.depthwise = _conv(
            channels, channels, kernel_size, stride, groups=channels)
        self.pointwise = _conv(channels, channels, 1)
        self.norm = build_norm(norm_cfg, channels)
        self.act = nn.Hardswish()
        _init_conv_norm(self)


class MultiScalePatchEmbed(nn.Module):
    """Token maps of growing receptive field, one per path.

    A chain of depth-wise separable 3x3 convolutions; path ``j`` takes the
    output after ``j + 1`` of them. Only the first one may downsample.

    Args:
        channels (int): Channels of the input and of every path.
        num_path (int): Number of paths.
        stride (int): Stride of the first convolution. Defaults to 1.
        norm_cfg (dict): Normalization layer. Defaults to ``dict(type='BN')``.
    """

    def __init__(self,
                 channels: int,
                 num_path: int,
                 stride: int = 1,
                 norm_cfg: dict = dict(type='BN')):
        super().__init__()
        self.convs = nn.ModuleList([
            DWConvNormAct(
                channels, 3, stride=stride if j == 0 else 1, norm_cfg=norm_cfg)
            for j in range(num_path)
        ])

    def forward(self, x: Tensor) -> List[Tensor]:
        paths = []
        for conv in self.convs:
            x = conv(x)
            paths.append(x)
        return paths


class ConvPosEnc(nn.Module):
    """Convolutional position encoding: ``x + dwconv3x3(x)`` on the grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        """Map ``(B, H * W, C)`` tokens on an ``H x W`` grid."""
        B, N, C = x.shape
        image = x.transpose(1, 2).reshape(B, C, *size)
        return x + self.proj(image).flatten(2).transpose(1, 2)


class ConvRelPosEnc(nn.Module):
    """Convolutional relative position encoding: ``Q * dwconv(V)``.

    ``V`` is read as an image whose channels are ``heads x head_dim``; each
    group of heads (see :func:`crpe_head_groups`) has its own depth-wise
    window.

    Args:
        head_dim (int): Channels per head.
        head_groups (Sequence[tuple[int, int]]): ``(window, heads)`` per
            group.
    """

    def __init__(self, head_dim: int, head_groups: Sequence[Tuple[int, int]]):
        super().__init__()
        self.channel_splits = [heads * head_dim for _, heads in head_groups]
        # Run on channels-last views of V.
        self.convs = nn.ModuleList([
            depthwise_conv2d(channels, window)
            for (window, _), channels in zip(head_groups, self.channel_splits)
        ])

    def forward(self, q: Tensor, v: Tensor, size: Tuple[int, int]) -> Tensor:
        """``q`` and ``v`` are ``(B, heads, H * W, head_dim)``."""
        B, heads, N, head_dim = v.shape
        image = v.transpose(-1, -2).reshape(B, heads * head_dim, *size)
        encoded = torch.cat([
            conv(part) for conv, part in zip(
                self.convs, image.split(self.channel_splits, dim=1))
        ],
                            dim=1)
        encoded = encoded.reshape(B, heads, head_dim, N).transpose(-1, -2)
        return q * encoded


class FactorizedAttention(nn.Module):
    """Factorised attention with a convolutional relative position encoding.

    ``out = scale * Q @ (softmax(K)^T @ V) + crpe(Q, V)``, softmax over the
    tokens, ``scale = head_dim ** -0.5``; then a linear projection.

    Args:
        dim (int): Number of channels.
        num_heads (int): Number of heads.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads)**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, size: Tuple[int, int],
                crpe: ConvRelPosEnc) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads,
                                  C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        context = k.softmax(dim=2).transpose(-1, -2) @ v
        out = self.scale * (q @ context) + crpe(q, v, size)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MHCABlock(nn.Module):
    """A multi-head convolutional attention block.

    ``x = cpe(x)``; ``x = x + attn(LN(x))``; ``x = x + MLP(LN(x))``; the
    position encodings belong to the encoder and are passed in.

    Args:
        dim (int): Number of channels.
        num_heads (int): Number of attention heads.
        mlp_ratio (float): Hidden width of the MLP relative to ``dim``.
            Defaults to 4.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        with_cp (bool): Recompute the block in the backward pass to save
            memory. Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 drop_path: float = 0.,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = FactorizedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module('fc1', nn.Linear(dim, hidden))
        self.mlp.add_module('act', nn.GELU())
        self.mlp.add_module('fc2', nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def _forward(self, x: Tensor, size: Tuple[int, int], cpe: ConvPosEnc,
                 crpe: ConvRelPosEnc) -> Tensor:
        x = cpe(x, size)
        x = x + self.drop_path(self.attn(self.norm1(x), size, crpe))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, size: Tuple[int, int], cpe: ConvPosEnc,
                crpe: ConvRelPosEnc) -> Tensor:
        """Map ``(B, H * W, C)`` tokens on an ``H x W`` grid."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(
                self._forward, x, size, cpe, crpe, use_reentrant=False)
        return self._forward(x, size, cpe, crpe)


class MHCAEncoder(nn.Module):
    """The transformer of one path: blocks sharing one ``cpe`` and ``crpe``.

    Args:
        dim (int): Number of channels.
        num_layers (int): Number of blocks.
        num_heads (int): Number of attention heads.
        mlp_ratio (float): MLP hidden width relative to ``dim``.
            Defaults to 4.
        drop_paths (Sequence[float]): Stochastic depth rate per block;
            empty for none. Defaults to ().
        with_cp (bool): Gradient checkpointing in every block.
            Defaults to False.
    """

    def __init__(self,
                 dim: int,
                 num_layers: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 drop_paths: Sequence[float] = (),
                 with_cp: bool = False):
        super().__init__()
        self.cpe = ConvPosEnc(dim)
        self.crpe = ConvRelPosEnc(dim // num_heads,
                                  crpe_head_groups(num_heads))
        drop_paths = list(drop_paths) or [0.] * num_layers
        self.blocks = nn.ModuleList([
            MHCABlock(
                dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                drop_path=drop_paths[i],
                with_cp=with_cp) for i in range(num_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        """Map an NCHW map to one of the same shape."""
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, (H, W), self.cpe, self.crpe)
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class ResBlock(nn.Module):
    """The local path: 1x1 conv, depth-wise 3x3 conv, 1x1 conv, residual.

    Args:
        channels (int): Input, hidden and output channels.
        norm_cfg (dict): Normalization layer. Defaults to ``dict(type='BN')``.
    """

    def __init__(self, channels: int, norm_cfg: dict = dict(type='BN')):
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 1, norm_cfg=norm_cfg)
        self.dwconv = _conv(channels, channels, 3, groups=channels)
        self.norm = build_norm(norm_cfg, channels)
        self.act = nn.Hardswish()
        self.conv2 = ConvNormAct(
            channels, channels, 1, norm_cfg=norm_cfg, act=False)
        _init_conv_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm(self.dwconv(self.conv1(x))))
        return x + self.conv2(out)


class MPViTStage(nn.Module):
    """Multi-scale patch embedding, then the local path and one transformer
    per scale, fused by a 1x1 convolution.

    Args:
        in_channels (int): Channels of the input and of every path.
        out_channels (int): Channels of the output.
        num_path (int): Number of transformer paths.
        num_layers (int): Blocks per transformer.
        num_heads (int): Attention heads.
        mlp_ratio (float): MLP hidden width relative to ``in_channels``.
        stride (int): Stride of the patch embedding. Defaults to 2.
        drop_paths (Sequence[float]): Stochastic depth rate per block (the
            same for every path). Defaults to ().
        norm_cfg (dict): Normalization layer. Defaults to ``dict(type='BN')``.
        with_cp (bool): Gradient checkpointing in every block.
            Defaults to False.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 num_path: int,
                 num_layers: int,
                 num_heads: int,
                 mlp_ratio: float,
                 stride: int = 2,
                 drop_paths: Sequence[float] = (),
                 norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False):
        super().__init__()
        self.patch_embed = MultiScalePatchEmbed(
            in_channels, num_path, stride=stride, norm_cfg=norm_cfg)
        self.local_block = ResBlock(in_channels, norm_cfg=norm_cfg)
        self.encoders = nn.ModuleList([
            MHCAEncoder(
                in_channels,
                num_layers,
                num_heads,
                mlp_ratio=mlp_ratio,
                drop_paths=drop_paths,
                with_cp=with_cp) for _ in range(num_path)
        ])
        self.aggregate = ConvNormAct(
            in_channels * (num_path + 1), out_channels, 1, norm_cfg=norm_cfg)

    def forward(self, x: Tensor) -> Tensor:
        paths = self.patch_embed(x)
        outs = [self.local_block(paths[0])]
        outs.extend(
            encoder(path) for encoder, path in zip(self.encoders, paths))
        return self.aggregate(torch.cat(outs, dim=1))


@register_plain_name
@MODELS.register_module()
class MPViT(BaseBackbone):
    """MPViT backbone.

    A PyTorch implementation of `MPViT: Multi-Path Vision Transformer for
    Dense Prediction <https://arxiv.org/abs/2112.11010>`_.

    Stage ``i`` works on ``embed_dims[i]`` channels and hands
    ``embed_dims[i + 1]`` to the next one; the last keeps ``embed_dims[3]``.
    The outputs have no normalization of their own (the published models
    have none), so a classification checkpoint fits any ``out_indices``.
    For classification, use ``out_indices=(3, )`` with mmpretrain's
    ``GlobalAveragePooling`` neck and ``LinearClsHead``.

    Args:
        arch (str | dict): ``'tiny'``, ``'xsmall'``, ``'small'``, ``'base'``
            (or ``'t'``, ``'xs'``, ``'s'``, ``'b'``), or a dict with the keys
            ``num_path``, ``num_layers``, ``embed_dims`` (four ints each),
            ``mlp_ratios`` and ``num_heads`` (a number, or four), and
            optionally ``num_stages`` (which must be 4). Defaults to
            ``'tiny'``.
        in_channels (int): Number of input image channels. Defaults to 3.
        out_indices (Sequence[int] | int): Stages whose outputs are returned.
            Defaults to ``(0, 1, 2, 3)``.
        drop_path_rate (float): Stochastic depth rate, rising linearly with
            the block's depth (parallel paths share a rate). Defaults to 0.
        norm_cfg (dict): Normalization layers of the convolutions, built by
            mmcv's ``build_norm_layer``: ``dict(type='BN')``,
            ``dict(type='SyncBN')``, ``dict(type='GN', num_groups=...)``...,
            with optional ``requires_grad`` and the layer's own arguments.
            Defaults to ``dict(type='BN')``.
        frozen_stages (int): Freeze the stem and the first ``frozen_stages``
            stages (no gradients, eval mode); 0 or -1 freezes nothing.
            Defaults to 0.
        norm_eval (bool): Keep the BatchNorm layers in eval mode (frozen
            statistics) during training. Defaults to False.
        with_cp (bool): Use gradient checkpointing in every MHCA block.
            Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config. A
            ``Pretrained`` config fails if any weight is left unloaded or
            the checkpoint holds weights this model lacks. Defaults to
            truncated-normal Linear layers and unit LayerNorms (the
            convolutions and BatchNorms follow the published init).
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {
            'num_path': [2, 3, 3, 3],
            'num_layers': [1, 2, 4, 1],
            'embed_dims': [64, 96, 176, 216],
            'mlp_ratios': [2, 2, 2, 2],
            'num_heads': [8, 8, 8, 8],
        }),
        **dict.fromkeys(['xs', 'xsmall'], {
            'num_path': [2, 3, 3, 3],
            'num_layers': [1, 2, 4, 1],
            'embed_dims': [64, 128, 192, 256],
            'mlp_ratios': [4, 4, 4, 4],
            'num_heads': [8, 8, 8, 8],
        }),
        **dict.fromkeys(['s', 'small'], {
            'num_path': [2, 3, 3, 3],
            'num_layers': [1, 3, 6, 3],
            'embed_dims': [64, 128, 216, 288],
            'mlp_ratios': [4, 4, 4, 4],
            'num_heads': [8, 8, 8, 8],
        }),
        **dict.fromkeys(['b', 'base'], {
            'num_path': [2, 3, 3, 3],
            'num_layers': [1, 3, 8, 3],
            'embed_dims': [128, 224, 368, 480],
            'mlp_ratios': [4, 4, 4, 4],
            'num_heads': [8, 8, 8, 8],
        }),
    }  # yapf: disable
    arch_keys = ('num_path', 'num_layers', 'embed_dims', 'mlp_ratios',
                 'num_heads')
    optional_arch_keys = ('num_stages', )
    converter = 'tools/model_converters/mpvit_to_mmvheat.py'
    published_prefixes = ('mhca_stages.', 'patch_embed_stages.')

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='BN'),
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = DEFAULT_INIT_CFG):
        super().__init__(arch, out_indices, frozen_stages, norm_eval, init_cfg)
        embed_dims = self.arch_settings['embed_dims']
        num_layers = self.arch_settings['num_layers']
        self.embed_dims = embed_dims
        self.depths = num_layers
        self.norm_cfg = copy.deepcopy(norm_cfg)

        self.stem = nn.Sequential(
            ConvNormAct(
                in_channels,
                embed_dims[0] // 2,
                3,
                stride=2,
                norm_cfg=norm_cfg),
            ConvNormAct(
                embed_dims[0] // 2,
                embed_dims[0],
                3,
                stride=2,
                norm_cfg=norm_cfg))
        depth = sum(num_layers)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            first = sum(num_layers[:i])
            self.stages.append(
                MPViTStage(
                    embed_dims[i],
                    self.stage_channels[i],
                    num_path=self.arch_settings['num_path'][i],
                    num_layers=num_layers[i],
                    num_heads=self.arch_settings['num_heads'][i],
                    mlp_ratio=self.arch_settings['mlp_ratios'][i],
                    stride=1 if i == 0 else 2,
                    drop_paths=rates[first:first + num_layers[i]],
                    norm_cfg=norm_cfg,
                    with_cp=with_cp))
        self._freeze_stages()

    @classmethod
    def _complete_arch(cls, arch: dict) -> dict:
        n = cls.num_stages
        if arch.get('num_stages', n) != n:
            raise ValueError(f'MPViT has {n} stages, got num_stages='
                             f'{arch["num_stages"]}')
        settings = {}
        for key in cls.arch_keys:
            value = arch[key]
            if key in ('mlp_ratios', 'num_heads') and isinstance(
                    value, (int, float)):
                value = [value] * n
            if not isinstance(value, Sequence) or len(value) != n:
                raise ValueError(f'{key} needs {n} entries, got {value!r}')
            settings[key] = list(value)
        for key in ('num_path', 'num_layers', 'embed_dims', 'num_heads'):
            if not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0
                    for v in settings[key]):
                raise ValueError(
                    f'{key} must be positive ints, got {settings[key]}')
        if not all(r > 0 for r in settings['mlp_ratios']):
            raise ValueError(
                f'mlp_ratios must be positive, got {settings["mlp_ratios"]}')
        dims, heads = settings['embed_dims'], settings['num_heads']
        if dims[0] % 2:
            raise ValueError(f'embed_dims[0] must be even (the stem halves '
                             f'it), got {dims[0]}')
        for i, (dim, head) in enumerate(zip(dims, heads)):
            if dim % head:
                raise ValueError(f'embed_dims[{i}]={dim} is not divisible by '
                                 f'num_heads[{i}]={head}')
        return settings

    @property
    def stage_channels(self) -> Tuple[int, ...]:
        """Output channels of every stage: ``(C1, C2, C3, C3)``."""
        dims = self.embed_dims
        return tuple(dims[1:]) + (dims[-1], )

    def _block_of(self, name: str, depth: int) -> int:
        # Parallel paths share a depth; the patch embedding, local path and
        # position encodings come before the first block, the aggregation
        # after the last.
        block = re.match(r'encoders\.\d+\.blocks\.(\d+)\.', name)
        if block:
            return int(block.group(1))
        return depth - 1 if name.startswith('aggregate.') else 0

    def _init_own_weights(self):
        _init_conv_norm(self)
