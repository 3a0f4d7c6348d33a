# Copyright (c) mmvheat contributors. All rights reserved.
"""Reading the per-class metrics back from the evaluators' logs.

The tables are printed by the real evaluators (mmseg's IoUMetric, mmdet's
CocoMetric with ``classwise=True``) on known predictions; what the demo
reads from the log is compared with the same metrics computed here without
them (numpy IoU, pycocotools' COCOeval one category at a time).
"""
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger

from demo.data import (DEMO_DET_CLASSES, DEMO_DET_METAINFO, DEMO_SEG_CLASSES,
                       DEMO_SEG_METAINFO, make_coco_instances)
from demo.results import (classes_at_zero, format_markdown_table, format_table,
                          read_final_metrics, read_tables, read_test_log)


def _final_line(metrics):
    """The line mmengine's LoggerHook ends a test with (LogProcessor:
    ``key: value`` with 4 decimals, two spaces apart, times last)."""
    items = [f'{k}: {v:.4f}' for k, v in metrics.items()]
    return ('12/01 18:00:50 - mmengine - INFO - Iter(test) [4/4]    ' +
            '  '.join(items + ['data_time: 0.0075', 'time: 0.1344']))


@pytest.fixture
def log_file(tmp_path):
    """An MMLogger writing to a file; the evaluators log to it."""
    path = tmp_path / 'test.log'
    # Named by the path: an id() can come back once its object is gone, and
    # an existing instance would keep its own file.
    MMLogger.get_instance(f'demo_results_{path}', log_file=str(path))
    return path


def test_seg_table_matches_numpy_iou(log_file):
    from mmseg.evaluation import IoUMetric
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(4, 32, 32))
    truth[0, :4] = 255  # ignored pixels
    predicted = truth.copy()
    flip = rng.random(truth.shape) < 0.3
    predicted[flip] = rng.integers(0, 4, size=int(flip.sum()))
    predicted[predicted == 255] = 0
    predicted[predicted == 3] = 2  # triangle never predicted: IoU 0
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = DEMO_SEG_METAINFO
    metric.process({}, [
        dict(
            pred_sem_seg=dict(data=torch.from_numpy(p)[None]),
            gt_sem_seg=dict(data=torch.from_numpy(t)[None]))
        for p, t in zip(predicted, truth)
    ])
    metrics = metric.evaluate(len(truth))
    text = log_file.read_text() + _final_line(metrics) + '\n'

    rows = read_test_log(text, 'mmseg')
    valid = truth != 255
    expected = []
    for k, name in enumerate(DEMO_SEG_CLASSES):
        inter = ((predicted == k) & (truth == k) & valid).sum()
        union = (((predicted == k) | (truth == k)) & valid).sum()
        expected.append(100 * inter / union)
        # the table holds 2 decimals
        assert rows[f'mIoU | {name}'] == pytest.approx(
            expected[-1], abs=0.006), name
    assert rows['mIoU | triangle'] == 0
    assert rows['mIoU'] == pytest.approx(np.mean(expected), abs=0.006)
    accuracy = 100 * ((predicted == truth) & valid).sum() / valid.sum()
    assert rows['aAcc'] == pytest.approx(accuracy, abs=0.006)
    assert list(rows) == ['mIoU'] + [f'mIoU | {c}'
                                     for c in DEMO_SEG_CLASSES] + ['aAcc']
    assert classes_at_zero(rows) == ['mIoU | triangle']


def _coco_predictions(coco):
    """Circles found exactly, squares found with half of them shifted off
    their place, triangles never found; masks from the polygons."""
    from pycocotools import mask as mask_utils
    by_image = {img['id']: [] for img in coco['images']}
    for ann in coco['annotations']:
        by_image[ann['image_id']].append(ann)
    predictions = []
    square_seen = 0
    for img in coco['images']:
        h, w = img['height'], img['width']
        boxes, scores, labels, masks = [], [], [], []
        for ann in by_image[img['id']]:
            label = ann['category_id'] - 1
            if DEMO_DET_CLASSES[label] == 'triangle':
                continue
            x, y, bw, bh = ann['bbox']
            mask = mask_utils.decode(
                mask_utils.merge(
                    mask_utils.frPyObjects(ann['segmentation'], h, w)))
            if DEMO_DET_CLASSES[label] == 'square':
                square_seen += 1
                if square_seen % 2:
                    x = x + bw  # no overlap with its square any more
                    mask = np.roll(mask, int(bw) + 1, axis=1)
            boxes.append([x, y, x + bw, y + bh])
            scores.append(0.9)
            labels.append(label)
            masks.append(mask.astype(bool))
        predictions.append(
            dict(
                img_id=img['id'],
                ori_shape=(h, w),
                pred_instances=dict(
                    bboxes=torch.tensor(boxes).reshape(-1, 4).float(),
                    scores=torch.tensor(scores),
                    labels=torch.tensor(labels, dtype=torch.long),
                    masks=torch.from_numpy(np.array(masks).reshape(-1, h,
                                                                   w)))))
    return predictions


