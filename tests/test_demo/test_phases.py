# Copyright (c) mmvheat contributors. All rights reserved.
"""Running a phase's commands into a log, and reading mmengine's progress."""
import shlex
import sys
import threading
import time

import pytest

from demo.phases import (IterProgress, PhaseError, parse_progress, run_logged,
                         stop_process)

# Lines as mmengine 0.10's LoggerHook prints them (copied from a demo log).
TRAIN_LINE = (
    '12/01 18:01:11 - mmengine - INFO - Iter(train) [ 60/250]  base_lr: '
    '8.6758e-04 lr: 8.6758e-04  eta: 0:05:48  time: 2.1680  data_time: '
    '0.0187  loss: 0.7490  decode.loss_ce: 0.4962  decode.acc_seg: 80.1173  '
    'aux.loss_ce: 0.2528  aux.acc_seg: 79.3640')
DET_TRAIN_LINE = (
    '12/01 17:52:02 - mmengine - INFO - Iter(train) [360/360]  base_lr: '
    '1.0000e-05 lr: 1.0000e-05  eta: 1 day, 2:00:01  time: 1.0526  '
    'data_time: 0.0061  loss: 1.2e-01  loss_rpn_cls: 0.0112  loss_rpn_bbox: '
    '0.0183  loss_cls: 0.0714  acc: 97.0703  loss_bbox: 0.0731  loss_mask: '
    '0.1371')
TEST_LINE = ('12/01 18:00:48 - mmengine - INFO - Iter(test) [40/50]    eta: '
             '0:00:01  time: 0.1186  data_time: 0.0044')


def test_parse_progress():
    assert parse_progress(TRAIN_LINE) == IterProgress(
        'train', 60, 250, loss=0.7490, eta='0:05:48')
    # the total loss, not a head's loss_* term; days in the ETA
    assert parse_progress(DET_TRAIN_LINE) == IterProgress(
        'train', 360, 360, loss=0.12, eta='1 day, 2:00:01')
    assert parse_progress(TEST_LINE) == IterProgress(
        'test', 40, 50, loss=None, eta='0:00:01')
    assert parse_progress('Iter(train) [ 3/9]') == IterProgress('train', 3, 9)
    for line in ('12/01 - mmengine - INFO - Checkpoints will be saved',
                 'loss: 0.5', 'Iter(train) [a/b]', ''):
        assert parse_progress(line) is None


def _python(code):
    return [sys.executable, '-c', code]


def test_run_logged_writes_everything_and_reports_progress(tmp_path):
    log = tmp_path / 'sub' / 'phase.log'
    seen = []
    first = _python(f'print({TRAIN_LINE!r}); import sys; '
                    'print("to stderr", file=sys.stderr)')
    second = _python(f'print({TEST_LINE!r})')
    seconds = run_logged([first, second], str(log), on_progress=seen.append)
    assert seconds > 0
    lines = log.read_text().splitlines()
    # each command's line, then its stdout and stderr
    assert lines == [
        '$ ' + shlex.join(first), TRAIN_LINE, 'to stderr',
        '$ ' + shlex.join(second), TEST_LINE
    ]
    assert seen == [parse_progress(TRAIN_LINE), parse_progress(TEST_LINE)]


def test_run_logged_stops_at_the_failing_command(tmp_path):
    log = str(tmp_path / 'phase.log')
    marker = tmp_path / 'ran'
    failing = _python('import sys\nfor i in range(30): print("line", i)\n'
                      'sys.exit(3)')
    never = _python(f'open({str(marker)!r}, "w").close()')
    with pytest.raises(PhaseError) as info:
        run_logged([_python('print("ok")'), failing, never], log, tail_lines=5)
    error = info.value
    assert error.returncode == 3 and error.log_path == log
    assert error.command == failing
    assert error.tail == [f'line {i}' for i in range(25, 30)]
    assert 'exited with status 3' in str(error)
    assert not marker.exists()
    text = open(log).read()
    assert 'ok\n' in text and text.rstrip().endswith('line 29')


def test_run_logged_names_what_failed(tmp_path):
    with pytest.raises(PhaseError) as info:
        run_logged([[sys.executable, '-m', 'no_such_module_here']],
                   str(tmp_path / 'a.log'))
    assert info.value.program == 'no_such_module_here'
    assert 'No module named' in '\n'.join(info.value.tail)
    with pytest.raises(PhaseError) as info:
        run_logged([['/no/such/program']], str(tmp_path / 'b.log'))
    assert info.value.returncode == 127 and info.value.program == 'program'


def test_run_logged_process_can_be_stopped(tmp_path):
    """``on_process`` hands out the child: killing it ends the phase."""
    started = threading.Event()
    procs = []

    def on_process(proc):
        procs.append(proc)
        started.set()

    def kill_when_started():
        started.wait(30)
        stop_process(procs[0])

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    with pytest.raises(PhaseError) as info:
        run_logged([
            _python('import time; print("up", flush=True); '
                    'time.sleep(60)')
        ],
                   str(tmp_path / 'phase.log'),
                   on_process=on_process)
    killer.join()
    assert info.value.returncode < 0  # killed by a signal
    assert procs[0].poll() is not None


@pytest.mark.parametrize('command_end', ['time.sleep(60)', 'sys.exit(1)'])
def test_stopping_a_phase_stops_what_its_command_started(
        command_end, tmp_path):
    """A command whose helper process holds the output pipe (as a data
    loader's workers do): stopping the command stops the helper too, and
    the phase ends instead of waiting for the pipe to close; also when the
    command itself has already ended."""
    started = threading.Event()
    procs = []

    def on_process(proc):
        procs.append(proc)
        started.set()

    def stop_when_started():
        started.wait(30)
        time.sleep(1)
        stop_process(procs[0])

    command = ('import subprocess, sys, time; '
               'subprocess.Popen([sys.executable, "-c", '
               '"import time; time.sleep(60)"]); '
               f'print("up", flush=True); {command_end}')
    killer = threading.Thread(target=stop_when_started)
    killer.start()
    start = time.perf_counter()
    with pytest.raises(PhaseError):
        run_logged([_python(command)],
                   str(tmp_path / 'phase.log'),
                   on_process=on_process)
    killer.join()
    assert time.perf_counter() - start < 30
