# Copyright (c) mmvheat contributors. All rights reserved.
"""Reading a checkpoint file and finding its weights, with clear refusals.

Every failure is a :class:`CheckpointError` whose one-line message says what
is wrong with the file (missing, a directory, empty, truncated or corrupt,
holding objects a weights-only load refuses, no state dict of tensors), so
that the tools can report it without a traceback.
"""
import os
import os.path as osp
import pickle
import re
from collections.abc import Mapping
from typing import (Callable, Dict, Iterator, List, MutableMapping, NamedTuple,
                    Optional, Pattern, Tuple, Type)

import torch
from torch import Tensor

from mmvheat.utils.io import ByteProgress

__all__ = [
    'CheckpointError', 'ConvertedWeights', 'read_checkpoint',
    'extract_state_dict', 'convert_checkpoint', 'published_items',
    'refuse_unknown_keys'
]

_REFUSED_GLOBAL = re.compile(r'Unsupported global: GLOBAL ([\w.]+)')


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_checkpoint(path: str,
                    trust: bool = False,
                    progress: Optional[ByteProgress] = None):
    """``torch.load`` a file onto the CPU, weights only unless trusted.

    Args:
        path (str): The checkpoint file.
        trust (bool): Unpickle any object the file holds (for a file from a
            trusted source that stores, say, a training config). Unpickling
            can run arbitrary code. Defaults to False.
        progress (ByteProgress, optional): Counts the bytes read; its
            total is set to the file's size. Defaults to None.

    Raises:
        CheckpointError: if the file cannot be read as a checkpoint.
    """
    try:
        size = os.stat(path).st_size
        if osp.isdir(path):
            raise CheckpointError('is a directory, not a checkpoint file')
        if size == 0:
            raise CheckpointError('is empty')
        with open(path, 'rb') as file:
            stream = file
            if progress is not None:
                progress.total = size
                stream = progress.wrap(file)
            return torch.load(
                stream, map_location='cpu', weights_only=not trust)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError('no such file') from None
    except PermissionError:
        raise CheckpointError('cannot be read: permission denied') from None
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused and not trust:
            raise CheckpointError(
                f'holds an object of type {refused[1]}, which a weights-only '
                'load refuses; if you trust the file, pass --trust-checkpoint'
            ) from None
        raise CheckpointError(
            'is not a PyTorch checkpoint (corrupt, or another kind of file)'
        ) from None
    except Exception as exc:  # noqa: BLE001  (torch's many reader errors)
        raise CheckpointError(
            'cannot be read as a PyTorch checkpoint, truncated or corrupt '
            f'({type(exc).__name__}: {_first_line(exc)})') from None


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
