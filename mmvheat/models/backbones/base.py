# Copyright (c) mmvheat contributors. All rights reserved.
"""What every mmvheat backbone shares, in the manner of mmpretrain's.

Architectures are data: an ``arch_zoo`` of named settings with aliases
(``dict.fromkeys(['t', 'tiny'], ...)``) or a custom dict checked for its keys,
as in mmpretrain's ConvNeXt and Swin. The base also holds the outputs
(``out_indices``, ``out_channels``, ``out_strides``), ``frozen_stages``,
``train()`` honouring ``norm_eval``, strict ``Pretrained`` loading, and
:meth:`BaseBackbone.get_layer_depth`, which mmpretrain's
``LearningRateDecayOptimWrapperConstructor`` calls for layer-wise
learning-rate decay.
"""
import copy
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmvheat.utils.checkpoint_loading import CheckpointNotFoundError
from mmvheat.utils.torch_modes import autocast_enabled, is_capturing_graph
from mmvheat.utils.weights import (SHOWN_NAMES, CheckpointContentError,
                                   CheckpointMismatchError,
                                   load_state_dict_strictly)

__all__ = ['BaseBackbone', 'DEFAULT_INIT_CFG', 'parse_out_indices']

#: Truncated-normal Linear layers and unit LayerNorms, the backbones' init.
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
    dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
]

