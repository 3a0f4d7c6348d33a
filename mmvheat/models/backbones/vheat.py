# Copyright (c) mmvheat contributors. All rights reserved.
"""vHeat: a vision backbone built on heat conduction.

Wang et al., "vHeat: Building Vision Models upon Heat Conduction", CVPR 2025
(arXiv 2405.16555). Each block mixes tokens with the Heat Conduction Operator
(:func:`mmvheat.ops.spectral_filter`), whose per-frequency, per-channel
exponent ``k = ReLU(Linear(freq_embed))`` is predicted from a learnable
frequency value embedding shared by the blocks of a stage. The blocks are in
:mod:`mmvheat.models.layers.heat_block`, this module holds the stem, the
stages and the backbone.

Activations run channels-last (``B, H, W, C``) through the whole network: the
operator, the linear layers and the LayerNorms all want that layout, and the
few convolutions take the permuted view (``channels_last`` memory) without a
copy. The outputs are NCHW, as OpenMMLab necks and heads expect.

:meth:`VHeat.switch_to_deploy` puts inference forms of the blocks in place,
as mmpretrain's RepVGG does (:mod:`mmvheat.models.backbones.deploy`).
"""
import re
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from mmvheat.registry import MODELS, register_plain_name
from mmvheat.utils.torch_modes import may_overwrite
from ..layers import (DEFAULT_INIT_CFG, HeatBlock, HeatBlocks,
                      HeatConduction2d, Mlp, conv2d_channels_last, conv_nhwc,
                      in_chunks, in_cpu_sub_batches, map_row_chunks,
                      resize_freq_embed)
from ..layers.heat_block import recording_gradients
from .base import BaseBackbone
from .deploy import DeployedHeatBlocks

# The block's modules (from models/layers/heat_block.py) are exported here
# too, so that all of vHeat's parts import from the backbone's module.
__all__ = ['VHeat', 'HeatStage', 'HeatBlock', 'HeatConduction2d', 'Mlp']

#: The backbones' rules, then the MLPs back at PyTorch's initialisation: the
#: published MLPs are 1x1 convolutions, which the truncated-normal rule for
#: Linear layers does not reach.
VHEAT_INIT_CFG = DEFAULT_INIT_CFG + [dict(type='ResetParameters', layer='Mlp')]


