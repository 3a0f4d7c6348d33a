# Copyright (c) mmvheat contributors. All rights reserved.
"""Published checkpoints into this project's layout.

The logic behind ``tools/model_converters/*_to_mmvheat.py`` and
``tools/interpolate4downstream.py`` (which read the files with
:func:`mmvheat.utils.checkpoint_loading.load_checkpoint_file`): finding a
checkpoint's weights with clear refusals (:mod:`.checkpoint`), mapping
published vHeat and MPViT keys (:mod:`.vheat`, :mod:`.mpvit`), reading the
arch off converted weights (:mod:`.arch`) and enlarging vHeat's frequency
embeddings for downstream sizes (:mod:`.freq_embed`).
"""
from .arch import describe_arch, infer_mpvit_arch, infer_vheat_arch
from .checkpoint import CheckpointError, extract_state_dict
from .freq_embed import (MODES, SIZE_MULTIPLE, Enlargement, check_size,
                         check_sizes, embed_side, enlarge_freq_embeds)
from .mpvit import (NotAnMPViTCheckpoint, convert_mpvit_checkpoint,
                    convert_published_mpvit, is_published_mpvit_state_dict)
from .vheat import (NotAVHeatCheckpoint, convert_published_vheat,
                    convert_vheat_checkpoint, is_mmvheat_vheat_state_dict,
                    is_published_vheat_state_dict, to_published_vheat,
                    vheat_weights)

__all__ = [
    'CheckpointError', 'extract_state_dict', 'NotAVHeatCheckpoint',
    'is_published_vheat_state_dict', 'is_mmvheat_vheat_state_dict',
    'convert_published_vheat', 'convert_vheat_checkpoint', 'vheat_weights',
    'to_published_vheat', 'NotAnMPViTCheckpoint',
    'is_published_mpvit_state_dict', 'convert_published_mpvit',
    'convert_mpvit_checkpoint', 'infer_vheat_arch', 'infer_mpvit_arch',
    'describe_arch', 'MODES', 'SIZE_MULTIPLE', 'Enlargement', 'embed_side',
    'check_size', 'check_sizes', 'enlarge_freq_embeds'
]
