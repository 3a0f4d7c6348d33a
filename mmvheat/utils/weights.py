# Copyright (c) mmvheat contributors. All rights reserved.
"""Putting a checkpoint's weights into a model, strictly and checked.

:func:`load_state_dict_strictly` is the one way the tools and the
backbones' ``Pretrained`` initialisation load weights: first
:func:`check_state_dict` makes sure that what the file calls weights are
weights (names that are strings, values that are dense tensors of the kind
the model holds, every value finite), then the model's own load hooks run
(such as vHeat's ``freq_embed`` resizing), and a weight left unset, one the
model lacks or one of another shape is an error listing them. torch itself
would cast an int64 or complex value into a float weight (the imaginary
part dropped), load NaN without a word, and ``load_state_dict`` in mmengine
only warns about a value that is no tensor, leaving the weight at its
random initialisation.
"""
import itertools
import re
from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .io import ToolError

__all__ = [
    'CheckpointMismatchError', 'CheckpointContentError',
    'ALLOW_NONFINITE_OPTION', 'SHOWN_NAMES', 'check_state_dict',
    'load_state_dict_strictly'
]

#: The option that loads weights with NaN or Inf values, for inspection.
ALLOW_NONFINITE_OPTION = '--allow-nonfinite'
#: How many names of each kind a mismatch message shows.
SHOWN_NAMES = 10


class CheckpointMismatchError(ToolError, RuntimeError):
    """A checkpoint whose weights do not match the model's: weights it
    leaves unset, weights the model lacks, or weights of another shape."""


class CheckpointContentError(ToolError, ValueError):
    """A checkpoint whose weights are not weights: no state dict, a name
    that is not a string, a value that is not a dense tensor or not of the
    model's kind (float, integer, complex), or NaN and Inf values."""


def _cast_loses(value: torch.dtype, weight: torch.dtype) -> bool:
    """Whether ``copy_`` of a ``value`` tensor into a ``weight`` changes
    what it means: an integer, bool or complex value into a float weight
    (the imaginary part dropped), a complex value into any real one.
    Float to float (precision) and float to integer counters are casts
    checkpoints make."""
    if value.is_complex:
        return not weight.is_complex
    return weight.is_floating_point and not value.is_floating_point


def _named(kind: str, names: List[str]) -> str:
    shown = names[:SHOWN_NAMES]
    if len(names) > SHOWN_NAMES:
        shown.append(f'... {len(names) - SHOWN_NAMES} more')
    return f'{len(names)} {kind} [{", ".join(shown)}]'


