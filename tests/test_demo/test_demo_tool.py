# Copyright (c) mmvheat contributors. All rights reserved.
"""``tools/demo.py`` end to end on a handful of images, and its console.

A tiny run (2 iterations on 4 training images, 3 validation images) of both
models checks what a person sees: a handful of lines (one per phase, the
table, the picture), the whole logs in the work directory, summary.png,
and per-class metrics that agree with the predictions the tests dumped
(recomputed here with numpy and pycocotools). A phase that fails ends the
demo with its log's path and last lines, and exit status 1.
"""
import io
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import mmengine
import numpy as np
import pytest

from demo.console import Console
from demo.data import DEMO_DET_CLASSES, DEMO_SEG_CLASSES
from demo.phases import IterProgress
from .test_results import coco_results, cocoeval_per_class

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'tools', 'demo.py')
PHASES = ['generate data', 'evaluate untrained', 'train', 'test', 'test --tta']
TINY = [
    '--max-iters', '2', '--num-train', '4', '--num-val', '3', '--num-images',
    '2', '--cfg-options', 'train_dataloader.batch_size=2',
    'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers='
    'False', 'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False', 'default_hooks.logger.'
    'interval=1'
]
PHASE_LINE = re.compile(r'^\[(det|seg)\] (\S.*?)\s{2,}.*\d+ s$')


