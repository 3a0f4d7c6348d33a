# Copyright (c) mmvheat contributors. All rights reserved.
from .freq_embed import pad_freq_embed, resize_freq_embed

__all__ = ['resize_freq_embed', 'pad_freq_embed']