class Stem(nn.Module):
    """Two stride-2 3x3 convolutions with channel LayerNorms; stride 4.

    A deployed backbone sets :attr:`in_sub_batches`: on the CPU the stem
    then maps the batch in the sub-batches its stages use
    (:attr:`DeployedHeatBlocks.cpu_sub_batch_bytes
    <mmvheat.models.backbones.deploy.DeployedHeatBlocks>` of its widest
    map, ``conv1``'s output), so that its maps stay in the CPU caches.
    """
    in_sub_batches = False

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = conv2d_channels_last(
            in_channels, mid, 3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(mid, eps=1e-6)
        self.act = nn.GELU()
        self.conv2 = conv2d_channels_last(
            mid, out_channels, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(out_channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """Map an NCHW image to a channels-last feature map."""
        if not self.in_sub_batches:
            return self._forward(x)
        h, w = x.shape[-2:]
        widest = self.conv1.out_channels * ((int(h) + 1) // 2) * (
            (int(w) + 1) // 2) * x.element_size()
        return in_cpu_sub_batches(self._forward, x,
                                  DeployedHeatBlocks.cpu_sub_batch_bytes,
                                  widest)

    def _forward(self, x: Tensor) -> Tensor:
        if recording_gradients(x, self.conv1.weight, self.conv2.weight):
            # Keeps the image for the backward pass, not the four maps of
            # conv1's width and resolution the stem's layers would: they are
            # redone there, two small convolutions at the full resolution.
            return cp.checkpoint(self._maps, x, use_reentrant=False)
        return self._maps(x)

    def _maps(self, x: Tensor) -> Tensor:
        # A channels-last image makes conv1 write channels-last: its
        # permuted output is then contiguous, and the LayerNorm reads it
        # without a copy.
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        x = x.permute(0, 2, 3, 1)
        x = self._norm_act_(x) if may_overwrite(x) else self.act(self.norm1(x))
        x = conv_nhwc(self.conv2, x)  # conv1's output is dropped here
        return self.norm2(x)

    def _norm_act_(self, x: Tensor) -> Tensor:
        """``act(norm1(x))`` written over ``x``, the stem's widest map, a
        chunk of rows at a time."""
        rows = x.reshape(-1, x.shape[-1])
        return in_chunks(lambda part: torch.ops.aten.gelu_(self.norm1(part)),
                         [rows], map_row_chunks(rows), rows).view(x.shape)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution (no bias) and a channel LayerNorm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = conv2d_channels_last(
            in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(conv_nhwc(self.conv, x))


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
        self.blocks = HeatBlocks(
            HeatBlock(dim, drop_path=drop_paths[i], **block_kwargs)
            for i in range(depth))
        self._register_load_state_dict_pre_hook(self._resize_loaded_embed)

    def heat_transfers(self, size: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """The filters ``decay ** k`` of every block for an ``H x W`` grid."""
        return self.blocks.heat_transfers(self.freq_embed, size)

    def switch_to_deploy(self):
        """Put the inference form of the blocks in their place
        (:class:`~mmvheat.models.backbones.deploy.DeployedHeatBlocks`)."""
        if not isinstance(self.blocks, DeployedHeatBlocks):
            self.blocks = DeployedHeatBlocks(self.blocks)

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

    def forward(self, x: Tensor, overwrite_input: bool = False) -> Tensor:
        """Map a ``(B, H, W, C_in)`` tensor to ``(B, H', W', C)``.

        Deployed blocks write their output over their input where they may
        (see :class:`~mmvheat.models.backbones.deploy.DeployedHeatBlocks`):
        over the downsample's output, which is the stage's own, and over
        ``x`` itself with ``overwrite_input`` (the caller gives it up).
        """
        if self.downsample is not None:
            x = self.downsample(x)
            overwrite_input = True
        return self.blocks(x, self.freq_embed, overwrite_input)


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
    missing_checkpoint_hint = (
        f'Convert the published ImageNet weights with {converter}, enlarge '
        'them to the downstream resolution with '
        'tools/interpolate4downstream.py, or set model.backbone.init_cfg=None '
        'to train from scratch.')
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

    def switch_to_deploy(self):
        """Specialise the model for inference: each stage's blocks are
        replaced by inference forms built from them
        (:class:`~mmvheat.models.backbones.deploy.DeployedHeatBlocks`);
        outputs are unchanged.

        The inference forms hold the trained parameters themselves, so the
        state dict stays the training model's (same keys, same values): it
        loads into a VHeat that was never deployed, and a deployed model
        loads a training checkpoint. The filters ``decay ** k`` are folded
        per input size at run time, and the blocks' linear weights are
        kept a second time, packed for oneDNN with the layer scales folded
        in (:class:`~mmvheat.models.backbones.deploy.FusedHeatBlock`);
        neither is in the state dict, and both are made again after
        ``load_state_dict``, a device or dtype move, ``train()``/``eval()``
        or :meth:`clear_folded` (call one of them after changing weights in
        place). Hooks registered on the replaced
        blocks do not carry over; those on the stages and the backbone do.

        Gradients still reach the input, but no longer the weights, which
        are frozen. Training a deployed model is refused.
        """
        if self.deploy:
            return
        for stage in self.stages:
            stage.switch_to_deploy()
        self.patch_embed.in_sub_batches = True
        self.requires_grad_(False)
        self.deploy = True

    def clear_folded(self):
        """Drop what a deployed model derived from its weights: the folded
        filters and the prepared linear weights."""
        for stage in self.stages:
            if isinstance(stage.blocks, DeployedHeatBlocks):
                stage.blocks.clear_folded()

    def train(self, mode: bool = True):
        if mode and self.deploy:
            raise RuntimeError(
                'This VHeat was switched to deploy mode (inference only); '
                'build a new one to train.')
        return super().train(mode)

    def _stage_forward(self, i: int, x: Tensor) -> Tensor:
        # The first stage's input is the stem's output, which nothing else
        # holds (later stages downsample theirs): it may be written over.
        return self.stages[i](x, overwrite_input=i == 0)

    def _output(self, i: int, x: Tensor) -> Tensor:
        out = getattr(self, f'norm{i}')(x)
        return out.permute(0, 3, 1, 2).contiguous()
