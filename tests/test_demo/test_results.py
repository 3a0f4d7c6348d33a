# Copyright (c) mmvheat contributors. All rights reserved.
"""Reading a test's metrics back from the files ``tools/test.py`` writes.

The files are written by the producers the test tool uses, on known
predictions: mmseg's ``IoUMetric(output_dir=...)`` (the PNGs of ``--out``)
and mmdet's ``DumpDetResults`` (the pickle of ``--out``), beside the metrics
the evaluators returned, as mmengine's ``LoggerHook`` dumps them. What the
demo reads is compared with the same metrics computed here without the
evaluators (numpy IoU, pycocotools' COCOeval one category at a time).
"""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import cv2
import mmengine
import numpy as np
import pytest
import torch

from demo.data import (DEMO_DET_CLASSES, DEMO_DET_METAINFO, DEMO_SEG_CLASSES,
                       DEMO_SEG_METAINFO, make_ade20k_like,
                       make_coco_instances)
from demo.results import (classes_at_zero, format_markdown_table, format_table,
                          read_test_metrics, read_test_results)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TIMESTAMP = '20240101_120000'


def _dump_metrics(work_dir, metrics, timestamp=TIMESTAMP):
    """The metrics as mmengine's ``LoggerHook`` writes them at the end of a
    test: ``<work_dir>/<timestamp>/<timestamp>.json``, each value through
    the message hub (``.item()``: float64 of mmseg's float32), the times
    last."""
    os.makedirs(osp.join(work_dir, timestamp), exist_ok=True)
    tag = {key: float(value) for key, value in metrics.items()}
    tag.update(data_time=0.0075, time=0.1344)
    mmengine.dump(tag, osp.join(work_dir, timestamp, f'{timestamp}.json'))


@pytest.fixture(scope='module')
def seg_test(tmp_path_factory):
    """An mmseg test of 6 ADE20K-layout images: the label maps with 30% of
    the pixels changed at random and triangles predicted as squares,
    scored and written by ``IoUMetric`` as ``tools/test.py --out`` runs
    it; returns the dataset, the work dir, the predictions and the labels
    (class indices, 255 unlabelled)."""
    from mmseg.evaluation import IoUMetric
    tmp = tmp_path_factory.mktemp('seg_test')
    root = make_ade20k_like(
        str(tmp / 'ade'), num_train=0, num_val=6, image_size=(64, 64))['root']
    label_dir = osp.join(root, 'annotations', 'validation')
    names = sorted(os.listdir(label_dir))
    # reduce_zero_label: 0 is unlabelled, k the class k - 1
    truth = np.stack([
        cv2.imread(osp.join(label_dir, n), cv2.IMREAD_UNCHANGED) for n in names
    ]).astype(np.int64) - 1
    truth[truth < 0] = 255
    truth[0, :4] = 255  # unlabelled pixels, as ADE20K has
    cv2.imwrite(
        osp.join(label_dir, names[0]),
        np.where(truth[0] == 255, 0, truth[0] + 1).astype(np.uint8))
    rng = np.random.default_rng(0)
    predicted = truth.copy()
    flip = rng.random(truth.shape) < 0.3
    predicted[flip] = rng.integers(0, 4, size=int(flip.sum()))
    predicted[predicted == 255] = 0
    predicted[predicted == 3] = 2  # triangle never predicted: IoU 0
    out = str(tmp / 'work' / 'predictions')
    metric = IoUMetric(iou_metrics=['mIoU'], output_dir=out)
    metric.dataset_meta = DEMO_SEG_METAINFO
    metric.process({}, [
        dict(
            pred_sem_seg=dict(data=torch.from_numpy(p)[None]),
            gt_sem_seg=dict(data=torch.from_numpy(t)[None]),
            img_path=osp.join(root, 'images', 'validation',
                              n.replace('.png', '.jpg')),
            reduce_zero_label=True) for p, t, n in zip(predicted, truth, names)
    ])
    work = str(tmp / 'work')
    _dump_metrics(work, metric.evaluate(len(names)))
    return dict(
        root=root, work=work, out=out, truth=truth, predicted=predicted)


def test_seg_rows_match_numpy_iou(seg_test):
    rows = read_test_results('mmseg', seg_test['root'], seg_test['work'],
                             seg_test['out'])
    truth, predicted = seg_test['truth'], seg_test['predicted']
    valid = truth != 255
    expected = []
    for k, name in enumerate(DEMO_SEG_CLASSES):
        inter = ((predicted == k) & (truth == k) & valid).sum()
        union = (((predicted == k) | (truth == k)) & valid).sum()
        expected.append(100 * inter / union)
        # IoUMetric rounds to 2 decimals
        assert rows[f'mIoU | {name}'] == pytest.approx(
            expected[-1], abs=0.006), name
    assert rows['mIoU | triangle'] == 0
    assert rows['mIoU'] == pytest.approx(np.mean(expected), abs=0.006)
    accuracy = 100 * ((predicted == truth) & valid).sum() / valid.sum()
    assert rows['aAcc'] == pytest.approx(accuracy, abs=0.006)
    assert list(rows) == ['mIoU'] + [f'mIoU | {c}'
                                     for c in DEMO_SEG_CLASSES] + ['aAcc']
    # the numbers as the evaluator prints them: 2 decimals, not the float64
    # of its float32 (79.69999694824219)
    reported = read_test_metrics(seg_test['work'])
    assert rows['mIoU'] == round(reported['mIoU'], 2) != reported['mIoU']
    assert classes_at_zero(rows) == ['mIoU | triangle']


