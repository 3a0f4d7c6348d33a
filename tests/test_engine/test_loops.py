# Copyright (c) mmvheat contributors. All rights reserved.
import torch
from mmengine.model import BaseModel, BaseTTAModel
from mmengine.registry import LOOPS
from mmengine.structures import BaseDataElement, InstanceData

from mmvheat.engine import AmpTestLoop, predictions_to_float32
from mmvheat.engine.loops import _predicting_model


def test_registered_in_mmengine_root():
    assert LOOPS.get('AmpTestLoop') is AmpTestLoop


def test_predictions_to_float32():
    instances = InstanceData(
        bboxes=torch.tensor([[1.5, 2.5, 3001., 4001.]], dtype=torch.bfloat16),
        scores=torch.tensor([0.5], dtype=torch.float16),
        labels=torch.tensor([2]),
        masks=torch.ones(1, 3, 3, dtype=torch.bool))
    sample = BaseDataElement(
        metainfo=dict(img_id=7),
        pred_instances=instances,
        logits=torch.zeros(3, dtype=torch.float64))
    out = predictions_to_float32([sample, {'x': (torch.ones(2).half(), )}])
    assert out[0] is sample  # data elements are updated in place
    pred = sample.pred_instances
    assert pred.bboxes.dtype == torch.float32
    assert pred.bboxes.tolist() == [[1.5, 2.5, 3008., 4000.]]  # bf16 values
    assert pred.scores.dtype == torch.float32
    assert pred.labels.dtype == torch.int64
    assert pred.masks.dtype == torch.bool
    assert sample.logits.dtype == torch.float64  # only half dtypes change
    assert sample.img_id == 7
    assert out[1]['x'][0].dtype == torch.float32


class _Model(BaseModel):

    def forward(self, inputs=None, data_samples=None, mode='tensor'):
        return inputs


class _TTA(BaseTTAModel):

    def merge_preds(self, data_samples_list):
        return data_samples_list


def test_predicting_model_inside_wrappers():
    model = _Model()
    assert _predicting_model(model) is model
    assert _predicting_model(_TTA(module=model)) is model
