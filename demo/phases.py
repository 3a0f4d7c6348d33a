# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's phases as command lines whose whole output goes to a log.

Each phase of ``tools/demo.py`` (generate the data, evaluate the untrained
model, train, test, test with ``--tta``) runs the project's own command-line
tools as child processes, exactly as a person would type them. Their output
(configs, hook tables, warnings, metric tables) goes, line by line, into
the phase's log file, which starts with the command lines; the lines of
mmengine's ``LoggerHook`` (``Iter(train) [ 50/360] ... eta: ... loss:
...``) are also handed to a callback as :class:`IterProgress`, which is how
the demo draws its progress bar. A command that fails raises
:class:`PhaseError` with the log's path and last lines.
"""
import os
import os.path as osp
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

__all__ = [
    'IterProgress', 'PhaseError', 'parse_progress', 'run_logged',
    'python_command', 'stop_process'
]

_ITER = re.compile(r'Iter\((?P<mode>train|val|test)\)\s*'
                   r'\[\s*(?P<done>\d+)/(?P<total>\d+)\]')
_ETA = re.compile(r'\beta: (?P<eta>\d+(?: days?, )?[\d:]+)')
# ``loss:`` alone: the heads' terms read ``decode.loss_ce:``, ``loss_rpn_cls:``
_LOSS = re.compile(r'(?:^|\s)loss: (?P<loss>-?(?:\d+\.?\d*(?:e[-+]?\d+)?|'
                   r'nan|inf))')


@dataclass
class IterProgress:
    """One progress line of mmengine's ``LoggerHook``.

    Args:
        mode (str): ``'train'``, ``'val'`` or ``'test'``.
        done (int): Iterations done.
        total (int): Iterations in all.
        loss (float, optional): The total loss (training). Defaults to None.
        eta (str, optional): mmengine's estimate of the time left, as it
            prints it (``'0:03:12'``). Defaults to None.
    """
    mode: str
    done: int
    total: int
    loss: Optional[float] = None
    eta: Optional[str] = None


def parse_progress(line: str) -> Optional[IterProgress]:
    """The :class:`IterProgress` in a log line, or None if it has none."""
    match = _ITER.search(line)
    if match is None:
        return None
    rest = line[match.end():]
    eta = _ETA.search(rest)
    loss = _LOSS.search(rest)
    return IterProgress(
        mode=match['mode'],
        done=int(match['done']),
        total=int(match['total']),
        loss=float(loss['loss']) if loss else None,
        eta=eta['eta'] if eta else None)


class PhaseError(RuntimeError):
    """A command of a phase exited with a non-zero status.

    Args:
        command (Sequence[str]): The command line.
        returncode (int): Its exit status (negative: killed by a signal).
        log_path (str): The phase's log file.
        tail (Sequence[str]): The log's last lines.
    """

    def __init__(self, command: Sequence[str], returncode: int, log_path: str,
                 tail: Sequence[str]):
        self.command = list(command)
        self.returncode = returncode
        self.log_path = log_path
        self.tail = list(tail)
        super().__init__(f'{self.program} exited with status {returncode}')

    @property
    def program(self) -> str:
        """What failed, for people: the script or module a Python command
        ran (``train.py``, ``demo.initial_weights``), else the
        executable."""
        args = self.command[1:]
        if args[:1] == ['-m'] and len(args) > 1:
            return args[1]
        if args and args[0].endswith('.py'):
            return osp.basename(args[0])
        return osp.basename(self.command[0]) if self.command else '?'


def python_command(*args: str) -> List[str]:
    """``[sys.executable, *args]``: a child runs this very interpreter."""
    return [sys.executable, *map(str, args)]


def stop_process(proc: subprocess.Popen) -> None:
    """Kill a command of :func:`run_logged` and every process it started.

    Each command runs in a process group of its own, so its helpers (a
    data loader's workers, say) go with it: a helper left alive would keep
    the output pipe open, and the phase would wait for it for ever. The
    group is killed even when the command itself has ended: its helpers
    may not have.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            proc.kill()


def run_logged(
        commands: Sequence[Sequence[str]],
        log_path: str,
        on_progress: Optional[Callable[[IterProgress], None]] = None,
        cwd: Optional[str] = None,
        env: Optional[dict] = None,
        tail_lines: int = 20,
        on_process: Optional[Callable[[subprocess.Popen],
                                      None]] = None) -> float:
    """Run ``commands`` one after the other, their output into ``log_path``.

    The log holds, for each command, a ``$ command`` line and then its
    stdout and stderr as they come; the first command that fails ends the
    phase.

    Args:
        commands (Sequence[Sequence[str]]): The command lines.
        log_path (str): The log file (its folder is created, the file
            replaced).
        on_progress (Callable, optional): Called with each
            :class:`IterProgress` of the output. Defaults to None.
        cwd (str, optional): Working directory of the commands. Defaults to
            None (this process's).
        env (dict, optional): Their environment. Defaults to None (this
            process's).
        tail_lines (int): Lines of the log :class:`PhaseError` carries.
            Defaults to 20.
        on_process (Callable, optional): Called with each command's
            ``Popen`` once started (to stop it from another thread:
            :func:`stop_process`, and this raises :class:`PhaseError`).
            Defaults to None.

    Returns:
        float: The seconds the commands took.

    Raises:
        PhaseError: A command exited with a non-zero status (or could not
            be started).
    """
    os.makedirs(osp.dirname(osp.abspath(log_path)), exist_ok=True)
    tail = deque(maxlen=tail_lines)
    start = time.perf_counter()
    with open(log_path, 'w', encoding='utf-8') as log:
        for command in commands:
            command = [str(arg) for arg in command]
            header = f'$ {shlex.join(command)}'
            log.write(header + '\n')
            log.flush()
            tail.append(header)
            try:
                proc = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors='replace',
                    bufsize=1,
                    start_new_session=True)
            except OSError as exc:
                log.write(f'{exc}\n')
                raise PhaseError(command, 127, log_path,
                                 [*tail, str(exc)]) from exc
            if on_process is not None:
                on_process(proc)
            try:
                for line in proc.stdout:
                    log.write(line)
                    tail.append(line.rstrip('\n'))
                    if on_progress is not None:
                        progress = parse_progress(line)
                        if progress is not None:
                            on_progress(progress)
                returncode = proc.wait()
            finally:
                if proc.poll() is None:  # interrupted: no orphans
                    stop_process(proc)
                    proc.wait()
                proc.stdout.close()
            log.flush()
            if returncode != 0:
                raise PhaseError(command, returncode, log_path, tail)
    return time.perf_counter() - start
