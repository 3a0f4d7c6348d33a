# Copyright (c) mmvheat contributors. All rights reserved.
from .loops import AmpTestLoop, predictions_to_float32
from .optim_wrappers import CPUAmpOptimWrapper

__all__ = ['AmpTestLoop', 'CPUAmpOptimWrapper', 'predictions_to_float32']
