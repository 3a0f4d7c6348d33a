# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.MaskDetTTAModel``: mmdet's DetTTAModel, with instance masks."""
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import MODELS

pytest.importorskip('mmdet')

TTA_CFG = ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)


class Detector(torch.nn.Module):

    def test_step(self, data):
        raise NotImplementedError


def _tta(type_name, max_per_img=100):
    return MODELS.build(
        dict(
            type=type_name,
            module=Detector(),
            tta_cfg=ConfigDict(TTA_CFG, max_per_img=max_per_img)))


def _view(bboxes,
          scores,
          labels,
          flip,
          direction='horizontal',
          masks=None,
          shape=(8, 8)):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample = DetDataSample(
        metainfo=dict(ori_shape=shape, flip=flip, flip_direction=direction))
    sample.pred_instances = InstanceData(
        bboxes=bboxes, scores=scores, labels=labels)
    if masks is not None:
        sample.pred_instances.masks = masks
    return sample


def test_registered_in_the_mmvheat_scope():
    from mmvheat.models import MaskDetTTAModel
    assert type(_tta('mmvheat.MaskDetTTAModel')) is MaskDetTTAModel


def test_merges_flipped_masks():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 0:3] = True  # left side
    label = torch.tensor([1])
    # The flipped view predicted the mirrored box and mask.
    views = [
        _view(
            torch.tensor([[0., 2., 3., 4.]]),
            torch.tensor([0.8]),
            label,
            False,
            masks=masks),
        _view(
            torch.tensor([[5., 2., 8., 4.]]),
            torch.tensor([0.9]),
            label,
            True,
            masks=masks.flip(-1)),
    ]
    merged = _tta('mmvheat.MaskDetTTAModel').merge_preds([views])[0]
    merged = merged.pred_instances
    assert len(merged) == 1  # the two views agree: one box after NMS
    torch.testing.assert_close(merged.scores, torch.tensor([0.9]))
    torch.testing.assert_close(merged.bboxes, torch.tensor([[0., 2., 3., 4.]]))
    assert torch.equal(merged.masks, masks)  # flipped back


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
@pytest.mark.parametrize('max_per_img', [100, 5])
def test_without_masks_as_mmdet(direction, max_per_img):
    """Predictions without masks merge exactly as mmdet's DetTTAModel
    merges them (same boxes, scores and labels, in the same order)."""
    import mmdet.models  # noqa: F401  (registers DetTTAModel)
    from mmengine.registry import DefaultScope
    g = torch.Generator().manual_seed(0)
    views = []
    for flip in (False, True, False):
        xy = torch.rand(12, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 20],
                          1)
        views.append(
            _view(
                boxes,
                torch.rand(12, generator=g),
                torch.randint(0, 3, (12, ), generator=g),
                flip,
                direction,
                shape=(64, 64)))
    with DefaultScope.overwrite_default_scope('mmdet'):
        reference = _tta('DetTTAModel',
                         max_per_img).merge_preds([[v.clone() for v in views]
                                                   ])[0].pred_instances
    merged = _tta('mmvheat.MaskDetTTAModel',
                  max_per_img).merge_preds([views])[0].pred_instances
    assert 0 < len(merged) <= max_per_img
    assert 'masks' not in merged
    for key in ('bboxes', 'scores', 'labels'):
        torch.testing.assert_close(merged[key], reference[key], atol=0, rtol=0)


def test_no_boxes_returns_the_first_view():
    empty = torch.zeros(0, 4)
    views = [
        _view(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), flip)
        for flip in (False, True)
    ]
    merged = _tta('mmvheat.MaskDetTTAModel').merge_preds([views])[0]
    assert merged is views[0]