# Layers that ``norm_eval`` keeps in eval mode while training.
NORM_LAYERS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def parse_out_indices(out_indices: Union[int, Sequence[int]],
                      num_stages: int) -> Tuple[int, ...]:
    """Normalise ``out_indices`` (an int or ints, negatives allowed)."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    parsed = []
    for index in out_indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices must be in [-{num_stages}, '
                             f'{num_stages}), got {index}')
        parsed.append(index % num_stages)
    return tuple(parsed)


class BaseBackbone(BaseModule):
    """A backbone of ``num_stages`` stages with a stem in front.

    Subclasses define :attr:`arch_zoo` and :attr:`arch_keys`, complete a
    parsed arch in :meth:`_complete_arch`, set ``self.depths`` (blocks per
    stage) and ``self.stage_channels`` (output channels per stage), build
    ``self.stages`` and a stem named :attr:`stem_name`, and end their
    constructor with ``self._freeze_stages()``.

    Args:
        arch (str | dict): A key of :attr:`arch_zoo` (any case) or a dict
            with exactly the keys :attr:`arch_keys` and optionally
            :attr:`optional_arch_keys`.
        out_indices (Sequence[int] | int): Stages whose outputs are returned;
            negative indices count from the end.
        frozen_stages (int): Freeze the stem and the first ``frozen_stages``
            stages, and their output norms (no gradients, eval mode); 0 or
            -1 freezes nothing.
        norm_eval (bool): Keep normalization layers in eval mode while
            training.
        init_cfg (dict | list[dict], optional): Initialization config. A
            ``Pretrained`` config loads strictly: a weight left unset or one
            the model lacks is an error listing them (see
            :attr:`optional_weights`).
    """
    #: Named architectures; aliases share one entry.
    arch_zoo: Dict[str, dict] = {}
    #: Keys a custom arch dict must have.
    arch_keys: Tuple[str, ...] = ()
    #: Keys a custom arch dict may have besides :attr:`arch_keys`.
    optional_arch_keys: Tuple[str, ...] = ()
    num_stages = 4
    #: Output stride of each stage.
    strides: Tuple[int, ...] = (4, 8, 16, 32)
    #: The attribute holding the stem.
    stem_name = 'stem'
    #: Weights a ``Pretrained`` checkpoint may lack or hold in excess (a
    #: regular expression on their names), or None.
    optional_weights: Optional[str] = None
    #: The tool that converts the published checkpoints, named in errors.
    converter = ''
    #: Key prefixes that mark a checkpoint in the published layout.
    published_prefixes: Tuple[str, ...] = ()

    def __init__(self,
                 arch: Union[str, dict],
                 out_indices: Union[int, Sequence[int]],
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self.parse_arch(arch)
        self.out_indices = parse_out_indices(out_indices, self.num_stages)
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [-1, '
                             f'{self.num_stages}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = False

    # -- architecture -------------------------------------------------------
    @classmethod
    def parse_arch(cls, arch: Union[str, dict]) -> dict:
        """The settings of ``arch``: a fresh copy, completed and checked."""
        name = cls.__name__
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(f'Unknown {name} arch {arch!r}; choose from '
                                 f'{sorted(cls.arch_zoo)} or pass a dict '
                                 f'with the keys {list(cls.arch_keys)}.')
            settings = copy.deepcopy(cls.arch_zoo[key])
        elif isinstance(arch, dict):
            allowed = cls.arch_keys + cls.optional_arch_keys
            missing = [k for k in cls.arch_keys if k not in arch]
            unknown = [k for k in arch if k not in allowed]
            if missing or unknown:
                optional = (f' (optionally {list(cls.optional_arch_keys)})'
                            if cls.optional_arch_keys else '')
                raise ValueError(
                    f'A custom {name} arch needs the keys '
                    f'{list(cls.arch_keys)}{optional}; missing {missing}, '
                    f'unknown {unknown}.')
            settings = copy.deepcopy(dict(arch))
        else:
            raise ValueError(f'arch must be a str or a dict, got {arch!r}')
        return cls._complete_arch(settings)

    @classmethod
    def _complete_arch(cls, settings: dict) -> dict:
        """Normalise and check parsed settings (per-stage lists, ranges)."""
        return settings

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each returned map."""
        return tuple(self.stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> Tuple[int, ...]:
        """Stride of each returned map relative to the input."""
        return tuple(self.strides[i] for i in self.out_indices)

    # -- layer-wise learning-rate decay -------------------------------------
    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """The depth of a parameter, for layer-wise learning-rate decay.

        The stem is layer 0 and block ``j`` of stage ``i`` is layer
        ``sum(depths[:i]) + j + 1``; what a stage holds outside its blocks
        belongs to the block that uses it first (or last, see
        :meth:`_block_of`); output norms and everything outside the backbone
        (neck, head) are the last layer.

        Args:
            param_name (str): The parameter's name, e.g. from
                ``model.named_parameters()``.
            prefix (str): The backbone's prefix in ``param_name``, e.g.
                ``'backbone.'``. Defaults to ``''``.

        Returns:
            Tuple[int, int]: The layer depth and the number of layers.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        stage = re.match(r'stages\.(\d+)\.(.+)', name)
        if name.startswith(self.stem_name + '.'):
            return 0, num_layers
        if stage is None:
            return num_layers - 1, num_layers
        i = int(stage.group(1))
        block = self._block_of(stage.group(2), self.depths[i])
        return sum(self.depths[:i]) + block + 1, num_layers

    def _block_of(self, name: str, depth: int) -> int:
        """The block (0 to ``depth - 1``) a parameter of a stage belongs to,
        given its name inside the stage."""
        raise NotImplementedError

    # -- initialisation and loading -----------------------------------------
    def init_weights(self):
        """Initialise the weights, or load them from a ``Pretrained`` config
        (strictly: see :attr:`optional_weights`)."""
        if (isinstance(self.init_cfg, dict)
                and self.init_cfg.get('type') == 'Pretrained'):
            self._load_pretrained(self.init_cfg)
            self._is_init = True
            return
        super().init_weights()
        self._init_own_weights()

    def _init_own_weights(self):
        """Initialise what ``init_cfg``'s layer rules cannot reach."""

    def _missing_checkpoint_hint(self) -> str:
        return (f'Convert the published weights with {self.converter}, or '
                'set model.backbone.init_cfg=None to train from scratch.')

    def _load_pretrained(self, init_cfg: dict):
        from mmengine.runner.checkpoint import _load_checkpoint
        logger = MMLogger.get_current_instance()
        name = type(self).__name__
        filename = init_cfg['checkpoint']
        prefix = init_cfg.get('prefix')
        if '://' not in filename and not osp.isfile(filename):
            raise CheckpointNotFoundError(
                f'Pretrained {name} checkpoint not found: {filename}. '
                f'{self._missing_checkpoint_hint()}')
        logger.info(f'Load {name} weights from {filename}' +
                    (f' (prefix {prefix!r})' if prefix else ''))
        checkpoint = _load_checkpoint(filename,
                                      init_cfg.get('map_location', 'cpu'))
        state_dict = checkpoint
        if isinstance(checkpoint, dict):
            state_dict = checkpoint.get('state_dict', checkpoint)
            if isinstance(state_dict, dict) and isinstance(
                    state_dict.get('model'), dict):
                state_dict = state_dict['model']
        if not isinstance(state_dict, dict):
            raise CheckpointContentError(f'{filename} holds no state dict (a '
                                         f'{type(state_dict).__name__})')
        if prefix:
            state_dict = self._weights_under(state_dict, prefix, filename)
        unexpected_published = any(
            isinstance(k, str) and k.startswith(self.published_prefixes)
            for k in state_dict)
        if unexpected_published:
            hint = (f'it is a published {name} checkpoint: convert it '
                    f'with {self.converter}')
        else:
            hint = (f'is it a {name} checkpoint of this arch '
                    f'({self.arch_settings}) in mmvheat layout (see '
                    f'{self.converter}), with the right prefix?')
        fresh, unused = load_state_dict_strictly(
            self,
            state_dict,
            f'The checkpoint {filename}',
            optional=self.optional_weights,
            allow_nonfinite=init_cfg.get('allow_nonfinite', False),
            hint=hint)
        if fresh:
            logger.info(f'Initialised afresh: {fresh}')
        if unused:
            logger.info(f'Unused weights of the checkpoint: {unused}')

    @staticmethod
    def _weights_under(state_dict: dict, prefix: str, filename: str) -> dict:
        """The weights whose names start with ``prefix``, without it."""
        if not prefix.endswith('.'):
            prefix += '.'
        selected = {
            k[len(prefix):]: v
            for k, v in state_dict.items()
            if isinstance(k, str) and k.startswith(prefix)
        }
        if not selected:
            firsts = sorted(
                {str(k).split('.', 1)[0] + '.'
                 for k in state_dict})
            raise CheckpointMismatchError(
                f'{filename} holds no weights under the prefix {prefix!r} '
                f'(its names begin with {firsts[:SHOWN_NAMES]})')
        return selected

    # -- train/eval behaviour -----------------------------------------------
    def _freeze_stages(self):
        if self.frozen_stages <= 0:
            return
        frozen = [getattr(self, self.stem_name)]
        frozen += list(self.stages[:self.frozen_stages])
        frozen += [
            getattr(self, f'norm{i}') for i in range(self.frozen_stages)
            if hasattr(self, f'norm{i}')
        ]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, NORM_LAYERS):
                    module.eval()
        return self

    def _input_conv(self) -> nn.Conv2d:
        """The stem's first convolution, which the image meets."""
        return next(
            module for module in getattr(self, self.stem_name).modules()
            if isinstance(module, nn.Conv2d))

    def check_input(self, x: Tensor) -> None:
        """Refuse an input the stem cannot take, saying what it expects.

        The stem's convolutions would refuse it too, in words about their
        kernels and weights. Any side of at least one pixel is taken: the
        padded stride-2 convolutions round up, so a side below the total
        stride of 32 ends as a 1-pixel map. Float64 runs when the weights
        are float64 (``model.double()``); other dtypes must match the
        weights, unless autocast casts them. While tracing or exporting
        only the dimensions and dtype are checked, so that no shape enters
        the graph.

        Raises:
            ValueError: naming the expected input.
        """
        name = type(self).__name__
        conv = self._input_conv()
        expected = f'{name} takes images (B, {conv.in_channels}, H, W)'
        if not isinstance(x, Tensor):
            raise TypeError(f'{expected}; got a {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'{expected}; got a {x.dim()}-D input of shape '
                             f'{tuple(x.shape)}')
        if not x.is_floating_point():
            raise ValueError(
                f'{expected} of a floating dtype; got {x.dtype}: normalise '
                "integer images with the model's data preprocessor, or "
                'convert them with .float()')
        weight = conv.weight.dtype
        if x.dtype != weight and not autocast_enabled(x.device.type):
            raise ValueError(
                f'{expected}; got {x.dtype} for weights in {weight}: convert '
                f'the input (.to({weight})) or the model (e.g. .double() '
                'to run in float64)')
        if is_capturing_graph():
            return
        channels, height, width = x.shape[1:]
        if channels != conv.in_channels:
            raise ValueError(f'{expected}; got C={channels} (shape '
                             f'{tuple(x.shape)})')
        if height < 1 or width < 1:
            raise ValueError(f'{expected} with sides of at least 1 pixel; '
                             f'got {height} x {width}')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return one NCHW map per entry of ``out_indices``.

        Args:
            x (Tensor): Images ``(B, C, H, W)`` of the weights' floating
                dtype (see :meth:`check_input`).
        """
        self.check_input(x)
        x = getattr(self, self.stem_name)(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(self._output(i, x))
        return tuple(outs)

    def _output(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i``'s output ``x`` as the backbone returns it."""
        return x

    def switch_to_deploy(self):
        """Specialise the model for inference (nothing to do by default).

        The tools call it before testing, benchmarking or exporting, as for
        mmpretrain's RepVGG (see :mod:`.deploy`).
        """
        self.deploy = True
