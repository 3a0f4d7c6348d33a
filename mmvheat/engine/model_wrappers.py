# Copyright (c) mmvheat contributors. All rights reserved.
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

__all__ = ['CPU_DDP', 'CPUDistributedDataParallel']

#: The registered name of :class:`CPUDistributedDataParallel`.
CPU_DDP = 'MMVHeatCPUDistributedDataParallel'


@MODEL_WRAPPERS.register_module(name=CPU_DDP)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` for a module on the CPU.

    mmengine's runner passes ``device_ids=[LOCAL_RANK]``, which torch's
    ``DistributedDataParallel`` refuses for CPU modules; they are dropped.
    """

    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        super().__init__(module=module, **kwargs)
