# Copyright (c) mmvheat contributors. All rights reserved.
from .dispatch import (HCO_AUTOTUNE_CACHE_ENV, HCO_BACKEND_ENV, HCO_BACKENDS,
                       hco_backend, hco_dispatcher, triton_available)
from .heat_conduction import (dct2d, dct_basis, decay_map, frequency_energy,
                              heat_conduction, heat_transfer, idct2d,
                              spectral_filter, spectral_filter_reference)

__all__ = [
    'dct_basis', 'decay_map', 'frequency_energy', 'heat_transfer', 'dct2d',
    'idct2d', 'spectral_filter', 'spectral_filter_reference',
    'heat_conduction', 'hco_backend', 'hco_dispatcher', 'triton_available',
    'HCO_BACKEND_ENV', 'HCO_BACKENDS', 'HCO_AUTOTUNE_CACHE_ENV'
]
