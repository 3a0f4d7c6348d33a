# Copyright (c) mmvheat contributors. All rights reserved.
"""Test-time augmentation of every detection and segmentation config, end
to end: a flipped view comes back where it belongs.

For each config, ``tools/test.py --tta`` sets it up (its ``tta_model``
around the model, its ``tta_pipeline`` as the test pipeline); the pipeline
runs unchanged on a small generated image of one L-shaped bright object,
and the TTA model merges the views of a stand-in for the detector or
segmentor. The stand-in sees only pixels, through the config's own data
preprocessor: it finds the bright object wherever a view shows it, mirrored
in the flipped views. Only the metadata the pipeline packs (``flip``,
``flip_direction``) tells the merge to flip those back, so the merged
boxes, masks or segmentation map are where the object is in the image only
if the pipeline and the TTA model do their part.
"""
import copy
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import DefaultScope

from mmvheat.apis import runner_utils
from .test_configs import _one_thread  # noqa: F401  (autouse fixture)
from .test_configs import CONFIG_DIR, TTA_CONFIGS, _registry

mmdet_models = pytest.importorskip('mmdet.models')
mmseg_models = pytest.importorskip('mmseg.models')

# The image: 48 x 64, black, with a white L whose mirror image (columns
# 36 to 56) does not overlap it.
HEIGHT, WIDTH = 48, 64
L_SHAPE = [(8, 36, 8, 16), (28, 36, 8, 28)]  # (top, bottom, left, right)
L_POLYGON = [8., 8., 16., 8., 16., 28., 28., 28., 28., 36., 8., 36.]
L_BOX = [8., 8., 28., 36.]  # x1, y1, x2, y2


def _object_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for top, bottom, left, right in L_SHAPE:
        mask[top:bottom, left:right] = True
    return mask


def _bright(inputs):
    """Where a normalised batch ``(N, 3, H, W)`` shows the white object.

    The configs normalise with ImageNet's mean and std: white becomes
    about +2.2 in each channel, black about -2.0.
    """
    return inputs.mean(1) > 0


