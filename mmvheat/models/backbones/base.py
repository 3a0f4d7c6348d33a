# Copyright (c) mmvheat contributors. All rights reserved.
"""What every mmvheat backbone shares, in the manner of mmpretrain's: the
arch as data (an ``arch_zoo`` with aliases, or a custom dict checked for its
keys, as in mmpretrain's ConvNeXt and Swin), the outputs, freezing, and the
layer depths of layer-wise learning-rate decay. Strict ``Pretrained``
loading is in :mod:`.pretrained`, the input check in :mod:`.input_check`,
the inference forms in :mod:`.deploy`.
"""
import copy
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .input_check import check_images
from .pretrained import StrictPretrainedModule

__all__ = ['BaseBackbone']


class BaseBackbone(StrictPretrainedModule):
    """A backbone of ``num_stages`` stages with a stem in front.

    Subclasses define :attr:`arch_zoo`, :attr:`arch_keys`,
    :meth:`_complete_arch` and :meth:`_block_of`, set ``self.depths``
    (blocks per stage) and ``self.stage_channels`` (output channels per
    stage), build ``self.stages`` and a stem named :attr:`stem_name`, and end
    their constructor with ``self._freeze_stages()``.

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
        init_cfg (dict | list[dict], optional): Initialization config; a
            ``Pretrained`` one loads strictly (see
            :class:`~.pretrained.StrictPretrainedModule`).
    """
    #: Named architectures (aliases share one entry), the keys a custom arch
    #: dict must have, and those it may have besides.
    arch_zoo: Dict[str, dict] = {}
    arch_keys: Tuple[str, ...] = ()
    optional_arch_keys: Tuple[str, ...] = ()
    #: The number of stages, the output stride of each, the stem's attribute.
    num_stages = 4
    strides: Tuple[int, ...] = (4, 8, 16, 32)
    stem_name = 'stem'

    def __init__(self,
                 arch: Union[str, dict],
                 out_indices: Union[int, Sequence[int]],
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self.parse_arch(arch)
        n = self.num_stages
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        for index in out_indices:
            if not -n <= index < n:
                raise ValueError(
                    f'out_indices must be in [-{n}, {n}), got {index}')
        self.out_indices = tuple(index % n for index in out_indices)
        if not -1 <= frozen_stages <= n:
            raise ValueError(
                f'frozen_stages must be in [-1, {n}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = False

    @classmethod
    def parse_arch(cls, arch: Union[str, dict]) -> dict:
        """The settings of ``arch``: a fresh copy, completed and checked."""
        name, keys = cls.__name__, cls.arch_keys
        optional = cls.optional_arch_keys
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(f'Unknown {name} arch {arch!r}; choose from '
                                 f'{sorted(cls.arch_zoo)} or pass a dict '
                                 f'with the keys {list(keys)}.')
            return cls._complete_arch(
                copy.deepcopy(cls.arch_zoo[arch.lower()]))
        if not isinstance(arch, dict):
            raise ValueError(f'arch must be a str or a dict, got {arch!r}')
        missing = [k for k in keys if k not in arch]
        unknown = [k for k in arch if k not in keys + optional]
        if missing or unknown:
            also = f' (optionally {list(optional)})' if optional else ''
            raise ValueError(f'A custom {name} arch needs the keys '
                             f'{list(keys)}{also}; missing {missing}, '
                             f'unknown {unknown}.')
        return cls._complete_arch(copy.deepcopy(dict(arch)))

    @classmethod
    def _complete_arch(cls, settings: dict) -> dict:
        """Normalise and check parsed settings (per-stage lists, ranges)."""
        raise NotImplementedError

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each returned map."""
        return tuple(self.stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> Tuple[int, ...]:
        """Stride of each returned map relative to the input."""
        return tuple(self.strides[i] for i in self.out_indices)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """One NCHW map per entry of ``out_indices`` for images ``x``
        ``(B, C, H, W)`` (see :func:`~.input_check.check_images`)."""
        stem = getattr(self, self.stem_name)
        check_images(x, stem, type(self).__name__)
        x = stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = self._stage_forward(i, x)
            if i in self.out_indices:
                outs.append(self._output(i, x))
        return tuple(outs)

    def _stage_forward(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i`` on ``x``, the stem's or the previous stage's output,
        which only :meth:`forward` holds (unless it is returned too)."""
        return self.stages[i](x)

    def _output(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i``'s output ``x`` as the backbone returns it."""
        return x

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """The depth of a parameter, for layer-wise learning-rate decay
        (mmpretrain's ``LearningRateDecayOptimWrapperConstructor``).

        The stem is layer 0, block ``j`` of stage ``i`` layer
        ``sum(depths[:i]) + j + 1`` (what a stage holds outside its blocks
        belongs to a block, see :meth:`_block_of`), and the output norms and
        everything outside the backbone (neck, head) the last layer.

        Args:
            param_name (str): The parameter's name.
            prefix (str): The backbone's prefix in ``param_name``, e.g.
                ``'backbone.'``. Defaults to ``''``.

        Returns:
            Tuple[int, int]: The layer depth and the number of layers.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith(self.stem_name + '.'):
            return 0, num_layers
        stage = re.match(r'stages\.(\d+)\.(.+)', name)
        if stage is None:
            return num_layers - 1, num_layers
        i = int(stage.group(1))
        block = self._block_of(stage.group(2), self.depths[i])
        return sum(self.depths[:i]) + block + 1, num_layers

    def _block_of(self, name: str, depth: int) -> int:
        """The block (0 to ``depth - 1``) that the parameter ``name`` of a
        stage (its name inside the stage) belongs to."""
        raise NotImplementedError

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
                if isinstance(module,
                              (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                    module.eval()
        return self

    def switch_to_deploy(self):
        """Specialise the model for inference, as mmpretrain's RepVGG does
        (:mod:`.deploy`); nothing to do by default."""
        self.deploy = True
