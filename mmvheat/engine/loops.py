# Copyright (c) mmvheat contributors. All rights reserved.
from typing import Any

import torch
from mmengine.model import BaseModel, BaseTTAModel, is_model_wrapper
from mmengine.registry import LOOPS
from mmengine.runner import TestLoop
from mmengine.structures import BaseDataElement
from torch import nn

__all__ = ['AmpTestLoop', 'predictions_to_float32']

_HALF = (torch.float16, torch.bfloat16)


def predictions_to_float32(value: Any) -> Any:
    """Cast the float16/bfloat16 tensors in predictions to float32, in place
    for data elements (``DetDataSample``, ``InstanceData``, ...)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, BaseDataElement):
        for key, item in list(value.items()):
            setattr(value, key, predictions_to_float32(item))
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(predictions_to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: predictions_to_float32(v) for k, v in value.items()}
    return value


def _predicting_model(model: nn.Module) -> nn.Module:
    """The model whose forward makes the predictions, inside distributed
    and test-time-augmentation wrappers."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


@LOOPS.register_module()
class AmpTestLoop(TestLoop):
    """mmengine's ``TestLoop`` for ``fp16=True`` with float32 predictions.

    The test step runs under autocast as in ``TestLoop``; the predictions
    it returns are then cast to float32 before the metrics see them. COCO
    evaluation converts boxes to numpy, which has no bfloat16 (the autocast
    dtype on the CPU), and box coordinates beyond 2048 px are not integers
    in float16.
    """

    def run(self):
        model = _predicting_model(self.runner.model)
        if not isinstance(model, BaseModel):
            return super().run()
        handle = model.register_forward_hook(
            lambda module, args, outputs: predictions_to_float32(outputs))
        try:
            return super().run()
        finally:
            handle.remove()
