# Copyright (c) mmvheat contributors. All rights reserved.
"""A config's model, built for analysis, export and inference.

:func:`build_model` builds ``cfg.model`` with the registry of the config's
library and loads a checkpoint strictly (:func:`fit_state_dict`): a weight
the checkpoint leaves unset, one it holds that the model lacks, or one of
another shape is an error listing them (mmengine's ``load_checkpoint`` only
logs them, and the model then runs with random weights); ``tools/test.py``
and ``tools/inference.py`` check their checkpoints the same way.
:class:`TensorModeWrapper` turns ``model(x, mode='tensor')`` into a plain
module for tracing, export and FLOP counting.
"""
import copy
import re
import sys
from importlib import import_module
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from mmengine.config import Config
from torch import nn

from mmvheat.utils.checkpoint_loading import (load_checkpoint_file,
                                              mmengine_checkpoint_loading)
from mmvheat.utils.weights import (CheckpointContentError,
                                   CheckpointMismatchError,
                                   load_state_dict_strictly)
from .configs import config_name, read_config, registry_errors_explained
from .libraries import detect_library, register_library

__all__ = [
    'CheckpointMismatchError', 'CheckpointContentError', 'unwrap_model',
    'fit_state_dict', 'checkpoint_state_dict', 'build_model', 'load_weights',
    'TensorModeWrapper', 'flat_tensors'
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model that owns the weights a checkpoint holds: ``model``
    without data-parallel and test-time-augmentation wrappers (whose
    weights are the wrapped model's, under ``module.``)."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def fit_state_dict(model: nn.Module,
                   state_dict: Mapping[str, torch.Tensor],
                   source: str,
                   strict: bool = True,
                   allow_nonfinite: bool = False) -> nn.Module:
    """Load ``state_dict`` into ``model``, refusing one that does not fit
    (:func:`mmvheat.utils.weights.load_state_dict_strictly`).

    Args:
        model (nn.Module): The model, inside data-parallel or test-time
            augmentation wrappers or not (see :func:`unwrap_model`).
        state_dict (Mapping[str, Tensor]): Its weights, keys without a
            ``module.`` prefix.
        source (str): The checkpoint, named in the message.
        strict (bool): Raise on a mismatch; else log it as a warning.
            Defaults to True.
        allow_nonfinite (bool): Accept NaN and Inf values. Defaults to
            False.

    Returns:
        nn.Module: ``model``.

    Raises:
        CheckpointContentError: the weights are not weights (see
            :func:`mmvheat.utils.weights.check_state_dict`).
        CheckpointMismatchError: with ``strict``, one line naming the
            mismatched weights.
    """
    load_state_dict_strictly(
        unwrap_model(model),
        state_dict,
        source,
        strict=strict,
        allow_nonfinite=allow_nonfinite,
        hint='load it anyway with --non-strict (strict=False in Python)')
    return model


def checkpoint_state_dict(checkpoint, source: str) -> Dict[str, Any]:
    """The weights of a loaded mmengine or plain checkpoint: its
    ``state_dict`` (or the whole dict), ``module.`` prefixes removed as
    mmengine does.

    Raises:
        CheckpointContentError: it holds no dict of weights.
    """
    state_dict = checkpoint
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    if not isinstance(state_dict, dict):
        raise CheckpointContentError(
            f'{source} holds no state dict (a {type(state_dict).__name__})')
    if not state_dict:
        raise CheckpointContentError(f'{source} holds no weights')
    return {
        re.sub(r'^module\.', '', k) if isinstance(k, str) else k: v
        for k, v in state_dict.items()
    }


def load_weights(model: nn.Module,
                 checkpoint: str,
                 strict: bool = True,
                 trust: bool = False,
                 allow_nonfinite: bool = False) -> nn.Module:
    """Load the weights of an mmengine or plain checkpoint into ``model``.

    Args:
        model (nn.Module): The model.
        checkpoint (str): A file or URL; its ``state_dict`` (or the whole
            dict) is loaded, a ``module.`` prefix (data-parallel) removed.
        strict (bool): See :func:`fit_state_dict`. Defaults to True.
        trust (bool): Unpickle objects other than tensors (see
            :func:`mmvheat.utils.checkpoint_loading.load_checkpoint_file`).
            Defaults to False.
        allow_nonfinite (bool): Accept NaN and Inf values. Defaults to
            False.

    Raises:
        CheckpointLoadError: the file is missing, unreadable or corrupt.
        CheckpointRefusedError: it holds objects refused without ``trust``.
        CheckpointContentError: its weights are not weights.
        CheckpointMismatchError: with ``strict``, naming every weight unset,
            unexpected or of another shape.
    """
    if '://' in checkpoint:  # mmengine's loaders for URLs and model zoos
        from mmengine.runner.checkpoint import _load_checkpoint
        with mmengine_checkpoint_loading(trust):
            loaded = _load_checkpoint(checkpoint, map_location='cpu')
    else:
        loaded = load_checkpoint_file(checkpoint, 'cpu', trust)
    return fit_state_dict(model, checkpoint_state_dict(loaded, checkpoint),
                          checkpoint, strict, allow_nonfinite)


def build_model(config: Union[str, Config],
                checkpoint: Optional[str] = None,
                cfg_options: Optional[dict] = None,
                device: Union[str, torch.device] = 'cpu',
                strict: bool = True,
                trust: bool = False,
                allow_nonfinite: bool = False) -> nn.Module:
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
        strict (bool): See :func:`fit_state_dict`. Defaults to True.
        trust (bool): See :func:`load_weights`. Defaults to False.
        allow_nonfinite (bool): See :func:`load_weights`. Defaults to
            False.

    Returns:
        nn.Module: The model in eval mode on ``device``, SyncBN layers
        reverted to BN, with the config at ``model.cfg``.

    Raises:
        ConfigError: the config cannot be read, or names an unknown type.
        CheckpointLoadError, CheckpointRefusedError, CheckpointContentError,
        CheckpointMismatchError: see :func:`load_weights`.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    cfg = (
        copy.deepcopy(config)
        if isinstance(config, Config) else read_config(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    library = detect_library(cfg)
    register_library(library, default_scope=False)
    if checkpoint is None:
        if cfg.model.get('backbone') is not None:
            cfg.model.backbone.init_cfg = None
        cfg.model.pop('pretrained', None)
    with DefaultScope.overwrite_default_scope(library), \
            registry_errors_explained(config_name(cfg)):
        model = import_module(f'{library}.registry').MODELS.build(cfg.model)
    model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        load_weights(model, checkpoint, strict, trust, allow_nonfinite)
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
