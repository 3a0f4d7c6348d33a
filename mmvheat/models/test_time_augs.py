# Copyright (c) mmvheat contributors. All rights reserved.
from typing import List

import torch
from mmengine.model import BaseTTAModel

from mmvheat.registry import MODELS

__all__ = ['MaskDetTTAModel']


@MODELS.register_module()
class MaskDetTTAModel(BaseTTAModel):
    """mmdet's ``DetTTAModel``, with instance masks.

    mmdet 3.3's ``DetTTAModel`` refuses predictions with masks (Mask R-CNN,
    ...). This model merges the views as it does -- boxes flipped back,
    then a class-wise NMS and the ``max_per_img`` best -- and, when the
    predictions have masks, flips them back and keeps those of the kept
    boxes. mmdet (and mmcv's NMS) are imported when predictions are merged.

    Args:
        tta_cfg (dict): ``nms`` (an mmcv NMS config) and ``max_per_img``.
        **kwargs: Passed to mmengine's ``BaseTTAModel`` (``module``, ...).
    """

    def __init__(self, tta_cfg: dict = None, **kwargs):
        super().__init__(**kwargs)
        self.tta_cfg = tta_cfg

    def merge_preds(self, data_samples_list: List[list]) -> list:
        """Merge the views of each image into one prediction."""
        return [self._merge_views(views) for views in data_samples_list]

    def _merge_views(self, views: list):
        from mmcv.ops import batched_nms
        from mmdet.structures.bbox import bbox_flip
        from mmengine.structures import InstanceData

        with_masks = views[0].pred_instances.get('masks', None) is not None
        boxes, masks = [], []
        for view in views:
            pred, meta = view.pred_instances, view.metainfo
            view_boxes, view_masks = pred.bboxes, pred.get('masks', None)
            if meta.get('flip', False):
                direction = meta['flip_direction']
                view_boxes = bbox_flip(
                    view_boxes,
                    img_shape=meta['ori_shape'],
                    direction=direction)
                if with_masks:
                    dims = dict(
                        horizontal=[-1], vertical=[-2],
                        diagonal=[-2, -1])[direction]
                    view_masks = view_masks.flip(dims)
            boxes.append(view_boxes)
            masks.append(view_masks)
        boxes = torch.cat(boxes)
        if boxes.numel() == 0:
            return views[0]
        scores = torch.cat([view.pred_instances.scores for view in views])
        labels = torch.cat([view.pred_instances.labels for view in views])
        dets, keep = batched_nms(boxes, scores, labels, self.tta_cfg['nms'])
        max_per_img = self.tta_cfg['max_per_img']
        keep, dets = keep[:max_per_img], dets[:max_per_img]
        merged = InstanceData()
        merged.bboxes = dets[:, :-1].clone()
        merged.scores = dets[:, -1].clone()
        merged.labels = labels[keep]
        if with_masks:
            merged.masks = torch.cat(masks)[keep]
        result = views[0]
        result.pred_instances = merged
        return result