def _coco_predictions(coco, image_dir):
    """Circles found exactly; squares found, half of them with their box
    moved off the square (the mask stays); triangles never found."""
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
            boxes.append([x, y, x + bw, y + bh])
            scores.append(0.9)
            labels.append(label)
            masks.append(mask.astype(bool))
        predictions.append(
            dict(
                img_id=img['id'],
                img_path=osp.join(image_dir, img['file_name']),
                ori_shape=(h, w),
                pred_instances=dict(
                    bboxes=torch.tensor(boxes).reshape(-1, 4).float(),
                    scores=torch.tensor(scores),
                    labels=torch.tensor(labels, dtype=torch.long),
                    masks=torch.from_numpy(np.array(masks).reshape(-1, h,
                                                                   w)))))
    return predictions


def coco_results(predictions, iou_type):
    """Predictions in ``DumpDetResults``' layout as COCO results: boxes as
    (x, y, w, h), or masks (tensors) as RLE."""
    from pycocotools import mask as mask_utils
    results = []
    for pred in predictions:
        inst = pred['pred_instances']
        for i, (box, score, label) in enumerate(
                zip(inst['bboxes'].tolist(), inst['scores'].tolist(),
                    inst['labels'].tolist())):
            result = dict(
                image_id=pred['img_id'], category_id=label + 1, score=score)
            if iou_type == 'bbox':
                result['bbox'] = [
                    box[0], box[1], box[2] - box[0], box[3] - box[1]
                ]
            else:
                mask = inst['masks'][i].numpy()
                rle = mask_utils.encode(np.asfortranarray(mask, np.uint8))
                rle['counts'] = rle['counts'].decode()
                result['segmentation'] = rle
            results.append(result)
    return results


