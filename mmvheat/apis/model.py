# Copyright (c) mmvheat contributors. All rights reserved.
"""A config's model, built for analysis, export and inference.

:func:`build_model` builds ``cfg.model`` with the registry of the config's
library and loads a checkpoint strictly: a weight the checkpoint leaves
unset, or one it holds that the model lacks, is an error listing them
(mmengine's ``load_checkpoint`` only logs them, and the model then runs with
random weights). :class:`TensorModeWrapper` turns ``model(x,
mode='tensor')`` into a plain module for tracing, export and FLOP counting.
"""
import copy
import os.path as osp
import re
import sys
from importlib import import_module
from typing import Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from torch import nn

from .libraries import detect_library, register_library

__all__ = [
    'CheckpointMismatchError', 'build_model', 'load_weights',
    'TensorModeWrapper', 'flat_tensors'
]


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose weights do not match the model's."""


def load_weights(model: nn.Module,
                 checkpoint: str,
                 strict: bool = True) -> nn.Module:
    """Load the weights of an mmengine or plain checkpoint into ``model``.

    Args:
        model (nn.Module): The model.
        checkpoint (str): A file or URL; its ``state_dict`` (or the whole
            dict) is loaded, a ``module.`` prefix (data-parallel) removed.
        strict (bool): Raise when a weight of the model stays unset or the
            checkpoint holds weights the model lacks; else log them as
            warnings. Defaults to True.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: with ``strict``, naming every weight unset
            and unexpected.
    """
    from mmengine.runner.checkpoint import _load_checkpoint
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    loaded = _load_checkpoint(checkpoint, map_location='cpu')
    state_dict = loaded.get('state_dict', loaded) if isinstance(loaded,
                                                                dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(
            f'{checkpoint} holds no state dict (a {type(loaded).__name__})')
    state_dict = {
        re.sub(r'^module\.', '', k): v
        for k, v in state_dict.items()
    }
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        message = (f'{checkpoint} does not fit the {type(model).__name__}: '
                   f'{len(missing)} weights unset {missing}, '
                   f'{len(unexpected)} unexpected {unexpected}')
        if strict:
            raise CheckpointMismatchError(
                f'{message}; load it anyway with strict=False '
                '(--non-strict in the tools)')
        MMLogger.get_current_instance().warning(message)
    return model


def build_model(config: Union[str, Config],
                checkpoint: Optional[str] = None,
                cfg_options: Optional[dict] = None,
                device: Union[str, torch.device] = 'cpu',
                strict: bool = True) -> nn.Module:
    """Build a config's model, load its weights, and put it in eval mode.

    Args:
        config (str | Config): The config (mmpretrain, mmdet or mmseg, from
            its ``default_scope``).
        checkpoint (str, optional): Weights to load (see
            :func:`load_weights`). Without, the model keeps its random
            initialisation and its backbone's ``init_cfg`` is dropped.
            Defaults to None.
        cfg_options (dict, optional): Merged into the config first.
            Defaults to None.
        device (str | torch.device): Defaults to ``'cpu'``.
        strict (bool): See :func:`load_weights`. Defaults to True.

    Returns:
        nn.Module: The model in eval mode on ``device``, SyncBN layers
        reverted to BN, with the config at ``model.cfg``.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    cfg = (
        copy.deepcopy(config)
        if isinstance(config, Config) else Config.fromfile(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    library = detect_library(cfg)
    register_library(library)
    if checkpoint is None:
        if cfg.model.get('backbone') is not None:
            cfg.model.backbone.init_cfg = None
        cfg.model.pop('pretrained', None)
    with DefaultScope.overwrite_default_scope(library):
        model = import_module(f'{library}.registry').MODELS.build(cfg.model)
    model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        load_weights(model, checkpoint, strict)
    model.cfg = cfg
    return model.to(device).eval()


def flat_tensors(out) -> Tuple[torch.Tensor, ...]:
    """The tensors in a nested output (tuples, lists, dict values)."""
    if isinstance(out, torch.Tensor):
        return (out, )
    if isinstance(out, dict):
        out = list(out.values())
    flat = []
    if isinstance(out, (list, tuple)):
        for item in out:
            flat.extend(flat_tensors(item))
    return tuple(flat)


class TensorModeWrapper(nn.Module):
    """``model(inputs, mode='tensor')`` as a plain module.

    Returns the output tensors as a flat tuple (for ``torch.jit.trace``,
    ONNX export and FLOP counting). A detector also gets one data sample per
    image that describes the input as unscaled and unpadded.

    Args:
        model (nn.Module): An mmpretrain, mmdet or mmseg model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _is_detector(self) -> bool:
        if 'mmdet' not in sys.modules:
            return False
        from mmdet.models.detectors import BaseDetector
        return isinstance(self.model, BaseDetector)

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if not self._is_detector():
            return flat_tensors(self.model(inputs, mode='tensor'))
        from mmdet.structures import DetDataSample
        h, w = inputs.shape[-2:]
        shape = (int(h), int(w))
        samples = [
            DetDataSample(
                metainfo=dict(
                    img_shape=shape,
                    ori_shape=shape,
                    pad_shape=shape,
                    batch_input_shape=shape,
                    scale_factor=(1., 1.))) for _ in range(inputs.shape[0])
        ]
        return flat_tensors(self.model(inputs, samples, mode='tensor'))
