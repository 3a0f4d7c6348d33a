# Copyright (c) mmvheat contributors. All rights reserved.
from .file_backend import ATOMIC_BACKEND, AtomicLocalBackend
from .hooks import SwitchToDeployHook
from .loops import AmpTestLoop, predictions_to_float32
from .mmcv_autocast import mmcv_ops_in_float32_under_cpu_autocast
from .model_wrappers import CPU_DDP, CPUDistributedDataParallel
from .optim_wrappers import CPUAmpOptimWrapper

__all__ = [
    'ATOMIC_BACKEND', 'AtomicLocalBackend', 'AmpTestLoop',
    'CPUAmpOptimWrapper', 'CPUDistributedDataParallel', 'CPU_DDP',
    'SwitchToDeployHook', 'mmcv_ops_in_float32_under_cpu_autocast',
    'predictions_to_float32'
]
