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

In eval mode the filters ``decay ** k`` depend only on the weights and the
grid size, so each stage folds them once per input size and reuses them until
any weight they came from changes (an optimizer step, ``load_state_dict``, an
in-place update under ``no_grad`` or a device move), or until ``train()`` or
``eval()`` is called. Writes through ``param.data`` bypass the version
counters this relies on: call :meth:`VHeat.clear_folded` after them, or
``eval()``, as mmengine's loops do right after ``EMAHook`` swaps weights.
"""
import copy
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from mmvheat.ops import (cpu_sub_batch_size, fused_linear, heat_transfer,
                         spectral_filter)
from mmvheat.registry import MODELS, register_plain_name
from mmvheat.utils.freq_embed import resize_freq_embed
from ..layers import DropPath
from ..utils import freeze_modules, norms_to_eval, parse_out_indices

__all__ = ['VHeat', 'HeatBlock', 'HeatConduction2d', 'Mlp']


def _conv_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply an NCHW convolution to a channels-last ``(B, H, W, C)`` map."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _weight_stamp(tensors) -> Tuple:
    """Identify the current values of ``tensors`` without reading them.

    In-place updates bump ``_version``; replacing ``.data`` or moving the
    module changes ``data_ptr``.
    """
    return tuple((t.data_ptr(), t._version) for t in tensors)


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
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.linear = nn.Linear(dim, 2 * dim)
        self.out_norm = nn.LayerNorm(dim)
        self.out_linear = nn.Linear(dim, dim)
        # Predicts the exponent k per frequency and channel from the FVEs.
        self.to_k = nn.Linear(dim, dim)

    def heat_transfer(self, freq_embed: Tensor) -> Tensor:
        """The filter ``decay ** k`` for an ``(H, W, C)`` embedding.

        At least float32, autocast or not: ``k`` sits in an exponent, and a
        half-precision ``k`` would also leak into the filters folded for
        later float32 passes.
        """
        dtype = torch.promote_types(self.to_k.weight.dtype, torch.float32)
        with torch.autocast(freq_embed.device.type, enabled=False):
            k = F.linear(
                freq_embed.to(dtype), self.to_k.weight.to(dtype),
                self.to_k.bias.to(dtype))
        return heat_transfer(F.relu(k))

    def forward(self,
                x: Tensor,
                transfer: Tensor,
                residual: Optional[Tensor] = None) -> Tensor:
        """Filter ``x`` ``(B, H, W, C)``; ``residual`` is added to the output.

        The SiLU gate and the residual add are fused into the projections
        where :func:`mmvheat.ops.fused_linear` can.
        """
        x = _conv_nhwc(self.dwconv, x)
        # Two half-size projections give contiguous u and z (a chunk of one
        # 2C projection would be strided) from the same parameters.
        weight_u, weight_z = self.linear.weight.chunk(2, dim=0)
        bias_u, bias_z = self.linear.bias.chunk(2, dim=0)
        u = fused_linear(x, weight_u, bias_u)
        gate = fused_linear(x, weight_z, bias_z, activation='silu')
        u = spectral_filter(u, transfer)
        return fused_linear(
            self.out_norm(u) * gate,
            self.out_linear.weight,
            self.out_linear.bias,
            residual=residual)


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

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``fc2(GELU(fc1(x))) + residual``, fused where possible."""
        hidden = fused_linear(
            x, self.fc1.weight, self.fc1.bias, activation='gelu')
        return fused_linear(
            hidden, self.fc2.weight, self.fc2.bias, residual=residual)


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

    def _residual(self, x: Tensor, branch: Tensor, gamma: Optional[Tensor]):
        if gamma is not None:
            branch = branch * gamma
        return x + self.drop_path(branch)

    def _branch_ends_in_add(self) -> bool:
        """Whether ``x + branch`` can be left to the branch's last linear.

        That is a pre-norm block with no layer scale and no drop path
        active, the eval-mode tiny model among others.
        """
        return not self.post_norm and self.gamma1 is None and not (
            self.training and self.drop_path.drop_prob > 0)

    def _forward(self, x: Tensor, transfer: Tensor) -> Tensor:
        if self._branch_ends_in_add():
            x = self.op(self.norm1(x), transfer, residual=x)
            return self.mlp(self.norm2(x), residual=x)
        if self.post_norm:
            heat = self.norm1(self.op(x, transfer))
            x = self._residual(x, heat, self.gamma1)
            x = self._residual(x, self.norm2(self.mlp(x)), self.gamma2)
        else:
            heat = self.op(self.norm1(x), transfer)
            x = self._residual(x, heat, self.gamma1)
            x = self._residual(x, self.mlp(self.norm2(x)), self.gamma2)
        return x

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
        drop_paths (Sequence[float]): Stochastic depth rate per block.
        fold_cache_size (int): Number of input sizes whose folded filters
            are kept in eval mode. Defaults to 4.
        **block_kwargs: Passed to :class:`HeatBlock`.
    """
    #: Inference on CPU runs the blocks on sub-batches of about this many
    #: bytes of activations: a block's intermediates then stay in the CPU
    #: caches and the allocator's free lists instead of being faulted in
    #: afresh per op (vHeat-T, batch 8, 2 cores: 1.13x at 224). Images are
    #: independent in eval, so outputs are unchanged. 0 disables it.
    cpu_sub_batch_bytes = 4 << 20

    def __init__(self,
                 dim: int,
                 depth: int,
                 embed_size: int,
                 in_channels: Optional[int] = None,
                 drop_paths: Sequence[float] = (),
                 fold_cache_size: int = 4,
                 **block_kwargs):
        super().__init__()
        self.downsample = (
            Downsample(in_channels, dim) if in_channels is not None else None)
        self.freq_embed = nn.Parameter(torch.zeros(embed_size, embed_size,
                                                   dim))
        drop_paths = list(drop_paths) or [0.] * depth
        self.blocks = nn.ModuleList([
            HeatBlock(dim, drop_path=drop_paths[i], **block_kwargs)
            for i in range(depth)
        ])
        self.fold_cache_size = fold_cache_size
        self._folded: Dict[Tuple, Tuple[Tensor, ...]] = OrderedDict()
        self._register_load_state_dict_pre_hook(self._resize_loaded_embed)

    # -- frequency filters ------------------------------------------------
    def _filter_weights(self):
        yield self.freq_embed
        for block in self.blocks:
            yield from block.op.to_k.parameters()

    def heat_transfers(self, size: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """The filters ``decay ** k`` of every block for an ``H x W`` grid."""
        embed = resize_freq_embed(self.freq_embed, size)
        return tuple(block.op.heat_transfer(embed) for block in self.blocks)

    def _can_fold(self) -> bool:
        if self.training:
            return False
        # Gradients for the filter weights need the unfolded graph.
        return not (torch.is_grad_enabled() and any(
            p.requires_grad for p in self._filter_weights()))

    def folded_heat_transfers(self, size: Tuple[int, int]):
        """Like :meth:`heat_transfers`, cached while the weights stay put."""
        key = (tuple(size), ) + _weight_stamp(self._filter_weights())
        transfers = self._folded.get(key)
        if transfers is None:
            with torch.no_grad():
                transfers = self.heat_transfers(size)
            self._folded[key] = transfers
            while len(self._folded) > self.fold_cache_size:
                self._folded.popitem(last=False)
        else:
            self._folded.move_to_end(key)
        return transfers

    def clear_folded(self):
        """Drop the filters folded in eval mode."""
        self._folded.clear()

    def train(self, mode: bool = True):
        self.clear_folded()
        return super().train(mode)

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
        self.clear_folded()

    def _blocks(self, x: Tensor, transfers: Tuple[Tensor, ...]) -> Tensor:
        for block, transfer in zip(self.blocks, transfers):
            x = block(x, transfer)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Map a ``(B, H, W, C_in)`` tensor to ``(B, H', W', C)``."""
        if self.downsample is not None:
            x = self.downsample(x)
        # Plain ints also under tracing (e.g. ONNX export), where shapes are
        # 0-dim tensors: the folded filters then enter the graph as constants.
        size = tuple(int(s) for s in x.shape[1:3])
        if not self._can_fold():
            return self._blocks(x, self.heat_transfers(size))
        transfers = self.folded_heat_transfers(size)
        sub_batch = cpu_sub_batch_size(x, self.cpu_sub_batch_bytes)
        if sub_batch >= x.shape[0]:
            return self._blocks(x, transfers)
        return torch.cat(
            [self._blocks(part, transfers) for part in x.split(sub_batch)])


