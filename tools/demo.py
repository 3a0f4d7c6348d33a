# Copyright (c) mmvheat contributors. All rights reserved.
"""The end-to-end demo: vHeat-T Mask R-CNN and UperNet, from data to metrics.

    python tools/demo.py [--tasks det seg] [--data-root data/demo]
        [--work-dir work_dirs/demo] [--max-iters N] [--num-images N]
        [--cfg-options K=V ...]

1. For each model: generates its dataset of circles, squares and triangles
   in ``data/demo`` (COCO or ADE20K format,
   ``tools/dataset_converters/make_demo_data.py``), evaluates the model
   untrained (the baseline), trains it from scratch (``tools/train.py``),
   tests it (``tools/test.py``) and tests it with test-time augmentation
   (``--tta``). The two models run side by side, one CPU thread each on a
   2-core machine; a core one model cannot use yet (or any more) runs the
   other's phases.
2. Prints the metrics side by side, overall and per class (COCO box and
   mask AP, IoU; read from the metrics and predictions each test wrote),
   and draws ``<work-dir>/summary.png``: validation images, their ground
   truth and the trained models' predictions.

One line per phase; each phase's whole output (configs, logs, warnings,
the evaluators' tables) is in ``<work-dir>/<task>/<phase>.log``, whose
first lines are the commands to run it again by hand. A phase that fails
ends the demo with its log's path and last lines, and exit status 1. Sized
for a 2-core CPU (11 to 12 minutes); ``--tasks`` picks one model and
``--max-iters`` trains longer or shorter. The demo's code is in ``demo/``,
beside the package.
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import threading
import time
import traceback
import warnings

# The demo is beside the package, in this checkout's demo/ (never installed);
# this checkout's mmvheat comes first too, as in the commands the demo runs.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
# isort: off
# Importing mmengine warns that pkg_resources is deprecated: not for people.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
from demo.console import Console, LaneThread  # noqa: E402
from demo.console import duration, log_tail  # noqa: E402
from demo.console import report_failure  # noqa: E402
from demo.data import DEMO_DET_METAINFO, DEMO_SEG_METAINFO  # noqa: E402
from demo.results import classes_at_zero, format_table  # noqa: E402
from demo.results import format_markdown_table  # noqa: E402
from demo.workflow import DEMO_TASKS, RUN_PHASES  # noqa: E402
from demo.workflow import PROJECT_ROOT, PhaseQueue, TaskPlan  # noqa: E402
from demo.workflow import child_env  # noqa: E402
from mmvheat.utils.io import positive_int  # noqa: E402
# isort: on

TITLE = 'Trained from scratch on generated shapes: validation images'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--tasks',
        nargs='+',
        choices=sorted(DEMO_TASKS),
        default=['det', 'seg'],
        help='det: vHeat-T Mask R-CNN, seg: vHeat-T UperNet '
        '(default: both)')
    parser.add_argument(
        '--data-root',
        default='data/demo',
        help='where the datasets go (relative paths: to the repository '
        'root; default: %(default)s)')
    parser.add_argument(
        '--work-dir',
        default='work_dirs/demo',
        help='logs, checkpoints, summary.png (default: %(default)s)')
    parser.add_argument(
        '--max-iters',
        type=positive_int,
        help="training iterations in place of the configs' (the "
        'learning-rate schedule is scaled to match)')
    parser.add_argument(
        '--num-train',
        type=positive_int,
        help='training images per dataset (default: 300)')
    parser.add_argument(
        '--num-val',
        type=positive_int,
        help='validation images per dataset (default: 50)')
    parser.add_argument(
        '--num-images',
        type=positive_int,
        default=4,
        help='validation images in summary.png (default: %(default)s)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='more --cfg-options for every train and test command')
    args = parser.parse_args(argv)
    args.tasks = list(dict.fromkeys(args.tasks))
    return args


def draw_picture(args, queue) -> str:
    """``summary.png`` from the test phases' predictions; its path."""
    from demo.summary import DetPanels, SegPanels, draw_summary
    panels = {}
    for name, plan in queue.plans.items():
        predictions = queue.done[name]['test'].outputs['predictions']
        root = plan.dataset_dir
        if name == 'det':
            panels['det'] = DetPanels(
                plan.task.title,
                image_dir=osp.join(root, 'val2017'),
                ann_file=osp.join(root, 'annotations',
                                  'instances_val2017.json'),
                predictions=predictions,
                classes=DEMO_DET_METAINFO['classes'],
                palette=DEMO_DET_METAINFO['palette'])
        else:
            panels['seg'] = SegPanels(
                plan.task.title,
                image_dir=osp.join(root, 'images', 'validation'),
                label_dir=osp.join(root, 'annotations', 'validation'),
                prediction_dir=predictions,
                classes=DEMO_SEG_METAINFO['classes'],
                palette=DEMO_SEG_METAINFO['palette'])
    picture = osp.join(args.work_dir, 'summary.png')
    draw_summary(
        picture,
        det=panels.get('det'),
        seg=panels.get('seg'),
        num_images=args.num_images,
        title=TITLE)
    return picture