def _cocoeval_per_class(ann_file, predictions, iou_type):
    """AP per class with pycocotools alone, one category at a time."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    truth = COCO(ann_file)
    results = []
    for pred in predictions:
        inst = pred['pred_instances']
        for box, score, label, mask in zip(inst['bboxes'].tolist(),
                                           inst['scores'].tolist(),
                                           inst['labels'].tolist(),
                                           inst['masks'].numpy()):
            result = dict(
                image_id=pred['img_id'], category_id=label + 1, score=score)
            if iou_type == 'bbox':
                result['bbox'] = [
                    box[0], box[1], box[2] - box[0], box[3] - box[1]
                ]
            else:
                rle = mask_utils.encode(np.asfortranarray(mask, np.uint8))
                rle['counts'] = rle['counts'].decode()
                result['segmentation'] = rle
            results.append(result)
    found = truth.loadRes(results)
    per_class = {}
    for cat in truth.getCatIds():
        coco_eval = COCOeval(truth, found, iou_type)
        coco_eval.params.catIds = [cat]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        per_class[truth.loadCats(cat)[0]['name']] = 100 * max(
            coco_eval.stats[0], 0)
    return per_class


def test_det_tables_match_cocoeval(log_file, tmp_path):
    from mmdet.evaluation import CocoMetric
    root = make_coco_instances(
        str(tmp_path / 'coco'), num_train=0, num_val=6,
        image_size=(64, 64))['root']
    ann_file = osp.join(root, 'annotations', 'instances_val2017.json')
    with open(ann_file) as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    present = {names[a['category_id']] for a in coco['annotations']}
    assert present == set(DEMO_DET_CLASSES)  # every class has ground truth
    predictions = _coco_predictions(coco)
    metric = CocoMetric(
        ann_file=ann_file, metric=['bbox', 'segm'], classwise=True)
    metric.dataset_meta = DEMO_DET_METAINFO
    metric.process({}, predictions)
    metrics = metric.evaluate(len(predictions))
    text = log_file.read_text() + _final_line(metrics) + '\n'

    rows = read_test_log(text, 'mmdet')
    for kind in ('bbox', 'segm'):
        expected = _cocoeval_per_class(ann_file, predictions, kind)
        for name in DEMO_DET_CLASSES:
            # mmdet's table rounds AP to 3 decimals: 0.05 in percent
            assert rows[f'{kind} AP | {name}'] == pytest.approx(
                expected[name], abs=0.051), (kind, name)
        assert rows[f'{kind} AP | circle'] == pytest.approx(100, abs=0.051)
        assert 10 < rows[f'{kind} AP | square'] < 90
        assert rows[f'{kind} AP | triangle'] == 0
        assert rows[f'{kind} AP'] == pytest.approx(
            np.mean(list(expected.values())), abs=0.051)
    # mmdet returns only the last table's per-class AP: the bbox ones come
    # from the first table
    assert [t.context for t in read_tables(text)] == ['bbox', 'segm']
    assert classes_at_zero(rows) == [
        'bbox AP | triangle', 'segm AP | triangle'
    ]


def test_missing_tables_and_metrics_are_errors():
    final = _final_line({'mIoU': 50.0, 'aAcc': 90.0})
    with pytest.raises(ValueError, match='per-class table'):
        read_test_log(final, 'mmseg', 'seg.log')
    with pytest.raises(ValueError, match='no final'):
        read_test_log('per class results:\n', 'mmseg')
    with pytest.raises(ValueError, match='coco/bbox_mAP'):
        read_test_log(final, 'mmdet')
    with pytest.raises(ValueError, match='library'):
        read_test_log(final, 'mmpretrain')
    # the last final line counts (a log of several tests)
    two = _final_line({'mIoU': 1.0}) + '\n' + final
    assert read_final_metrics(two) == {'mIoU': 50.0, 'aAcc': 90.0}


def test_nan_cells():
    text = '\n'.join([
        'Evaluating bbox...', '+----------+-----+', '| category | mAP |',
        '+----------+-----+', '| circle   | nan |', '| square   | 0.5 |',
        '+----------+-----+'
    ])
    table, = read_tables(text)
    values = table.column('mAP')
    assert math.isnan(values['circle']) and values['square'] == 0.5
    # a class without ground truth: not 'at zero', and '-' in the table
    rows = {'bbox AP': 1.0, 'bbox AP | circle': float('nan')}
    assert classes_at_zero(rows) == []
    lines = format_table({'det': {'trained': rows}}).splitlines()
    assert lines[-1].split() == ['circle', '-']


def test_format_table():
    results = {
        'seg': {
            'untrained': {
                'mIoU': 5.25,
                'mIoU | circle': 0.0,
                'aAcc': 20.0
            },
            'trained': {
                'mIoU': 80.0,
                'mIoU | circle': 71.04,
                'aAcc': 97.5
            },
        }
    }
    lines = format_table(results, {'seg': 'UperNet'}).splitlines()
    assert lines[0].split() == ['untrained', 'trained']
    assert lines[1] == 'UperNet'
    assert lines[2].split() == ['mIoU', '5.2', '80.0']
    assert lines[3].startswith('    circle') and lines[3].split()[1:] == [
        '0.0', '71.0'
    ]
    assert lines[4].split() == ['aAcc', '20.0', '97.5']
    # the numbers line up under their run
    assert len({len(line) for line in lines if line != 'UperNet'}) == 1
    markdown = format_markdown_table(results, {'seg': 'UperNet'})
    assert markdown.splitlines()[3] == '| mIoU | 5.2 | 80.0 |'
    assert '*circle*' in markdown
