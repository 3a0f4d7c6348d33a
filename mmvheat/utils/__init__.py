# Copyright (c) mmvheat contributors. All rights reserved.
from .freq_embed import pad_freq_embed, resize_freq_embed
from .io import first_line, save_checkpoint_atomic

__all__ = [
    'resize_freq_embed', 'pad_freq_embed', 'save_checkpoint_atomic',
    'first_line'
]
