# Copyright (c) mmvheat contributors. All rights reserved.
from .io import (ByteProgress, OutputWriteError, ToolError, UsageError,
                 atomic_write, check_output_is_not_input, first_line,
                 run_tool, save_checkpoint_atomic)

__all__ = [
    'resize_freq_embed', 'pad_freq_embed', 'atomic_write',
    'save_checkpoint_atomic', 'check_output_is_not_input', 'first_line',
    'run_tool', 'ByteProgress', 'ToolError', 'UsageError', 'OutputWriteError'
]


def __getattr__(name):
    # The freq_embed resampler moved to the model layers; importing it
    # here lazily keeps ``import mmvheat.utils`` free of the models.
    if name in ('resize_freq_embed', 'pad_freq_embed'):
        from . import freq_embed
        return getattr(freq_embed, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
