# Copyright (c) mmvheat contributors. All rights reserved.
"""Former home of the ``freq_embed`` resampler, now
:mod:`mmvheat.models.layers.freq_embed`; kept as an alias until the
checkpoint converters import it from there."""
from mmvheat.models.layers.freq_embed import pad_freq_embed, resize_freq_embed

__all__ = ['pad_freq_embed', 'resize_freq_embed']
