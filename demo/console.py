# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's console: a line per finished phase, live progress below.

:class:`Console` writes the lines that stay and, on a terminal, redraws one
status line per running phase beneath them; a :class:`LaneThread` runs
phases from the demo's :class:`~demo.workflow.PhaseQueue`, one at a time,
and reports them to the console. :func:`report_failure` prints a failed
phase, its log and the log's last lines.
"""
import os.path as osp
import shutil
import sys
import threading
import traceback
from typing import Optional

from .phases import PhaseError, stop_process
from .workflow import run_phase

__all__ = [
    'HEADLINE', 'Console', 'LaneThread', 'duration', 'phase_line', 'log_tail',
    'report_failure'
]

#: The overall metrics of a test phase's line.
HEADLINE = dict(det=('bbox AP', 'segm AP'), seg=('mIoU', ))


def duration(seconds: float) -> str:
    if seconds < 59.5:
        return f'{seconds:.0f} s'
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f'{minutes} min {seconds:02d} s'


def phase_line(task: str, label: str, detail: str, seconds: float) -> str:
    return f'[{task}] {label:<19} {detail:<38} {duration(seconds):>10}'


class Console:
    """Finished phases as lines that stay. On a terminal, below them, one
    line per running phase with its progress, redrawn in place; elsewhere
    (a pipe, a CI log) a progress line at each quarter of training.

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

    def status(self, key, text: Optional[str] = None) -> None:
        """What the phase ``key`` (any name for it) is doing now (None:
        it has ended; terminal only)."""
        with self._lock:
            if text is None:
                self._status.pop(key, None)
            else:
                self._status[key] = text
            if self.live:
                self._write(self._erase() + self._draw())

    def progress(self, task: str, label: str, progress, key=None) -> None:
        """Training: a bar, iterations, loss and mmengine's ETA; testing:
        the batches done. ``key`` names the phase's status line (default:
        ``task``)."""
        key = task if key is None else key
        if progress.mode != 'train':
            self.status(
                key, f'[{task}] {label} '
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
            self.status(key, text)
            return
        quarter = 4 * done // total
        if 0 < quarter < 4 and quarter > self._quarters.get(key, 0):
            self._quarters[key] = quarter
            self.line(text)


class LaneThread(threading.Thread):
    """Runs phases taken from a :class:`~demo.workflow.PhaseQueue`, one at
    a time, until it is empty; shows each on the console.

    Args:
        queue (PhaseQueue): Where the phases come from.
        console (Console): Where they are shown.
        env (dict): The commands' environment.
        stopping (threading.Event): Set when the demo stops; a command
            started after that is killed at once.
    """

    def __init__(self, queue, console, env, stopping, name='demo-lane'):
        super().__init__(name=name, daemon=True)
        self.queue = queue
        self.console = console
        self.env = env
        self.stopping = stopping
        self.phase = None
        self.error = None
        self.process = None
        self.losses = []
        self.traceback = None

    @staticmethod
    def _key(phase):
        return phase.task, phase.name

    def on_start(self, phase):
        self.phase = phase
        self.losses = []
        self.console.status(
            self._key(phase), f'[{phase.task}] {phase.label} ...')

    def on_progress(self, phase, progress):
        if progress.mode == 'train' and progress.loss is not None:
            self.losses.append(progress.loss)
        self.console.progress(
            phase.task, phase.label, progress, key=self._key(phase))

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
        self.console.status(self._key(phase), None)
        self.console.line(phase_line(task, phase.label, detail, seconds))

    def on_process(self, process):
        self.process = process
        if self.stopping.is_set():
            stop_process(process)

    def stop(self):
        """Kill the running command with the processes it started."""
        if self.process is not None:
            stop_process(self.process)

    def failure(self):
        """What :func:`report_failure` says of this lane's failure: the
        phase, the message, the log and its last lines (with the traceback
        when the fault is the demo's own, not a command's)."""
        exc, phase = self.error, self.phase
        if isinstance(exc, PhaseError):
            log_path, tail = exc.log_path, exc.tail
        elif phase is not None:
            log_path, tail = phase.log_path, log_tail(phase.log_path)
        else:  # before any phase started: the demo's own fault
            log_path, tail = '-', []
        message = str(exc)
        if self.traceback is not None:
            message = f'{type(exc).__name__}: {exc}'
            tail = tail + self.traceback
        what = 'demo' if phase is None else f'[{phase.task}] {phase.label}'
        return what, message, log_path, tail

    def run(self):
        try:
            while True:
                phase = self.queue.take()  # None once the demo stops
                if phase is None:
                    break
                self.on_start(phase)
                seconds = run_phase(
                    self.queue.plans[phase.task],
                    phase,
                    env=self.env,
                    on_progress=lambda progress, phase=phase: self.on_progress(
                        phase, progress),
                    on_process=self.on_process)
                self.on_done(phase, seconds)
                self.queue.finish(phase)
        except Exception as exc:  # noqa: B902  (reported by the main thread)
            self.error = exc
            self.phase = getattr(exc, 'phase', None) or self.phase
            if not isinstance(exc, (PhaseError, ValueError, OSError)):
                self.traceback = traceback.format_exc().splitlines()
            self.queue.close()
        finally:
            if self.phase is not None:
                self.console.status(self._key(self.phase), None)


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
