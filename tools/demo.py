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
   2-core machine.
2. Prints the metrics side by side, overall and per class (COCO box and
   mask AP, IoU), and draws ``<work-dir>/summary.png``: validation images,
   their ground truth and the trained models' predictions.

One line per phase; each phase's whole output (configs, logs, warnings,
the evaluators' tables) is in ``<work-dir>/<task>/<phase>.log``, whose
first lines are the commands to run it again by hand. A phase that fails
ends the demo with its log's path and last lines, and exit status 1. Sized
for a 2-core CPU (about 15 minutes); ``--tasks`` picks one model and
``--max-iters`` trains longer or shorter.
"""
import argparse
import json
import math
import os
import os.path as osp
import shutil
import sys
import threading
import time
import traceback
import warnings
from typing import Optional

# isort: off
# Importing mmengine warns that pkg_resources is deprecated: not for people.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
from mmvheat.demo import DEMO_DET_METAINFO, DEMO_SEG_METAINFO  # noqa: E402
from mmvheat.demo.phases import PhaseError  # noqa: E402
from mmvheat.demo.results import classes_at_zero, format_table  # noqa: E402
from mmvheat.demo.workflow import DEMO_TASKS, RUN_PHASES  # noqa: E402
from mmvheat.demo.workflow import PROJECT_ROOT, TaskPlan  # noqa: E402
from mmvheat.demo.workflow import child_env, run_plan  # noqa: E402
# isort: on

#: The overall metrics of a test phase's line.
HEADLINE = dict(det=('bbox AP', 'segm AP'), seg=('mIoU', ))
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
        type=int,
        help="training iterations in place of the configs' (the "
        'learning-rate schedule is scaled to match)')
    parser.add_argument(
        '--num-train',
        type=int,
        help='training images per dataset (default: 300)')
    parser.add_argument(
        '--num-val',
        type=int,
        help='validation images per dataset (default: 50)')
    parser.add_argument(
        '--num-images',
        type=int,
        default=4,
        help='validation images in summary.png (default: %(default)s)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='more --cfg-options for every train and test command')
    args = parser.parse_args(argv)
    for name in ('max_iters', 'num_train', 'num_val', 'num_images'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    args.tasks = list(dict.fromkeys(args.tasks))
    return args


def duration(seconds: float) -> str:
    if seconds < 59.5:
        return f'{seconds:.0f} s'
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f'{minutes} min {seconds:02d} s'


def phase_line(task: str, label: str, detail: str, seconds: float) -> str:
    return f'[{task}] {label:<19} {detail:<38} {duration(seconds):>10}'


class Console:
    """Finished phases as lines that stay. On a terminal, below them, one
    line per running task with its progress, redrawn in place; elsewhere (a
    pipe, a CI log) a progress line at each quarter of training.

    Args:
        stream (file, optional): Defaults to ``sys.stdout``.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.width = shutil.get_terminal_size((100, 24)).columns - 1
        self._lock = threading.Lock()
        self._status = {}
        self._drawn = 0
        self._quarters = {}

    def _erase(self) -> str:
        """The escapes that take the cursor back over the status lines and
        clear them: to the start of the first (``ESC[nF``), then to the end
        of the screen (``ESC[J``)."""
        if not self._drawn:
            return ''
        up = f'\x1b[{self._drawn - 1}F' if self._drawn > 1 else ''
        self._drawn = 0
        return '\r' + up + '\x1b[J'

    def _draw(self) -> str:
        lines = [text[:self.width] for text in self._status.values()]
        self._drawn = len(lines)
        return '\n'.join(lines)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self, text: str = '') -> None:
        """A line that stays; the status lines are drawn again below."""
        with self._lock:
            if self.live:
                self._write(self._erase() + text + '\n' + self._draw())
            else:
                self._write(text + '\n')

    def status(self, task: str, text: Optional[str] = None) -> None:
        """What ``task`` is doing now (None: nothing; terminal only)."""
        with self._lock:
            if text is None:
                self._status.pop(task, None)
            else:
                self._status[task] = text
            if self.live:
                self._write(self._erase() + self._draw())

    def progress(self, task: str, label: str, progress) -> None:
        """Training: a bar, iterations, loss and mmengine's ETA; testing:
        the batches done."""
        if progress.mode != 'train':
            self.status(
                task, f'[{task}] {label} '
                f'{progress.done}/{progress.total}')
            return
        done, total = progress.done, max(progress.total, 1)
        filled = int(20 * done / total)
        text = (f'[{task}] {label} [{"#" * filled}{"." * (20 - filled)}] '
                f'{done}/{total}')
        if progress.loss is not None:
            text += f' loss {progress.loss:.3f}'
        if progress.eta is not None:
            text += f' ETA {progress.eta}'
        if self.live:
            self.status(task, text)
            return
        quarter = 4 * done // total
        if 0 < quarter < 4 and quarter > self._quarters.get(task, 0):
            self._quarters[task] = quarter
            self.line(text)


