# Copyright (c) mmvheat contributors. All rights reserved.
"""The summary picture: its layout, and that each panel shows what it says.

The predictions are written by the producers the demo reads: mmdet's
``DumpDetResults`` (the pickle of ``tools/test.py --out x.pkl``) and mmseg's
``IoUMetric(output_dir=...)`` (the PNGs of ``tools/test.py --out DIR``).
"""
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

from demo.data import (DEMO_DET_METAINFO, DEMO_SEG_METAINFO, make_ade20k_like,
                       make_coco_instances)
from demo.summary import (DPI, PANEL_INCHES, DetPanels, SegPanels,
                          colour_labels, draw_summary)

SIZE = (64, 64)
NUM_VAL = 3


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('summary')
    coco = make_coco_instances(
        str(root / 'coco'), num_train=0, num_val=NUM_VAL,
        image_size=SIZE)['root']
    ade = make_ade20k_like(
        str(root / 'ade'), num_train=0, num_val=NUM_VAL,
        image_size=SIZE)['root']
    return dict(root=root, coco=coco, ade=ade)


def _det_predictions(data, path):
    """Image 1: a square box at (10, 12)-(40, 30), score 0.9, with its mask,
    and a triangle box at (20, 40)-(50, 60), score 0.2 (below the
    threshold); the others: nothing."""
    from mmdet.evaluation import DumpDetResults
    ann_file = osp.join(data['coco'], 'annotations', 'instances_val2017.json')
    with open(ann_file) as f:
        images = sorted(json.load(f)['images'], key=lambda i: i['file_name'])
    dump = DumpDetResults(out_file_path=str(path))
    samples = []
    for k, img in enumerate(images):
        mask = torch.zeros(2 if k == 0 else 0, *SIZE, dtype=torch.bool)
        if k == 0:
            mask[0, 12:30, 10:40] = True
        samples.append(
            dict(
                img_id=img['id'],
                img_path=osp.join(data['coco'], 'val2017', img['file_name']),
                ori_shape=SIZE,
                pred_instances=dict(
                    bboxes=torch.tensor([[10., 12., 40., 30.],
                                         [20., 40., 50., 60.]])[:len(mask)],
                    scores=torch.tensor([0.9, 0.2])[:len(mask)],
                    labels=torch.tensor([1, 2])[:len(mask)],
                    masks=mask)))
    dump.process({}, samples)
    dump.evaluate(len(samples))
    return ann_file


def _seg_predictions(data, out_dir):
    """Every pixel a circle, except a square block; written by IoUMetric."""
    from mmseg.evaluation import IoUMetric
    metric = IoUMetric(output_dir=str(out_dir), format_only=True)
    metric.dataset_meta = DEMO_SEG_METAINFO
    predicted = np.ones(SIZE, np.int64)  # circle
    predicted[8:24, 30:60] = 2  # square
    names = sorted(
        p for p in os.listdir(osp.join(data['ade'], 'images', 'validation')))
    metric.process({}, [
        dict(
            pred_sem_seg=dict(data=torch.from_numpy(predicted)[None]),
            img_path=osp.join(data['ade'], 'images', 'validation', name),
            reduce_zero_label=True) for name in names
    ])
    return predicted


def _panel(picture, box, size=SIZE):
    """A panel's pixels, brought back to the image's size (each image
    pixel's centre)."""
    x0, y0, x1, y1 = box
    ys = (y0 + (np.arange(size[0]) + 0.5) * (y1 - y0) / size[0]).astype(int)
    xs = (x0 + (np.arange(size[1]) + 0.5) * (x1 - x0) / size[1]).astype(int)
    return picture[ys][:, xs].astype(int)


def _near(pixels, colour, tol=40):
    return np.abs(pixels - np.array(colour)).max(-1) <= tol


