# Copyright (c) mmvheat contributors. All rights reserved.
from .heat_conduction import (dct2d, dct_basis, decay_map, frequency_energy,
                              heat_conduction, heat_transfer, idct2d,
                              spectral_filter, spectral_filter_reference)

__all__ = [
    'dct_basis', 'decay_map', 'frequency_energy', 'heat_transfer', 'dct2d',
    'idct2d', 'spectral_filter', 'spectral_filter_reference', 'heat_conduction'
]
