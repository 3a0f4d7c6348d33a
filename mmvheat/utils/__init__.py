# Copyright (c) mmvheat contributors. All rights reserved.
from .freq_embed import pad_freq_embed, resize_freq_embed
from .io import (CheckpointWriteError, first_line, run_checkpoint_tool,
                 save_checkpoint_atomic)

__all__ = [
    'resize_freq_embed', 'pad_freq_embed', 'save_checkpoint_atomic',
    'first_line', 'run_checkpoint_tool', 'CheckpointWriteError'
]
