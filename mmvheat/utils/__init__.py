# Copyright (c) mmvheat contributors. All rights reserved.
from .io import (CheckpointWriteError, first_line, run_checkpoint_tool,
                 save_checkpoint_atomic)

__all__ = [
    'save_checkpoint_atomic', 'first_line', 'run_checkpoint_tool',
    'CheckpointWriteError'
]


def __getattr__(name):
    # The freq_embed resampler moved to the model layers; importing it
    # here lazily keeps ``import mmvheat.utils`` free of the models.
    if name in ('resize_freq_embed', 'pad_freq_embed'):
        from . import freq_embed
        return getattr(freq_embed, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