def test_summary_layout_and_panels(data, tmp_path):
    predictions = tmp_path / 'predictions.pkl'
    ann_file = _det_predictions(data, predictions)
    predicted_map = _seg_predictions(data, tmp_path / 'seg')
    out = str(tmp_path / 'summary.png')
    boxes = draw_summary(
        out,
        det=DetPanels(
            'Mask R-CNN',
            osp.join(data['coco'], 'val2017'),
            ann_file,
            str(predictions),
            DEMO_DET_METAINFO['classes'],
            DEMO_DET_METAINFO['palette'],
            score_thr=0.5),
        seg=SegPanels('UperNet', osp.join(data['ade'], 'images', 'validation'),
                      osp.join(data['ade'], 'annotations', 'validation'),
                      str(tmp_path / 'seg'), DEMO_SEG_METAINFO['classes'],
                      DEMO_SEG_METAINFO['palette']),
        num_images=2,
        title='demo')
    picture = cv2.cvtColor(cv2.imread(out), cv2.COLOR_BGR2RGB)
    assert [picture.shape[1], picture.shape[0]] == boxes['size']
    rows = [
        'det truth', 'det predicted', 'seg image', 'seg truth', 'seg predicted'
    ]
    assert [r for r in boxes if r != 'size'] == rows
    side = PANEL_INCHES * DPI
    for row in rows:
        assert len(boxes[row]) == 2  # columns: the images asked for
        for x0, y0, x1, y1 in boxes[row]:
            assert abs(x1 - x0 - side) <= 1 and abs(y1 - y0 - side) <= 1
    # rows top to bottom, columns left to right, inside the picture
    tops = [boxes[r][0][1] for r in rows]
    assert tops == sorted(tops) and boxes['seg predicted'][0][3] < \
        boxes['size'][1]
    assert boxes['det truth'][0][2] < boxes['det truth'][1][0]

    # segmentation: the label maps in their palette colours
    palette = DEMO_SEG_METAINFO['palette']
    labels = sorted(
        os.listdir(osp.join(data['ade'], 'annotations', 'validation')))
    for j in range(2):
        truth = cv2.imread(
            osp.join(data['ade'], 'annotations', 'validation', labels[j]),
            cv2.IMREAD_UNCHANGED).astype(int) - 1
        expected = colour_labels(truth, palette)
        shown = _panel(picture, boxes['seg truth'][j])
        assert (np.abs(shown - expected).max(-1) <= 12).mean() > 0.95
        shown = _panel(picture, boxes['seg predicted'][j])
        expected = colour_labels(predicted_map, palette)
        assert (np.abs(shown - expected).max(-1) <= 12).mean() > 0.95
        image = cv2.cvtColor(
            cv2.imread(
                osp.join(data['ade'], 'images', 'validation',
                         labels[j][:-4] + '.jpg')), cv2.COLOR_BGR2RGB)
        shown = _panel(picture, boxes['seg image'][j])
        assert np.abs(shown - image).mean() < 12

    # detection: the square's box and mask in its colour, not the triangle
    # below the score threshold; the second image has no prediction
    square, triangle = (DEMO_DET_METAINFO['palette'][k] for k in (1, 2))
    x0, y0, x1, y1 = boxes['det predicted'][0]
    scale = (x1 - x0) / SIZE[1]

    def edge(x_from, x_to, y):
        return picture[int(round(y0 + y * scale)),
                       int(x0 + x_from * scale):int(x0 + x_to * scale)]

    assert _near(edge(12, 38, 30), square).mean() > 0.8  # bottom edge
    assert _near(edge(22, 48, 60), triangle).mean() < 0.2
    inside = _panel(picture, boxes['det predicted'][0])[14:28, 12:38]
    image = cv2.cvtColor(
        cv2.imread(osp.join(data['coco'], 'val2017', '000001000001.jpg')),
        cv2.COLOR_BGR2RGB)[14:28, 12:38].astype(int)
    # the mask: the image blended with the class colour
    blended = 0.45 * image + 0.55 * np.array(square)
    assert np.abs(inside - blended).mean() < 15
    empty = _panel(picture, boxes['det predicted'][1])
    second = cv2.cvtColor(
        cv2.imread(osp.join(data['coco'], 'val2017', '000001000002.jpg')),
        cv2.COLOR_BGR2RGB)
    assert np.abs(empty - second).mean() < 12


def test_one_task_and_bad_arguments(data, tmp_path):
    predicted = _seg_predictions(data, tmp_path / 'seg')
    assert predicted.shape == SIZE
    seg = SegPanels('UperNet', osp.join(data['ade'], 'images', 'validation'),
                    osp.join(data['ade'], 'annotations', 'validation'),
                    str(tmp_path / 'seg'), DEMO_SEG_METAINFO['classes'],
                    DEMO_SEG_METAINFO['palette'])
    # more columns asked for than there are images: all of them
    boxes = draw_summary(str(tmp_path / 'seg.png'), seg=seg, num_images=9)
    assert sorted(boxes) == ['seg image', 'seg predicted', 'seg truth', 'size']
    assert len(boxes['seg truth']) == NUM_VAL
    with pytest.raises(ValueError, match='nothing to draw'):
        draw_summary(str(tmp_path / 'none.png'))
    missing = SegPanels('UperNet', seg.image_dir, seg.label_dir,
                        str(tmp_path / 'nowhere'), seg.classes, seg.palette)
    with pytest.raises(FileNotFoundError, match='predicted label map'):
        draw_summary(str(tmp_path / 'x.png'), seg=missing)
