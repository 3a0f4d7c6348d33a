# Copyright (c) mmvheat contributors. All rights reserved.
from .channels_last import conv2d_channels_last, depthwise_conv2d
from .cpu_fast_paths import (cpu_sub_batch_size, fused_linear, in_chunks,
                             in_cpu_sub_batches, pack_linear_weight)
from .drop_path import DropPath, drop_path
from .freq_embed import pad_freq_embed, resize_freq_embed
from .heat_block import (HeatBlock, HeatBlocks, HeatConduction2d, Mlp,
                         conv_nhwc, grid_size)
from .recompute import map_row_chunks, mlp_in_chunks
from .weight_init import DEFAULT_INIT_CFG, ResetParametersInit

__all__ = [
    'DropPath', 'drop_path', 'pad_freq_embed', 'resize_freq_embed',
    'DEFAULT_INIT_CFG', 'ResetParametersInit', 'fused_linear',
    'cpu_sub_batch_size', 'in_chunks', 'in_cpu_sub_batches',
    'pack_linear_weight', 'map_row_chunks', 'HeatConduction2d', 'Mlp',
    'HeatBlock', 'HeatBlocks', 'conv_nhwc', 'grid_size',
    'conv2d_channels_last', 'depthwise_conv2d', 'mlp_in_chunks'
]