@register_plain_name
@MODELS.register_module()
class VHeat(BaseModule):
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
            unloaded. Defaults to truncated-normal Linear layers.
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
    num_stages = 4
    #: Output stride of each stage.
    strides = (4, 8, 16, 32)

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: int = 224,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (3, ),
                 drop_path_rate: float = 0.,
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = [
                     dict(type='TruncNormal', layer='Linear', std=.02,
                          bias=0.),
                     dict(type='Constant', layer='LayerNorm', val=1.,
                          bias=0.),
                 ]):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        depths = self.arch_settings['depths']
        self.dims = self.arch_settings['dims']
        min_size = 4 * 2**(self.num_stages - 1)
        if img_size < min_size or img_size % min_size:
            raise ValueError(f'img_size must be a positive multiple of '
                             f'{min_size}, got {img_size}')
        self.img_size = img_size
        self.out_indices = parse_out_indices(out_indices, self.num_stages)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.patch_embed = Stem(in_channels, self.dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(depths, self.dims)):
            first = sum(depths[:i])
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
        for stage in self.stages:
            trunc_normal_(stage.freq_embed, std=.02)
        self._freeze_stages()

    # -- construction helpers ---------------------------------------------
    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(f'Unknown vHeat arch {arch!r}; choose from '
                                 f'{sorted(cls.arch_zoo)} or pass a dict '
                                 f'with the keys {list(cls.arch_keys)}.')
            settings = copy.deepcopy(cls.arch_zoo[key])
        elif isinstance(arch, dict):
            missing = [k for k in cls.arch_keys if k not in arch]
            unknown = [k for k in arch if k not in cls.arch_keys]
            if missing or unknown:
                raise ValueError(
                    f'A custom vHeat arch needs exactly the keys '
                    f'{list(cls.arch_keys)}; missing {missing}, unknown '
                    f'{unknown}.')
            settings = copy.deepcopy(dict(arch))
        else:
            raise ValueError(f'arch must be a str or a dict, got {arch!r}')
        depths, dims = settings['depths'], settings['dims']
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(cls.num_stages)]
        if len(depths) != cls.num_stages or len(dims) != cls.num_stages:
            raise ValueError(f'depths and dims need {cls.num_stages} entries, '
                             f'got {depths} and {dims}')
        settings['depths'], settings['dims'] = list(depths), list(dims)
        return settings

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each returned map."""
        return tuple(self.dims[i] for i in self.out_indices)

    @property
    def out_strides(self) -> Tuple[int, ...]:
        """Stride of each returned map relative to the input."""
        return tuple(self.strides[i] for i in self.out_indices)

    # -- initialisation and loading -----------------------------------------
    def init_weights(self):
        """Initialise the weights, or load them from a ``Pretrained`` config.

        A pretrained checkpoint must set every weight and hold no weight the
        model lacks; only the output LayerNorms (``norm{i}``) may differ,
        since a classification checkpoint carries just the last one.
        """
        if (isinstance(self.init_cfg, dict)
                and self.init_cfg.get('type') == 'Pretrained'):
            self._load_pretrained(self.init_cfg)
            self._is_init = True
            return
        super().init_weights()
        for stage in self.stages:
            trunc_normal_(stage.freq_embed, std=.02)

    def _load_pretrained(self, init_cfg: dict):
        from mmengine.runner.checkpoint import (_load_checkpoint,
                                                _load_checkpoint_with_prefix)
        logger = MMLogger.get_current_instance()
        filename = init_cfg['checkpoint']
        prefix = init_cfg.get('prefix')
        map_location = init_cfg.get('map_location', 'cpu')
        if '://' not in filename and not osp.isfile(filename):
            raise FileNotFoundError(
                f'Pretrained vHeat checkpoint not found: {filename}. Convert '
                'the published ImageNet weights with tools/model_converters/'
                'vheat_to_mmvheat.py, enlarge them to the downstream '
                'resolution with tools/interpolate4downstream.py, or set '
                'model.backbone.init_cfg=None to train from scratch.')
        logger.info(f'Load vHeat weights from {filename}' +
                    (f' (prefix {prefix!r})' if prefix else ''))
        if prefix:
            state_dict = _load_checkpoint_with_prefix(prefix, filename,
                                                      map_location)
        else:
            checkpoint = _load_checkpoint(filename, map_location)
            state_dict = checkpoint.get('state_dict', checkpoint)
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        # Output norms differ between classification and dense models; any
        # other difference means the checkpoint is of another architecture.
        output_norm = re.compile(r'^norm\d+\.')
        fresh_norms = [k for k in missing if output_norm.match(k)]
        missing = [k for k in missing if not output_norm.match(k)]
        extra = [k for k in unexpected if not output_norm.match(k)]
        if missing or extra:
            raise RuntimeError(
                f'The checkpoint {filename} does not fit this vHeat '
                f'({self.arch_settings}): {len(missing)} weights unset '
                f'{missing}, {len(extra)} unexpected {extra}. Is it a vHeat '
                'checkpoint of this arch in mmvheat layout (see '
                'tools/model_converters/vheat_to_mmvheat.py), with the right '
                'prefix?')
        if fresh_norms:
            logger.info(f'Output norms initialised afresh: {fresh_norms}')
        if unexpected:
            logger.info(f'Unused output norms in the checkpoint: {unexpected}')

    # -- train/eval behaviour -----------------------------------------------
    def _freeze_stages(self):
        if self.frozen_stages <= 0:
            return
        frozen = [self.patch_embed] + list(self.stages[:self.frozen_stages])
        for i in range(self.frozen_stages):
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        freeze_modules(frozen)

    def clear_folded(self):
        """Drop the filters folded in eval mode (see the module doc)."""
        for stage in self.stages:
            stage.clear_folded()

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            norms_to_eval(self)
        return self

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return one NCHW map per entry of ``out_indices``."""
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