def cocoeval_per_class(ann_file, results, iou_type):
    """AP per class in percent with pycocotools alone, one category at a
    time; nan for a class without ground truth, 0 when nothing at all was
    found."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    truth = COCO(ann_file)
    # once: loadRes adds to the results (a mask's box) as it reads them
    found = truth.loadRes(results) if results else None
    per_class = {}
    for cat in truth.getCatIds():
        name = truth.loadCats(cat)[0]['name']
        if not truth.getAnnIds(catIds=[cat]):
            per_class[name] = math.nan
        elif found is None:
            per_class[name] = 0.0
        else:
            coco_eval = COCOeval(truth, found, iou_type)
            coco_eval.params.catIds = [cat]
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            per_class[name] = 100 * max(coco_eval.stats[0], 0)
    return per_class


def _det_test(tmp_path, without=None):
    """An mmdet test of 6 COCO images (``without``: that class's
    annotations removed): scored by ``CocoMetric`` (classwise, as the demo
    config) and dumped by ``DumpDetResults``, as ``tools/test.py --out``
    runs them."""
    from mmdet.evaluation import CocoMetric, DumpDetResults
    root = make_coco_instances(
        str(tmp_path / 'coco'), num_train=0, num_val=6,
        image_size=(64, 64))['root']
    ann_file = osp.join(root, 'annotations', 'instances_val2017.json')
    with open(ann_file) as f:
        coco = json.load(f)
    if without is not None:
        label = DEMO_DET_CLASSES.index(without) + 1
        coco['annotations'] = [
            a for a in coco['annotations'] if a['category_id'] != label
        ]
        with open(ann_file, 'w') as f:
            json.dump(coco, f)
    predictions = _coco_predictions(coco, osp.join(root, 'val2017'))
    work = str(tmp_path / 'work')
    out = osp.join(work, 'predictions.pkl')
    metric = CocoMetric(
        ann_file=ann_file, metric=['bbox', 'segm'], classwise=True)
    metric.dataset_meta = DEMO_DET_METAINFO
    dump = DumpDetResults(out_file_path=out)
    for each in (metric, dump):
        each.process({}, predictions)
    _dump_metrics(work, metric.evaluate(len(predictions)))
    dump.evaluate(len(predictions))
    return dict(
        root=root,
        work=work,
        out=out,
        ann_file=ann_file,
        predictions=predictions)


def test_det_rows_match_cocoeval(tmp_path):
    test = _det_test(tmp_path)
    with open(test['ann_file']) as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    present = {names[a['category_id']] for a in coco['annotations']}
    assert present == set(DEMO_DET_CLASSES)  # every class has ground truth
    rows = read_test_results('mmdet', test['root'], test['work'], test['out'])
    for kind in ('bbox', 'segm'):
        expected = cocoeval_per_class(test['ann_file'],
                                      coco_results(test['predictions'], kind),
                                      kind)
        for name in DEMO_DET_CLASSES:
            # CocoMetric rounds AP to 3 decimals: 0.05 in percent
            assert rows[f'{kind} AP | {name}'] == pytest.approx(
                expected[name], abs=0.051), (kind, name)
        assert rows[f'{kind} AP | circle'] == pytest.approx(100, abs=0.051)
        assert rows[f'{kind} AP | triangle'] == 0
        assert rows[f'{kind} AP'] == pytest.approx(
            np.mean(list(expected.values())), abs=0.051)
    # the boxes of half the squares are off, their masks are not: the
    # metrics mmdet returns keep the masks' per-class AP only
    assert 10 < rows['bbox AP | square'] < 90
    assert rows['segm AP | square'] == pytest.approx(100, abs=0.051)
    assert list(rows) == [
        f'{kind} AP{f" | {name}" if name else ""}' for kind in ('bbox', 'segm')
        for name in ('', *DEMO_DET_CLASSES)
    ]
    assert classes_at_zero(rows) == [
        'bbox AP | triangle', 'segm AP | triangle'
    ]


def test_a_class_without_ground_truth_is_nan(tmp_path):
    test = _det_test(tmp_path, without='triangle')
    rows = read_test_results('mmdet', test['root'], test['work'], test['out'])
    reported = read_test_metrics(test['work'])
    assert math.isnan(reported['coco/triangle_precision'])
    for kind in ('bbox', 'segm'):
        assert math.isnan(rows[f'{kind} AP | triangle'])
        assert rows[f'{kind} AP | circle'] == pytest.approx(100, abs=0.051)
    assert classes_at_zero(rows) == []


def test_reading_prints_nothing(tmp_path, seg_test):
    """The evaluators' prints (pycocotools) and INFO logs (the tables) stay
    off the demo's console: a fresh process, as the demo's, says nothing."""
    test = _det_test(tmp_path)
    code = ('import sys\n'
            'from demo.results import read_test_results\n'
            'for args in (sys.argv[1:5], sys.argv[5:9]):\n'
            '    assert read_test_results(*args)\n')
    result = subprocess.run([
        sys.executable, '-c', code, 'mmdet', test['root'], test['work'],
        test['out'], 'mmseg', seg_test['root'], seg_test['work'],
        seg_test['out']
    ],
                            cwd=ROOT,
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ''
    assert 'Evaluating' not in result.stderr  # mmdet's INFO lines


def test_predictions_the_test_did_not_score_are_refused(tmp_path, seg_test):
    """An overall metric the predictions do not give, or one the test did
    not report, is an error that names the files."""
    test = _det_test(tmp_path)
    reported = read_test_metrics(test['work'])
    for key, value in [('coco/bbox_mAP', reported['coco/bbox_mAP'] + 0.001),
                       ('coco/triangle_precision', 0.5)]:
        _dump_metrics(test['work'], dict(reported, **{key: value}))
        with pytest.raises(ValueError, match='not the predictions'):
            read_test_results('mmdet', test['root'], test['work'], test['out'])
    _dump_metrics(test['work'], {
        k: v
        for k, v in reported.items() if k != 'coco/segm_mAP'
    })
    with pytest.raises(ValueError, match='reported no coco/segm_mAP'):
        read_test_results('mmdet', test['root'], test['work'], test['out'])

    seg = read_test_metrics(seg_test['work'])
    work = str(tmp_path / 'seg_work')
    for key in ('mIoU', 'aAcc'):
        _dump_metrics(work, dict(seg, **{key: seg[key] + 0.01}))
        with pytest.raises(ValueError, match=f'{key} .* not the predictions'):
            read_test_results('mmseg', seg_test['root'], work, seg_test['out'])


def test_missing_files_are_errors(tmp_path, seg_test):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'vis_data').mkdir()  # a folder, but no metrics in it
    with pytest.raises(ValueError, match='did the test finish'):
        read_test_metrics(str(empty))
    with pytest.raises(ValueError, match='library'):
        read_test_results('mmpretrain', seg_test['root'], seg_test['work'],
                          seg_test['out'])
    with pytest.raises(FileNotFoundError, match='no predicted label map'):
        read_test_results('mmseg', seg_test['root'], seg_test['work'],
                          str(empty))


def test_the_latest_test_counts(tmp_path):
    """A work dir tested twice: the later timestamp's metrics."""
    _dump_metrics(str(tmp_path), {'mIoU': 1.0}, '20240101_120000')
    _dump_metrics(str(tmp_path), {'mIoU': 2.0}, '20240101_120500')
    _dump_metrics(str(tmp_path), {'mIoU': 3.0}, '20231231_235959')
    assert read_test_metrics(str(tmp_path))['mIoU'] == 2.0


def test_nan_cells():
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