class TaskThread(threading.Thread):
    """One model's phases (:func:`mmvheat.demo.workflow.run_plan`), its
    phase lines and progress on the console."""

    def __init__(self, plan, console, env, stopping):
        super().__init__(name=f'demo-{plan.task.name}', daemon=True)
        self.plan = plan
        self.console = console
        self.env = env
        self.stopping = stopping
        self.phases = {}
        self.error = None
        self.failed_phase = None
        self.process = None
        self.losses = []
        self.traceback = None

    def on_start(self, phase):
        self.phases[phase.name] = phase
        self.console.status(phase.task, f'[{phase.task}] {phase.label} ...')

    def on_progress(self, phase, progress):
        if progress.mode == 'train' and progress.loss is not None:
            self.losses.append(progress.loss)
        self.console.progress(phase.task, phase.label, progress)

    def on_done(self, phase, seconds):
        task = phase.task
        if phase.name == 'generate':
            size = phase.outputs['dataset_size']
            detail = f'{size["train"]} train + {size["val"]} val images'
        elif phase.results is not None:
            detail = '  '.join(f'{name} {phase.results[name]:.1f}'
                               for name in HEADLINE[task])
        else:
            checkpoint = osp.basename(phase.outputs['checkpoint'])
            iters = osp.splitext(checkpoint)[0].rsplit('_', 1)[-1]
            detail = f'{iters} iterations'
            if self.losses:
                detail += (f', loss {self.losses[0]:.2f} -> '
                           f'{self.losses[-1]:.2f}')
        self.console.status(task, None)
        self.console.line(phase_line(task, phase.label, detail, seconds))

    def on_process(self, process):
        self.process = process
        if self.stopping.is_set():
            process.kill()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def run(self):
        try:
            run_plan(
                self.plan,
                env=self.env,
                on_start=self.on_start,
                on_progress=self.on_progress,
                on_done=self.on_done,
                on_process=self.on_process)
        except Exception as exc:  # noqa: B902  (reported by the main thread)
            self.error = exc
            self.failed_phase = getattr(exc, 'phase', None) or \
                list(self.phases.values())[-1]
            if not isinstance(exc, (PhaseError, ValueError, OSError)):
                self.traceback = traceback.format_exc().splitlines()
        finally:
            self.console.status(self.plan.task.name, None)


def log_tail(path: str, count: int = 20):
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return [line.rstrip('\n') for line in f.readlines()[-count:]]
    except OSError:
        return []


def report_failure(console, what: str, message: str, log_path: str,
                   tail) -> None:
    """The failed phase, its log and the log's last lines, on stderr."""
    console.line()
    lines = [
        f'FAILED: {what}: {message}', f'log: {log_path}',
        'last lines of the log:'
    ] + [f'    {line}' for line in tail]
    sys.stderr.write('\n'.join(lines) + '\n')
    sys.stderr.flush()


def draw_picture(args, threads) -> str:
    """``summary.png`` from the test phases' predictions; its path."""
    from mmvheat.demo.summary import DetPanels, SegPanels, draw_summary
    panels = {}
    for name, thread in threads.items():
        predictions = thread.phases['test'].outputs['predictions']
        root = thread.plan.dataset_dir
        if name == 'det':
            panels['det'] = DetPanels(
                thread.plan.task.title,
                image_dir=osp.join(root, 'val2017'),
                ann_file=osp.join(root, 'annotations',
                                  'instances_val2017.json'),
                predictions=predictions,
                classes=DEMO_DET_METAINFO['classes'],
                palette=DEMO_DET_METAINFO['palette'])
        else:
            panels['seg'] = SegPanels(
                thread.plan.task.title,
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
    # Both models at once, each with its share of the cores: under load,
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

    stopping = threading.Event()
    threads = {
        name: TaskThread(plan, console, env, stopping)
        for name, plan in plans.items()
    }
    for thread in threads.values():
        thread.start()
    failed = None
    try:
        while any(thread.is_alive() for thread in threads.values()):
            for thread in threads.values():
                thread.join(timeout=0.2)
                if thread.error is not None and failed is None:
                    failed = thread
                    stopping.set()
                    for other in threads.values():
                        other.stop()
    except KeyboardInterrupt:
        stopping.set()
        for thread in threads.values():
            thread.stop()
        console.line('interrupted')
        return 130
    if failed is not None:
        exc, phase = failed.error, failed.failed_phase
        if isinstance(exc, PhaseError):
            log_path, tail = exc.log_path, exc.tail
        else:
            log_path, tail = phase.log_path, log_tail(phase.log_path)
        message = str(exc)
        if failed.traceback is not None:  # a fault of the demo itself
            message = f'{type(exc).__name__}: {exc}'
            tail = tail + failed.traceback
        report_failure(console, f'[{phase.task}] {phase.label}', message,
                       log_path, tail)
        return 1

    results = {
        name: {
            run: thread.phases[phase].results
            for run, phase in RUN_PHASES.items()
        }
        for name, thread in threads.items()
    }
    try:
        picture = draw_picture(args, threads)
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