def main(argv=None, stream=None) -> int:
    args = parse_args(argv)
    os.chdir(PROJECT_ROOT)
    start = time.perf_counter()
    console = Console(stream)
    # Two phases at once, each with its share of the cores: under load,
    # torch's OpenMP threads that wait for one another lose far more.
    threads_each = max(1, (os.cpu_count() or 1) // len(args.tasks))
    env = child_env(threads=threads_each)
    plans = {
        name:
        TaskPlan(DEMO_TASKS[name], args.data_root, args.work_dir,
                 args.max_iters, args.cfg_options, args.num_train,
                 args.num_val)
        for name in args.tasks
    }
    titles = {name: plan.task.title for name, plan in plans.items()}
    console.line(f'mmvheat demo: {" and ".join(titles.values())}, from '
                 f'scratch; logs in {args.work_dir}/')

    # One lane per task, each phase with the lane's share of the cores: a
    # lane that one task cannot use takes the other's phases (PhaseQueue).
    queue = PhaseQueue(list(plans.values()))
    stopping = threading.Event()
    lanes = [
        LaneThread(queue, console, env, stopping, name=f'demo-lane-{i}')
        for i in range(len(plans))
    ]

    def stop_all():
        stopping.set()
        queue.close()
        for lane in lanes:
            lane.stop()

    for lane in lanes:
        lane.start()
    failed = None
    try:
        while any(lane.is_alive() for lane in lanes):
            for lane in lanes:
                lane.join(timeout=0.2)
                if lane.error is not None and failed is None:
                    failed = lane
                    stop_all()
    except KeyboardInterrupt:
        stop_all()
        console.line('interrupted')
        return 130
    if failed is not None:
        report_failure(console, *failed.failure())
        return 1

    results = {
        name: {
            run: queue.done[name][phase].results
            for run, phase in RUN_PHASES.items()
        }
        for name in plans
    }
    try:
        picture = draw_picture(args, queue)
    except Exception as exc:  # noqa: B902  (any error: its traceback)
        log_path = osp.join(args.work_dir, 'summary.log')
        with open(log_path, 'w', encoding='utf-8') as f:
            f.write(traceback.format_exc())
        report_failure(console, 'summary.png', f'{type(exc).__name__}: {exc}',
                       log_path, log_tail(log_path))
        return 1
    seconds = time.perf_counter() - start
    with open(
            osp.join(args.work_dir, 'summary.json'), 'w',
            encoding='utf-8') as f:
        json.dump(
            dict(
                # JSON has no NaN: a class without ground truth is null
                results={
                    name: {
                        run: {
                            row: None if math.isnan(value) else value
                            for row, value in rows.items()
                        }
                        for run, rows in runs.items()
                    }
                    for name, runs in results.items()
                },
                seconds=round(seconds, 1),
                configs={
                    name: plan.task.config
                    for name, plan in plans.items()
                }),
            f,
            indent=1)
    with open(
            osp.join(args.work_dir, 'summary.md'), 'w', encoding='utf-8') as f:
        f.write(format_markdown_table(results, titles) + '\n')

    console.line()
    console.line('Validation metrics, % (COCO AP; IoU):')
    console.line(format_table(results, titles))
    for name in plans:
        zero = classes_at_zero(results[name]['trained'])
        if zero:
            console.line(f'note: {titles[name]} scores 0 on '
                         f'{", ".join(z.replace(" | ", " ") for z in zero)}'
                         ' after training; train longer (--max-iters)')
    console.line()
    console.line(f'Predictions beside the ground truth: {picture}')
    console.line(f'Total: {duration(seconds)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