def _run(args, tmp):
    """``python tools/demo.py ARGS`` from ``tmp``, as a person runs it: the
    tool finds the demo and this checkout's mmvheat itself."""
    return subprocess.run([sys.executable, DEMO, *args],
                          cwd=str(tmp),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          timeout=900)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo_tool')
    data, work = str(tmp / 'data'), str(tmp / 'work')
    result = _run(['--data-root', data, '--work-dir', work, *TINY], tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(result=result, data=data, work=work, tmp=tmp)


@pytest.mark.slow
def test_a_handful_of_lines(tiny_run):
    result = tiny_run['result']
    assert result.stderr == ''
    lines = result.stdout.splitlines()
    phases = [PHASE_LINE.match(line) for line in lines]
    done = [(m[1], m[2]) for m in phases if m]
    for task in ('det', 'seg'):
        # each phase once, after the phases it needs (the two models run
        # side by side, and a task's two tests run at once)
        order = [p for t, p in done if t == task]
        assert sorted(order) == sorted(PHASES)
        assert order[0] == 'generate data'
        assert order.index('train') < min(
            order.index('test'), order.index('test --tta'))
    # the rest: the header, quarter-way progress lines of training, the
    # table (a title and a row per metric and class) and the closing lines
    progress = [line for line in lines if re.search(r'\[[#.]{20}\]', line)]
    table_rows = 2 + 2 * (1 + len(DEMO_DET_CLASSES)) + 2 + len(
        DEMO_SEG_CLASSES) + 2
    assert len(lines) <= 1 + len(done) + len(progress) + table_rows + 6
    assert len(done) == 2 * len(PHASES)
    assert len(progress) <= 2 * 3
    assert lines[-2] == ('Predictions beside the ground truth: ' +
                         osp.join(tiny_run['work'], 'summary.png'))
    assert re.fullmatch(r'Total: \d+ min \d\d s|Total: \d+ s', lines[-1])
    table = lines[lines.index('Validation metrics, % (COCO AP; IoU):') + 1:]
    assert table[0].split() == ['untrained', 'trained', 'trained', '+', 'TTA']
    assert table[1] == 'vHeat-T Mask R-CNN'
    assert [row.split()[0] for row in table[2:10]
            ] == ['bbox', *DEMO_DET_CLASSES, 'segm', *DEMO_DET_CLASSES]
    assert table[10] == 'vHeat-T UperNet'
    assert [row.split()[0]
            for row in table[11:17]] == ['mIoU', *DEMO_SEG_CLASSES, 'aAcc']


@pytest.mark.slow
def test_logs_in_the_work_dir(tiny_run):
    work = tiny_run['work']
    for task in ('det', 'seg'):
        text = open(osp.join(work, task, 'generate.log')).read()
        assert text.startswith('$ ') and 'make_demo_data.py' in text
        logs = {
            name: open(osp.join(work, task, f'{name}.log')).read()
            for name in ('untrained', 'train', 'test', 'test_tta')
        }
        commands = [
            line for line in logs['untrained'].splitlines()
            if line.startswith('$ ')
        ]
        assert 'demo.initial_weights' in commands[0]
        assert 'tools/test.py' in commands[1]
        # the whole output: the config dump and mmengine's lines
        assert "type='mmvheat.VHeat'" in logs['train']
        assert re.search(r'Iter\(train\) \[2/2\]', logs['train'])
        assert '--tta' in logs['test_tta'].splitlines()[0]
        assert 'TestTimeAug' in logs['test_tta']
        assert osp.isfile(osp.join(work, task, 'train', 'iter_2.pth'))
        # each test's metrics, as mmengine wrote them, and its predictions
        for phase in RUNS.values():
            runs = [
                name for name in os.listdir(osp.join(work, task, phase))
                if osp.isfile(
                    osp.join(work, task, phase, name, name + '.json'))
            ]
            assert len(runs) == 1, (task, phase)
            assert osp.exists(
                osp.join(
                    work, task, phase,
                    'predictions.pkl' if task == 'det' else 'predictions'))
    summary = json.load(open(osp.join(work, 'summary.json')))
    assert set(summary['results']) == {'det', 'seg'}
    # the same numbers as a Markdown table, one row per metric and class
    markdown = open(osp.join(work, 'summary.md')).read().splitlines()
    assert markdown[0] == '| | untrained | trained | trained + TTA |'
    row = '| mIoU | ' + ' | '.join(
        f'{summary["results"]["seg"][run]["mIoU"]:.1f}'
        for run in ('untrained', 'trained', 'trained + TTA')) + ' |'
    assert row in markdown


#: The runs of the table and the phases (work dirs) that test them.
RUNS = {
    'untrained': 'untrained',
    'trained': 'test',
    'trained + TTA': 'test_tta'
}


def _seg_iou(labels, predictions):
    """IoU per class in percent, numpy alone (the PNGs hold label + 1; 0 is
    unlabelled); None where a class is neither predicted nor labelled."""
    inter = np.zeros(len(DEMO_SEG_CLASSES))
    union = np.zeros(len(DEMO_SEG_CLASSES))
    for name in sorted(os.listdir(labels)):
        truth = cv2.imread(osp.join(labels, name), cv2.IMREAD_UNCHANGED)
        predicted = cv2.imread(
            osp.join(predictions, name), cv2.IMREAD_UNCHANGED)
        for k in range(len(DEMO_SEG_CLASSES)):
            inter[k] += ((truth == k + 1) & (predicted == k + 1)).sum()
            union[k] += ((truth == k + 1) | ((predicted == k + 1) &
                                             (truth > 0))).sum()
    return [100 * i / u if u else None for i, u in zip(inter, union)]


@pytest.mark.slow
def test_per_class_metrics_match_the_predictions(tiny_run):
    """Each run's column is what the predictions its test dumped score,
    computed without mmseg and mmdet."""
    work, data = tiny_run['work'], tiny_run['data']
    results = json.load(open(osp.join(work, 'summary.json')))['results']
    for run, phase in RUNS.items():
        seg = results['seg'][run]
        ious = _seg_iou(
            osp.join(data, 'ade', 'annotations', 'validation'),
            osp.join(work, 'seg', phase, 'predictions'))
        for name, iou in zip(DEMO_SEG_CLASSES, ious):
            if iou is not None:
                # IoUMetric rounds to 2 decimals
                assert seg[f'mIoU | {name}'] == pytest.approx(
                    iou, abs=0.006), (run, name)

        det = results['det'][run]
        per_class = cocoeval_per_class(
            osp.join(data, 'coco', 'annotations', 'instances_val2017.json'),
            coco_results(
                mmengine.load(osp.join(work, 'det', phase, 'predictions.pkl')),
                'bbox'), 'bbox')
        for name, ap in per_class.items():
            if math.isnan(ap):
                assert det[f'bbox AP | {name}'] is None  # null: no truth
            else:
                # CocoMetric rounds AP to 3 decimals
                assert det[f'bbox AP | {name}'] == pytest.approx(
                    ap, abs=0.051), (run, name)


@pytest.mark.slow
def test_summary_png(tiny_run):
    picture = cv2.imread(osp.join(tiny_run['work'], 'summary.png'))
    from demo.summary import DPI, PANEL_INCHES

    # two images wide, five rows of panels
    assert picture.shape[1] > 2 * PANEL_INCHES * DPI
    assert picture.shape[0] > 5 * PANEL_INCHES * DPI
    assert picture.shape[1] < picture.shape[0] < 2 * picture.shape[0]


@pytest.mark.slow
def test_a_failing_phase(tiny_run):
    """The phase, its log and its last lines on stderr; exit status 1."""
    result = _run([
        '--data-root', tiny_run['data'], '--work-dir',
        str(tiny_run['tmp'] / 'fail'), '--tasks', 'seg', *TINY,
        'model.backbone.arch=no-such-arch'
    ], tiny_run['tmp'])
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    # the header, the one phase that finished, a blank line
    assert PHASE_LINE.match(lines[1]).groups() == ('seg', 'generate data')
    assert lines[2:] == ['']
    errors = result.stderr.splitlines()
    assert errors[0] == 'FAILED: [seg] train: train.py exited with status 1'
    log = osp.join(str(tiny_run['tmp'] / 'fail'), 'seg', 'train.log')
    assert errors[1] == f'log: {log}'
    assert errors[2] == 'last lines of the log:'
    assert 'no-such-arch' in '\n'.join(errors[3:])
    assert errors[3:] == [
        '    ' + line for line in open(log).read().splitlines()[-20:]
    ]


class _Terminal(io.StringIO):

    def isatty(self):
        return True


def _screen(text):
    """What a terminal shows after ``text``: lines, carriage returns and
    the escapes the console uses (ESC[nF: n lines up, to their start;
    ESC[J: clear to the end of the screen)."""
    lines, row, col = [''], 0, 0
    for token in re.findall(r'\x1b\[(\d*)([FJ])|(\r)|(\n)|([^\x1b\r\n]+)',
                            text):
        count, code, cr, nl, chars = token
        if code == 'F':
            row, col = row - int(count or 1), 0
        elif code == 'J':
            lines[row] = lines[row][:col]
            del lines[row + 1:]
        elif cr:
            col = 0
        elif nl:
            row, col = row + 1, 0
            if row == len(lines):
                lines.append('')
        else:
            line = lines[row]
            lines[row] = line[:col] + chars + line[col + len(chars):]
            col += len(chars)
    assert row >= 0
    return lines


def test_console_on_a_terminal_redraws_one_line_per_task():
    stream = _Terminal()
    console = Console(stream)
    console.line('header')
    for done in range(1, 41):
        console.progress('det', 'train',
                         IterProgress('train', done, 40, 1.0, '0:00:10'))
        if done == 20:
            console.status('seg', '[seg] test ...')
            console.line('[seg] train  done')
    assert _screen(stream.getvalue()) == [
        'header', '[seg] train  done',
        '[det] train [####################] 40/40 loss 1.000 ETA 0:00:10',
        '[seg] test ...'
    ]
    console.status('det', None)
    console.status('seg', None)
    console.line('[det] test  done')
    assert _screen(stream.getvalue()) == [
        'header', '[seg] train  done', '[det] test  done', ''
    ]


def test_console_elsewhere_prints_sparse_lines():
    stream = io.StringIO()
    console = Console(stream)
    for done in range(1, 41):
        console.progress('det', 'train',
                         IterProgress('train', done, 40, 1.0, '0:00:10'))
    console.status('det', '[det] test ...')  # nothing off a terminal
    console.line('[det] train  done')
    lines = stream.getvalue().splitlines()
    assert '\r' not in stream.getvalue() and '\x1b' not in stream.getvalue()
    # a line at each quarter (10, 20, 30), then the phase's line
    assert [line.split('] ')[-1].split()[0]
            for line in lines[:-1]] == ['10/40', '20/40', '30/40']
    assert lines[-1] == '[det] train  done'


@pytest.mark.parametrize(
    'args', [['--max-iters', '0'], ['--num-val', '-2'], ['--tasks', 'cls']])
def test_bad_arguments_are_one_line(args, tmp_path):
    """argparse's usage and one error line, status 2, before any work."""
    result = _run(['--work-dir', str(tmp_path / 'work'), *args], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ''
    assert result.stderr.splitlines()[-1].startswith('demo.py: error: ')
    assert not (tmp_path / 'work').exists()
