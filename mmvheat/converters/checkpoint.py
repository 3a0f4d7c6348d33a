# Copyright (c) mmvheat contributors. All rights reserved.
"""Finding a loaded checkpoint's weights, with clear refusals.

The file is read by :func:`mmvheat.utils.checkpoint_loading.
load_checkpoint_file`, whose errors say what is wrong with the file. What
it holds is checked here: every failure is a :class:`CheckpointError` whose
one-line message says what is wrong with the content (not a dict, no state
dict of tensors, already converted, keys of another model), so that the
tools can report it without a traceback.
"""
from collections.abc import Mapping
from typing import (Callable, Dict, Iterator, List, MutableMapping, NamedTuple,
                    Pattern, Tuple, Type)

import torch
from torch import Tensor

__all__ = [
    'CheckpointError', 'ConvertedWeights', 'extract_state_dict',
    'convert_checkpoint', 'published_items', 'refuse_unknown_keys'
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


class ConvertedWeights(NamedTuple):
    """A published checkpoint's weights in this project's layout."""
    #: The converted state dict.
    state_dict: Dict
    #: ``'classification'`` or ``'dense'`` (a detection/segmentation model).
    layout: str
    #: How many keys the published state dict had.
    num_source_keys: int


def extract_state_dict(checkpoint, use_ema: bool = False) -> Dict:
    """The weights of a loaded checkpoint.

    ``model`` (or ``model_ema`` with ``use_ema``) as published training
    scripts save them, ``state_dict`` as mmengine does, or the mapping
    itself when it already is a state dict.

    Raises:
        CheckpointError: if there is no mapping of names to tensors.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    if use_ema:
        if 'model_ema' not in checkpoint:
            hint = ''
            if 'ema_state_dict' in checkpoint:
                hint = ('; mmengine checkpoints saved with EMAHook already '
                        'hold the EMA weights under "state_dict": drop --ema')
            raise CheckpointError('no "model_ema" entry in the checkpoint '
                                  f'(keys: {sorted(checkpoint)[:10]}){hint}')
        state_dict = checkpoint['model_ema']
    else:
        state_dict = checkpoint
        for key in ('model', 'state_dict'):
            if isinstance(checkpoint.get(key), Mapping):
                state_dict = checkpoint[key]
                break
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in state_dict.items()):
        raise CheckpointError('no state dict of tensors found')
    return state_dict


def convert_checkpoint(checkpoint,
                       convert: Callable[[Mapping], Dict],
                       converted_key: Pattern,
                       error: Type[CheckpointError],
                       use_ema: bool = False) -> ConvertedWeights:
    """Find a loaded published checkpoint's weights and convert them.

    Args:
        checkpoint: What ``torch.load`` returned.
        convert (callable): Maps the published state dict to ours.
        converted_key (re.Pattern): Matches keys of our layout, to refuse
            weights that are already converted.
        error (type): The model's :class:`CheckpointError`.
        use_ema (bool): Take the ``model_ema`` weights. Defaults to False.

    Returns:
        ConvertedWeights: the state dict, the source layout and its number
        of keys.
    """
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    if any(converted_key.match(k) for k in state_dict):
        raise error('already in the mmvheat layout, nothing to convert')
    converted = convert(state_dict)
    dense = any(k.startswith('backbone.') for k in state_dict)
    return ConvertedWeights(converted, 'dense' if dense else 'classification',
                            len(state_dict))


def published_items(
    state_dict: Mapping[str, Tensor], converted: MutableMapping[str, Tensor]
) -> Iterator[Tuple[str, str, Tensor, bool]]:
    """The published model's entries of a state dict, for a converter.

    Yields ``(key, model key, value, dense)``: in a dense (mmdet/mmseg)
    checkpoint the model key is the key without ``backbone.``, and the
    neck's and heads' keys, already in mmdet/mmseg layout, are copied to
    ``converted`` instead of being yielded.
    """
    dense = any(k.startswith('backbone.') for k in state_dict)
    for key, value in state_dict.items():
        if dense and not key.startswith('backbone.'):
            converted[key] = value
            continue
        yield key, key[len('backbone.'):] if dense else key, value, dense


def refuse_unknown_keys(unknown: List[str], error: Type[CheckpointError],
                        model: str) -> None:
    """Raise ``error`` naming the keys, if any, that were not mapped."""
    if unknown:
        raise error(f'keys that do not belong to a published {model} model '
                    f'({len(unknown)}): {unknown[:10]}')