def check_state_dict(state_dict,
                     source: str,
                     expected: Optional[Mapping] = None,
                     allow_nonfinite: bool = False) -> Dict[str, Tensor]:
    """Make sure a checkpoint's weights are weights.

    Args:
        state_dict: What the checkpoint gives as its state dict.
        source (str): The checkpoint, named in the message.
        expected (Mapping[str, Tensor], optional): The model's state dict:
            a value that is not floating (integer, bool or complex) for one
            of its floating weights is refused, as is a complex value for
            any weight. Defaults to None.
        allow_nonfinite (bool): Accept NaN and Inf values. Defaults to
            False.

    Returns:
        dict: ``state_dict``.

    Raises:
        CheckpointContentError: one line naming the first weight at fault
            (and, for non-finite values, how many there are).
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointContentError(
            f'{source} holds no state dict (a {type(state_dict).__name__})')
    nonfinite, first_nonfinite = 0, None
    for key, value in state_dict.items():
        if type(key) is not str:
            raise CheckpointContentError(
                f'{source}: a weight named by a {type(key).__name__} '
                f'({key!r}), not a string')
        if not isinstance(value, Tensor):
            raise CheckpointContentError(
                f'{source}: weight {key} is a {type(value).__name__}, not a '
                'tensor')
        if value.layout is not torch.strided or value.device.type == 'meta':
            raise CheckpointContentError(
                f'{source}: weight {key} is a {value.layout} tensor on '
                f'{value.device}, not a dense one with values')
        target = expected.get(key) if expected is not None else None
        if isinstance(target, Tensor) and _cast_loses(value.dtype,
                                                      target.dtype):
            raise CheckpointContentError(
                f'{source}: weight {key} is {value.dtype} where the model '
                f'holds {target.dtype}')
        if value.is_floating_point() or value.is_complex():
            count = int((~torch.isfinite(value)).sum())
            if count and first_nonfinite is None:
                first_nonfinite = key
            nonfinite += count
    if nonfinite and not allow_nonfinite:
        raise CheckpointContentError(
            f'{source}: {nonfinite} NaN or Inf '
            f'value{"s" if nonfinite > 1 else ""} in its weights, the '
            f'first in {first_nonfinite}; load it for inspection with '
            f'{ALLOW_NONFINITE_OPTION} (allow_nonfinite=True in Python)')
    return state_dict


def load_state_dict_strictly(module: nn.Module,
                             state_dict: Mapping,
                             source: str,
                             strict: bool = True,
                             optional: Optional[str] = None,
                             allow_nonfinite: bool = False,
                             hint: str = '') -> Tuple[List[str], List[str]]:
    """Load ``state_dict`` into ``module``, refusing one that does not fit.

    The weights are checked (:func:`check_state_dict`) and loaded as
    ``load_state_dict(strict=False)`` does, the module's own load hooks
    first; a weight whose shape still differs from the module's is left
    out and reported, so that everything else loads. Then a weight of the
    module left unset (BN's ``num_batches_tracked`` counters aside, as
    mmengine does), a weight the module lacks or one of another shape is
    an error listing them.

    Args:
        module (nn.Module): The model.
        state_dict (Mapping[str, Tensor]): Its weights.
        source (str): The checkpoint, named in the message.
        strict (bool): Raise on a mismatch; else log it as a warning.
            Defaults to True.
        optional (str, optional): A regular expression on the names of
            weights that the checkpoint may lack or hold in excess.
            Defaults to None.
        allow_nonfinite (bool): See :func:`check_state_dict`. Defaults to
            False.
        hint (str): What to do about a mismatch, ending the message.
            Defaults to ``''``.

    Returns:
        tuple[list[str], list[str]]: The optional weights left at their
        initialisation, and those of the checkpoint left unused.

    Raises:
        CheckpointContentError: see :func:`check_state_dict`.
        CheckpointMismatchError: with ``strict``, one line naming the
            mismatched weights (the first :data:`SHOWN_NAMES` of each kind).
    """
    expected = module.state_dict()
    check_state_dict(state_dict, source, expected, allow_nonfinite)
    reshaped = []

    def leave_out_other_shapes(owner, entries, prefix, *args):
        # Registered last on each module, so it sees what the module's own
        # hooks made of the entries.
        own = itertools.chain(
            owner._parameters.items(),
            ((name, buffer) for name, buffer in owner._buffers.items()
             if name not in owner._non_persistent_buffers_set))
        for name, tensor in own:
            key = prefix + name
            if tensor is not None and key in entries and (entries[key].shape
                                                          != tensor.shape):
                reshaped.append(key)
                del entries[key]

    handles = [
        owner.register_load_state_dict_pre_hook(leave_out_other_shapes)
        for owner in module.modules()
    ]
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
    finally:
        for handle in handles:
            handle.remove()
    optional_names = re.compile(optional or r'(?!)')
    missing = [
        k for k in missing
        if k not in reshaped and not k.endswith('num_batches_tracked')
    ]
    fresh = [k for k in missing if optional_names.match(k)]
    unused = [k for k in unexpected if optional_names.match(k)]
    missing = [k for k in missing if not optional_names.match(k)]
    unexpected = [k for k in unexpected if not optional_names.match(k)]
    if missing or unexpected or reshaped:
        problems = '; '.join(
            _named(kind, names)
            for kind, names in (('weights unset', missing), ('unexpected',
                                                             unexpected),
                                ('of another shape', reshaped)) if names)
        message = (f'{source} does not fit the {type(module).__name__}: '
                   f'{problems}')
        if strict:
            raise CheckpointMismatchError(
                f'{message}{"; " + hint if hint else ""}')
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().warning(message)
    return fresh, unused
