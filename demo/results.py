# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's metrics, read from the files ``tools/test.py`` writes.

A test leaves two files behind:

* the evaluator's metrics, which mmengine's ``LoggerHook`` writes as JSON
  to ``<work_dir>/<timestamp>/<timestamp>.json``: ``coco/bbox_mAP`` and
  ``coco/segm_mAP`` (mmdet's ``CocoMetric``), ``mIoU`` and ``aAcc``
  (mmseg's ``IoUMetric``, in percent);
* the predictions of ``--out``: the pickle of mmdet's ``DumpDetResults``
  (boxes, scores, labels, RLE masks per image), or the label maps mmseg's
  ``IoUMetric`` writes (one PNG per image, label + 1 with
  ``reduce_zero_label``).

The overall metrics are the JSON's. The evaluators print their per-class
numbers but do not return them (``IoUMetric`` returns means only;
``CocoMetric`` returns one ``<class>_precision`` per class, overwritten by
each metric, so only the masks' survive), so the per-class rows are
computed again from the predictions and the ground truth, with the
evaluators' own code and rounding. The overall metrics computed that way
must equal the JSON's: that checks that the predictions are the ones the
test scored. :func:`format_table` and :func:`format_markdown_table` lay the
runs out side by side.
"""
import contextlib
import io
import json
import logging
import math
import os
import os.path as osp
import threading
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .data import DEMO_DET_CLASSES, DEMO_SEG_CLASSES

__all__ = [
    'read_test_metrics', 'coco_metrics', 'iou_metrics', 'read_test_results',
    'format_table', 'format_markdown_table', 'classes_at_zero'
]

#: The datasets' validation split, as :mod:`demo.data` writes it.
COCO_VAL_ANN = osp.join('annotations', 'instances_val2017.json')
ADE_VAL_LABELS = osp.join('annotations', 'validation')
IGNORE_INDEX = 255

# The evaluators print (pycocotools) and log at INFO (mmdet, mmseg) as they
# go; the demo's console is for its own lines. One evaluation at a time:
# stdout and the logger's level are the process's.
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet():
    """Keep what the evaluators print and log at INFO off the console."""
    from mmengine.logging import MMLogger
    with _QUIET_LOCK:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logger.setLevel(level)


def read_test_metrics(work_dir: str) -> Dict[str, float]:
    """The metrics of the last test run in ``work_dir``.

    Args:
        work_dir (str): The test's ``--work-dir``.

    Returns:
        dict: What mmengine's ``LoggerHook`` wrote to
        ``<work_dir>/<timestamp>/<timestamp>.json`` (the latest timestamp):
        the evaluator's metrics (``nan`` where it had none), and the test's
        times.

    Raises:
        ValueError: ``work_dir`` holds no such file.
    """
    runs = sorted(
        name for name in os.listdir(work_dir)
        if osp.isfile(osp.join(work_dir, name, f'{name}.json')))
    if not runs:
        raise ValueError(f'{work_dir} holds no <timestamp>/<timestamp>.json '
                         'of the metrics (did the test finish?)')
    path = osp.join(work_dir, runs[-1], f'{runs[-1]}.json')
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def coco_metrics(predictions: str,
                 ann_file: str,
                 classes: Sequence[str] = DEMO_DET_CLASSES
                 ) -> 'OrderedDict[str, float]':
    """Box and mask AP of a detector's predictions, overall and per class.

    mmdet's ``CocoMetric`` with ``classwise=True``, one metric at a time, on
    what ``tools/test.py --out`` dumped.

    Args:
        predictions (str): The pickle of ``--out``.
        ann_file (str): The COCO annotations of the images.
        classes (Sequence[str]): The class names, in label order. Defaults
            to :data:`demo.data.DEMO_DET_CLASSES`.

    Returns:
        OrderedDict: ``{'bbox_mAP': AP, 'bbox | <class>': AP, ...,
        'segm_mAP': ..., 'segm | <class>': ...}``, fractions rounded to 3
        decimals as ``CocoMetric`` rounds them; ``nan`` for a class without
        ground truth.

    Raises:
        ValueError: There are no predictions at all.
    """
    import mmengine
    from mmdet.evaluation import CocoMetric
    samples = mmengine.load(predictions)
    values = OrderedDict()
    with _quiet():
        for kind in ('bbox', 'segm'):
            metric = CocoMetric(ann_file=ann_file, metric=kind, classwise=True)
            metric.dataset_meta = dict(classes=tuple(classes))
            metric.process({}, samples)
            found = metric.compute_metrics(metric.results)
            if f'{kind}_mAP' not in found:  # CocoMetric logged an error
                raise ValueError(f'{predictions} holds no {kind} predictions')
            values[f'{kind}_mAP'] = found[f'{kind}_mAP']
            for name in classes:
                values[f'{kind} | {name}'] = found[f'{name}_precision']
    return values


def _read_label_map(path: str, reduce_zero_label: bool):
    """Labels as mmseg's ``LoadAnnotations`` reads them: with
    ``reduce_zero_label``, 0 (unlabelled) becomes 255 and every other label
    one less."""
    import cv2
    import numpy as np
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise FileNotFoundError(f'cannot read label map {path}')
    labels = labels.astype(np.int64)
    if reduce_zero_label:
        labels = np.where(labels == 0, IGNORE_INDEX + 1, labels) - 1
    return labels


def _two_decimals(value) -> float:
    """``IoUMetric`` rounds its float32 values to 2 decimals and prints
    them so; the same number as a float (79.7, not 79.69999694824219)."""
    return round(float(value), 2)


def iou_metrics(prediction_dir: str,
                label_dir: str,
                classes: Sequence[str] = DEMO_SEG_CLASSES,
                reduce_zero_label: bool = True) -> 'OrderedDict[str, float]':
    """mIoU, per-class IoU and pixel accuracy of a segmentor's label maps.

    mmseg's ``IoUMetric``: its areas (``intersect_and_union``) summed over
    the images, its metrics (``total_area_to_metrics``) and its rounding.

    Args:
        prediction_dir (str): The PNGs of ``tools/test.py --out``.
        label_dir (str): The ground-truth label maps (same names).
        classes (Sequence[str]): The class names, in label order. Defaults
            to :data:`demo.data.DEMO_SEG_CLASSES`.
        reduce_zero_label (bool): The PNGs hold label + 1, 0 is unlabelled
            (ADE20K). Defaults to True.

    Returns:
        OrderedDict: ``{'mIoU': ..., 'mIoU | <class>': IoU, ..., 'aAcc':
        ...}`` in percent, 2 decimals; ``nan`` for a class neither
        predicted nor in the ground truth.

    Raises:
        FileNotFoundError: An image has no predicted label map.
    """
    import numpy as np
    import torch
    from mmseg.evaluation import IoUMetric
    names = sorted(n for n in os.listdir(label_dir) if n.endswith('.png'))
    totals = [0, 0, 0, 0]
    for name in names:
        predicted = osp.join(prediction_dir, name)
        if not osp.isfile(predicted):
            raise FileNotFoundError(f'no predicted label map {predicted}')
        areas = IoUMetric.intersect_and_union(
            torch.from_numpy(_read_label_map(predicted, reduce_zero_label)),
            torch.from_numpy(
                _read_label_map(osp.join(label_dir, name), reduce_zero_label)),
            len(classes), IGNORE_INDEX)
        totals = [total + area for total, area in zip(totals, areas)]
    metrics = IoUMetric.total_area_to_metrics(*totals, ['mIoU'])
    # IoUMetric.compute_metrics: means (nan classes left out), then classes
    values = OrderedDict(
        mIoU=_two_decimals(np.round(np.nanmean(metrics['IoU']) * 100, 2)))
    for name, iou in zip(classes, np.round(metrics['IoU'] * 100, 2)):
        values[f'mIoU | {name}'] = _two_decimals(iou)
    values['aAcc'] = _two_decimals(
        np.round(np.nanmean(metrics['aAcc']) * 100, 2))
    return values


def _check(reported: Mapping[str, float], key: str, computed: float,
           work_dir: str, predictions: str) -> float:
    """``reported[key]``, which must be ``computed``."""
    if key not in reported:
        raise ValueError(f'{work_dir}: the test reported no {key}')
    value = reported[key]
    if not (value == computed or (math.isnan(value) and math.isnan(computed))):
        raise ValueError(f'{predictions} gives {key} {computed}, the test '
                         f'reported {value} ({work_dir}): these are not the '
                         'predictions it scored')
    return value


def read_test_results(library: str, dataset_dir: str, work_dir: str,
                      predictions: str) -> 'OrderedDict[str, float]':
    """The rows of the demo's table for one ``tools/test.py`` run.

    Args:
        library (str): ``'mmdet'`` (Mask R-CNN: bbox and segm AP, overall
            and per class) or ``'mmseg'`` (mIoU and per-class IoU, aAcc).
        dataset_dir (str): The dataset whose validation split was tested,
            in :mod:`demo.data`'s COCO or ADE20K layout.
        work_dir (str): The test's ``--work-dir`` (the metrics' JSON).
        predictions (str): The test's ``--out``.

    Returns:
        OrderedDict: ``{row: value in percent}``; a class row is
        ``'<metric> | <class>'`` after its metric's row (``'bbox AP'``,
        ``'bbox AP | circle'``, ...). ``nan`` where the evaluator had none
        (a class without ground truth).

    Raises:
        ValueError: The JSON lacks an overall metric, or the predictions do
            not give the metrics the test reported.
    """
    if library not in ('mmdet', 'mmseg'):
        raise ValueError(f'library must be mmdet or mmseg, got {library!r}')
    reported = read_test_metrics(work_dir)
    if library == 'mmseg':
        rows = iou_metrics(predictions, osp.join(dataset_dir, ADE_VAL_LABELS))
        reported = {
            key: _two_decimals(value)
            for key, value in reported.items() if key in ('mIoU', 'aAcc')
        }
        for key in ('mIoU', 'aAcc'):
            rows[key] = _check(reported, key, rows[key], work_dir, predictions)
        return rows
    computed = coco_metrics(predictions, osp.join(dataset_dir, COCO_VAL_ANN))
    rows = OrderedDict()
    for kind in ('bbox', 'segm'):
        rows[f'{kind} AP'] = 100 * _check(reported, f'coco/{kind}_mAP',
                                          computed[f'{kind}_mAP'], work_dir,
                                          predictions)
        for name in DEMO_DET_CLASSES:
            rows[f'{kind} AP | {name}'] = 100 * computed[f'{kind} | {name}']
    # With classwise=True, the JSON keeps the masks' per-class AP too.
    for name in DEMO_DET_CLASSES:
        if f'coco/{name}_precision' in reported:
            _check(reported, f'coco/{name}_precision',
                   computed[f'segm | {name}'], work_dir, predictions)
    return rows


def classes_at_zero(rows: Mapping[str, float]) -> List[str]:
    """The class rows whose value rounds to 0.0 (a class without ground
    truth, nan, is not among them)."""
    return [
        row for row, value in rows.items()
        if ' | ' in row and value is not None and round(value, 1) == 0
    ]


def _value(value: Optional[float]) -> str:
    """One decimal; ``-`` where there is no value (no run, or a class
    without ground truth)."""
    if value is None or math.isnan(value):
        return '-'
    return f'{value:.1f}'


def _grid(
    results: Mapping[str, Mapping[str, Mapping[str,
                                               float]]], titles: Mapping[str,
                                                                         str]
) -> Tuple[List[str], List[Tuple[str, bool, List[str]]]]:
    """Column names, and rows ``(label, is_title, cells)``."""
    runs = []
    for by_run in results.values():
        runs += [run for run in by_run if run not in runs]
    rows = []
    for task, by_run in results.items():
        rows.append((titles.get(task, task), True, [''] * len(runs)))
        labels = []
        for values in by_run.values():
            labels += [label for label in values if label not in labels]
        for label in labels:
            name = label.split(' | ')[-1]
            indent = '    ' if ' | ' in label else '  '
            rows.append(
                (indent + name, False,
                 [_value(by_run.get(run, {}).get(label)) for run in runs]))
    return runs, rows


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                 titles: Optional[Mapping[str, str]] = None) -> str:
    """The runs side by side as plain text.

    Args:
        results (Mapping): ``{task: {run: rows}}``, rows as from
            :func:`read_test_log`.
        titles (Mapping, optional): A title per task (the model, say).
            Defaults to None (the task's name).

    Returns:
        str: One line per metric and class, one column per run.
    """
    runs, rows = _grid(results, titles or {})
    width = max([len(label) for label, _, _ in rows] + [10]) + 2
    cell = max([len(run) for run in runs] + [7]) + 2
    lines = [' ' * width + ''.join(f'{run:>{cell}}' for run in runs)]
    for label, is_title, cells in rows:
        if is_title:
            lines.append(label)
        else:
            lines.append(f'{label:<{width}}' + ''.join(f'{c:>{cell}}'
                                                       for c in cells))
    return '\n'.join(lines)


def format_markdown_table(results: Mapping[str, Mapping[str, Mapping[str,
                                                                     float]]],
                          titles: Optional[Mapping[str, str]] = None) -> str:
    """:func:`format_table` as a Markdown table (classes in italics)."""
    runs, rows = _grid(results, titles or {})
    lines = [
        '| | ' + ' | '.join(runs) + ' |', '| --- |' + ' ---: |' * len(runs)
    ]
    for label, is_title, cells in rows:
        if is_title:
            lines.append(f'| **{label}** |' + ' |' * len(runs))
        elif label.startswith('    '):
            lines.append(f'| &nbsp;&nbsp;*{label.strip()}* | ' +
                         ' | '.join(cells) + ' |')
        else:
            lines.append(f'| {label.strip()} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