class BrightObjectDetector(mmdet_models.BaseDetector):
    """Finds the bright object: one box with its mask, label 0.

    Gives them in original image coordinates, as mmdet's detectors do
    (``rescale=True``): each original pixel reads the view at its centre,
    where the resized view has the original's value (the scales here are
    upscales of at least 1.75, so a neighbour contributes at most
    ``0.5 / 1.75`` of it, and the threshold is half way). Its score is
    higher for an object in the right half of the view, as the mirrored
    views show it: the box and mask kept after NMS then come from a view
    whose prediction had to be flipped back. ``seen`` records the left edge
    of each view's box, to tell the mirrored views apart.
    """

    def __init__(self, data_preprocessor):
        super().__init__(data_preprocessor=data_preprocessor)
        self.seen = []

    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        from mmengine.structures import InstanceData
        for bright, sample in zip(_bright(batch_inputs), batch_data_samples):
            height, width = sample.img_shape
            mask = F.interpolate(
                bright[None, None, :height, :width].float(),
                size=sample.ori_shape,
                mode='nearest-exact')[0] > 0.5
            ys, xs = torch.nonzero(mask[0], as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            self.seen.append(int(box[0]))
            on_the_right = box[0] + box[2] > sample.ori_shape[1]  # centre
            sample.pred_instances = InstanceData(
                bboxes=box[None].float(),
                scores=torch.tensor([0.9 if on_the_right else 0.8]),
                labels=torch.tensor([0]),
                masks=mask)
        return batch_data_samples

    def loss(self, batch_inputs, batch_data_samples):
        raise NotImplementedError

    def _forward(self, batch_inputs, batch_data_samples=None):
        raise NotImplementedError

    def extract_feat(self, batch_inputs):
        raise NotImplementedError


# Probabilities of the segmentor's two classes (background, object): sure
# of the object where it sees it, hesitant about the background. If a
# mirrored view were merged as it is, the views would then outvote each
# other towards the object at both places, never tie.
SURE_OBJECT = (0.1, 0.9)
HESITANT_BACKGROUND = (0.6, 0.4)


class BrightObjectSegmentor(mmseg_models.segmentors.BaseSegmentor):
    """Labels the bright pixels 1, the others 0, at the view's resolution;
    mmseg's own ``postprocess_result`` flips the logits back (when the
    view says it was flipped) and resizes them to the original image.
    ``seen`` records the number of object pixels of each view's right half,
    to tell the mirrored views apart."""

    out_channels = 2
    align_corners = False

    def __init__(self, data_preprocessor):
        super().__init__(data_preprocessor=data_preprocessor)
        self.seen = []

    def predict(self, inputs, data_samples):
        bright = _bright(inputs)[:, None]
        self.seen.append(int(bright[..., bright.shape[-1] // 2:].sum()))
        logits = torch.where(bright, _logits(SURE_OBJECT),
                             _logits(HESITANT_BACKGROUND))
        return self.postprocess_result(logits, data_samples)

    def loss(self, inputs, data_samples):
        raise NotImplementedError

    def _forward(self, inputs, data_samples=None):
        raise NotImplementedError

    def extract_feat(self, inputs):
        raise NotImplementedError

    def encode_decode(self, inputs, batch_data_samples):
        raise NotImplementedError


def _logits(probabilities):
    return torch.tensor([math.log(p) for p in probabilities]).view(1, 2, 1, 1)


def _library(name):
    return 'mmseg' if '_upernet_' in name else 'mmdet'


def _tta_setup(name, monkeypatch):
    """The config as ``tools/test.py CONFIG CKPT --tta`` leaves it."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    args = runner_utils.parse_test_args(
        [f'{CONFIG_DIR}/{name}', 'unused.pth', '--tta'])
    cfg = runner_utils.load_config(args)
    return runner_utils.setup_test_cfg(cfg, args, _library(name))


def _merge(cfg, library, stand_in_type, sample):
    """Run the test pipeline on ``sample`` and merge the stand-in's views
    with the config's TTA model; returns (merged, views, stand-in)."""
    models = _registry(library, 'MODELS')
    with DefaultScope.overwrite_default_scope(library):
        stand_in = stand_in_type(
            copy.deepcopy(cfg.model.module.data_preprocessor))
        tta_model = models.build(dict(cfg.model, module=stand_in)).eval()
        data = Compose(cfg.test_dataloader.dataset.pipeline)(sample)
        with torch.no_grad():
            (merged, ) = tta_model.test_step(pseudo_collate([data]))
    return merged, data['data_samples'], stand_in


def _write_image(tmp_path):
    image = np.where(_object_mask()[..., None], 255, 0).astype(np.uint8)
    path = str(tmp_path / 'image.png')
    cv2.imwrite(path, np.repeat(image, 3, axis=2))
    return path


def test_tta_configs_found():
    """Both libraries and both backbones among the configs tested here."""
    assert sum(_library(name) == 'mmdet' for name in TTA_CONFIGS) >= 2
    assert sum(_library(name) == 'mmseg' for name in TTA_CONFIGS) >= 2
    assert any(name.startswith('mpvit/') for name in TTA_CONFIGS)
    assert any(name.startswith('vheat/') for name in TTA_CONFIGS)


@pytest.mark.parametrize('name',
                         [n for n in TTA_CONFIGS if _library(n) == 'mmdet'])
def test_detection_tta_puts_the_object_back(name, tmp_path, monkeypatch):
    """Boxes and masks of every view, flipped ones included, merge into
    the object's own box and mask: exactly, since the stand-in reads each
    original pixel and the flip back mirrors whole pixels."""
    cfg = _tta_setup(name, monkeypatch)
    sample = dict(
        img_path=_write_image(tmp_path),
        img_id=0,
        instances=[
            dict(bbox=L_BOX, bbox_label=0, mask=[L_POLYGON], ignore_flag=0)
        ])
    merged, views, stand_in = _merge(cfg, 'mmdet', BrightObjectDetector,
                                     sample)

    # Half the views showed the object mirrored (its box then starts at
    # column 64 - 28): the pipeline did flip.
    mirrored = WIDTH - int(L_BOX[2])
    assert sorted(stand_in.seen) == sorted([int(L_BOX[0]), mirrored] *
                                           (len(views) // 2))
    pred = merged.pred_instances
    assert len(pred) == 1, pred.bboxes  # every view agrees after NMS
    torch.testing.assert_close(
        pred.bboxes, torch.tensor([L_BOX]), rtol=0, atol=0)
    assert pred.scores.tolist() == [pytest.approx(0.9)]  # a mirrored view's
    assert pred.masks.shape == (1, HEIGHT, WIDTH)
    wrong = pred.masks[0] != torch.from_numpy(_object_mask())
    assert not wrong.any(), f'{int(wrong.sum())} pixels wrong'


@pytest.mark.parametrize('name',
                         [n for n in TTA_CONFIGS if _library(n) == 'mmseg'])
def test_segmentation_tta_puts_the_object_back(name, tmp_path, monkeypatch):
    """The merged map labels the object where it is, and nothing at its
    mirror image.

    Resizing a view (by 0.5 to 1.75) and its logits back blurs the
    object's edges: pixels next to an edge (within one pixel, inside or
    outside) may go either way; every other pixel must be right. (The
    demo configs' scale 0.875 leaves a few dozen edge pixels wrong; the
    ADE20K scales leave none.)
    """
    cfg = _tta_setup(name, monkeypatch)
    truth = _object_mask()
    seg_map = str(tmp_path / 'labels.png')
    cv2.imwrite(seg_map, truth.astype(np.uint8))
    sample = dict(
        img_path=_write_image(tmp_path),
        seg_map_path=seg_map,
        reduce_zero_label=False,
        seg_fields=[])
    merged, views, stand_in = _merge(cfg, 'mmseg', BrightObjectSegmentor,
                                     sample)

    # The object lies in the left half: the views with object pixels on
    # the right are the mirrored ones, half of them.
    assert len(views) > 2
    assert sum(count > 0 for count in stand_in.seen) == len(views) // 2
    pred = merged.pred_sem_seg.data[0].numpy().astype(bool)
    assert pred.shape == (HEIGHT, WIDTH)
    grown = cv2.dilate(truth.astype(np.uint8), np.ones((3, 3), np.uint8))
    shrunk = cv2.erode(truth.astype(np.uint8), np.ones((3, 3), np.uint8))
    edge = grown.astype(bool) & ~shrunk.astype(bool)
    wrong = (pred != truth) & ~edge
    assert not wrong.any(), np.argwhere(wrong)
