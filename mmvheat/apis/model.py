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
from typing import List, Mapping, Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from torch import nn

from mmvheat.utils.checkpoint_loading import (CheckpointMismatchError,
                                              load_checkpoint_file,
                                              mmengine_checkpoint_loading)
from .configs import config_name, read_config, registry_errors_explained
from .libraries import detect_library, register_library

__all__ = [
    'CheckpointMismatchError', 'SHOWN_NAMES', 'unwrap_model', 'fit_state_dict',
    'build_model', 'load_weights', 'TensorModeWrapper', 'flat_tensors'
]

#: How many names of each kind a mismatch message shows.
SHOWN_NAMES = 10
# torch's words for a weight whose shape differs from the model's.
_SIZE_MISMATCH = re.compile(r'size mismatch for ([^:\s]+):')


def _named(kind: str, names: List[str]) -> str:
    shown = names[:SHOWN_NAMES]
    if len(names) > SHOWN_NAMES:
        shown.append(f'... {len(names) - SHOWN_NAMES} more')
    return f'{len(names)} {kind} [{", ".join(shown)}]'


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
                   strict: bool = True) -> nn.Module:
    """Load ``state_dict`` into ``model``, refusing one that does not fit.

    The weights are loaded as ``load_state_dict(strict=False)`` does (the
    models' own load hooks, such as vHeat's ``freq_embed`` resizing, run
    first); then a weight of the model left unset (BN's
    ``num_batches_tracked`` counters aside, as mmengine does), a weight the
    model lacks or one of another shape is an error listing them.

    Args:
        model (nn.Module): The model (see :func:`unwrap_model`).
        state_dict (Mapping[str, Tensor]): Its weights, keys without a
            ``module.`` prefix.
        source (str): The checkpoint, named in the message.
        strict (bool): Raise on a mismatch; else log it as a warning.
            Defaults to True.

    Returns:
        nn.Module: ``model``.

    Raises:
        CheckpointMismatchError: with ``strict``, one line naming the
            mismatched weights (the first :data:`SHOWN_NAMES` of each kind).
    """
    model = unwrap_model(model)
    reshaped = []
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:
        reshaped = _SIZE_MISMATCH.findall(str(exc))
        if not reshaped:
            raise
        # torch copies every other weight before it reports these; what is
        # left to know is which weights it left unset or did not use.
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if not (missing or unexpected or reshaped):
        return model
    problems = [
        _named(kind, names)
        for kind, names in (('weights unset', missing),
                            ('unexpected', unexpected), ('of another shape',
                                                         reshaped)) if names
    ]
    message = (f'{source} does not fit the {type(model).__name__}: '
               f'{"; ".join(problems)}')
    if strict:
        raise CheckpointMismatchError(
            f'{message}; load it anyway with --non-strict (strict=False in '
            'Python)')
    MMLogger.get_current_instance().warning(
        f'{source} does not fit the {type(model).__name__}: weights unset '
        f'{missing}, unexpected {unexpected}, of another shape {reshaped}')
    return model


def load_weights(model: nn.Module,
                 checkpoint: str,
                 strict: bool = True,
                 trust: bool = False) -> nn.Module:
    """Load the weights of an mmengine or plain checkpoint into ``model``.

    Args:
        model (nn.Module): The model.
        checkpoint (str): A file or URL; its ``state_dict`` (or the whole
            dict) is loaded, a ``module.`` prefix (data-parallel) removed.
        strict (bool): See :func:`fit_state_dict`. Defaults to True.
        trust (bool): Unpickle objects other than tensors (see
            :func:`mmvheat.utils.checkpoint_loading.load_checkpoint_file`).
            Defaults to False.

    Raises:
        CheckpointLoadError: the file is missing, unreadable or corrupt.
        CheckpointRefusedError: it holds objects refused without ``trust``.
        CheckpointMismatchError: with ``strict``, naming every weight unset,
            unexpected or of another shape.
    """
    if '://' in checkpoint:  # mmengine's loaders for URLs and model zoos
        from mmengine.runner.checkpoint import _load_checkpoint
        with mmengine_checkpoint_loading(trust):
            loaded = _load_checkpoint(checkpoint, map_location='cpu')
    else:
        loaded = load_checkpoint_file(checkpoint, 'cpu', trust)
    state_dict = loaded.get('state_dict', loaded) if isinstance(loaded,
                                                                dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(
            f'{checkpoint} holds no state dict (a {type(loaded).__name__})')
    state_dict = {
        re.sub(r'^module\.', '', k): v
        for k, v in state_dict.items()
    }
    return fit_state_dict(model, state_dict, checkpoint, strict)


def build_model(config: Union[str, Config],
                checkpoint: Optional[str] = None,
                cfg_options: Optional[dict] = None,
                device: Union[str, torch.device] = 'cpu',
                strict: bool = True,
                trust: bool = False) -> nn.Module:
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

    Returns:
        nn.Module: The model in eval mode on ``device``, SyncBN layers
        reverted to BN, with the config at ``model.cfg``.

    Raises:
        ConfigError: the config cannot be read, or names an unknown type.
        CheckpointLoadError, CheckpointRefusedError,
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
        load_weights(model, checkpoint, strict, trust)
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
