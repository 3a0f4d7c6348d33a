# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/slurm_train.sh and tools/slurm_test.sh with stand-ins for Slurm.

``srun`` and ``scontrol`` on ``PATH`` are small scripts written here: srun
checks and records the options the launchers give it and starts ``--ntasks``
tasks on this machine with the ``SLURM_*`` variables a real step has;
scontrol expands the node list, as mmengine's slurm launcher asks it to.
Two tasks train a tiny vHeat classifier over gloo on the CPU, then test it
with and without ``--tta``.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

import pytest

from demo import data as demo_data
from .test_train_test import _free_port, _metric
from .tiny_runs import cls_config, tool_env, write_file

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SLURM_TRAIN = osp.join(ROOT, 'tools', 'slurm_train.sh')
SLURM_TEST = osp.join(ROOT, 'tools', 'slurm_test.sh')
NODE = 'localhost'  # the one node of the stand-in cluster
TIMEOUT = 300

_SRUN = r'''
"""Stand-in srun: one node, the tasks run here."""
import json, os, re, subprocess, sys, time

args = sys.argv[1:]
options, extra = {}, []
while args and args[0].startswith('-'):
    arg = args.pop(0)
    if arg == '-p':
        options['partition'] = args.pop(0)
    elif arg.startswith('--') and '=' in arg:
        key, value = arg[2:].split('=', 1)
        if key in ('job-name', 'gres', 'ntasks', 'ntasks-per-node',
                   'cpus-per-task', 'kill-on-bad-exit'):
            options[key] = value
        else:
            extra.append(arg)
    else:
        sys.exit(f'srun: unrecognized option {arg!r}')
record = dict(options=options, extra=extra, command=args,
              pythonpath=os.environ.get('PYTHONPATH', ''))
with open(os.environ['STAND_IN_SLURM_LOG'], 'a') as f:
    f.write(json.dumps(dict(srun=record)) + '\n')
missing = {'partition', 'job-name', 'ntasks'} - options.keys()
if missing or not args:
    sys.exit(f'srun: missing {sorted(missing)} or no command')
if not re.fullmatch(r'gpu:\d+', options.get('gres', 'gpu:0')):
    sys.exit(f'srun: bad --gres {options["gres"]!r}')
if os.environ.get('STAND_IN_SRUN_DRY'):  # record only
    sys.exit(0)
ntasks = int(options['ntasks'])
if ntasks > int(options.get('ntasks-per-node', ntasks)):
    sys.exit('srun: the stand-in cluster has one node')

tasks = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
               SLURM_NTASKS=str(ntasks), SLURM_NPROCS=str(ntasks),
               SLURM_NODELIST=NODE, SLURM_JOB_NODELIST=NODE,
               SLURM_NNODES='1', SLURM_NODEID='0', SLURM_JOB_ID='4242',
               SLURM_STEP_ID='0', SLURM_JOB_NAME=options['job-name'],
               SLURM_JOB_PARTITION=options['partition'],
               SLURM_CPUS_PER_TASK=options.get('cpus-per-task', '1'),
               SLURM_TASKS_PER_NODE=str(ntasks))
    tasks.append(subprocess.Popen(args, env=env))
# --kill-on-bad-exit=1: one task failing ends the others. The exit status
# is the first failed task's, not that of one killed for it.
killed = set()
while any(t.poll() is None for t in tasks):
    if options.get('kill-on-bad-exit') == '1' and any(
            t.poll() not in (None, 0) for t in tasks):
        for rank, t in enumerate(tasks):
            if t.poll() is None:
                t.kill()
                killed.add(rank)
    time.sleep(0.2)
codes = [t.wait() for t in tasks]
failed = [c for rank, c in enumerate(codes) if c and rank not in killed]
sys.exit(failed[0] if failed else next((c for c in codes if c), 0))
'''

_SCONTROL = r'''
"""Stand-in scontrol: ``show hostname(s) NODELIST`` without ranges."""
import json, os, sys

with open(os.environ['STAND_IN_SLURM_LOG'], 'a') as f:
    f.write(json.dumps(dict(scontrol=sys.argv[1:])) + '\n')
if sys.argv[1:3] not in (['show', 'hostname'], ['show', 'hostnames']) or \
        len(sys.argv) != 4 or '[' in sys.argv[3]:
    sys.exit(f'scontrol stand-in: unsupported {sys.argv[1:]}')
print('\n'.join(sys.argv[3].split(',')))
'''


@pytest.fixture
def slurm(tmp_path):
    """PATH with srun and scontrol stand-ins; the log of their calls."""
    bin_dir = tmp_path / 'slurm_bin'
    bin_dir.mkdir()
    for name, body in (('srun', _SRUN), ('scontrol', _SCONTROL)):
        script = bin_dir / name
        script.write_text(f'#!{sys.executable}\nNODE = {NODE!r}\n' + body)
        script.chmod(0o755)
    log = tmp_path / 'slurm_calls.jsonl'
    env = tool_env(
        PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
        PYTHON=sys.executable,
        STAND_IN_SLURM_LOG=str(log),
        MASTER_PORT=_free_port())
    # mmengine takes the master address from scontrol when it is unset.
    env.pop('MASTER_ADDR', None)

    def calls(kind):
        if not log.exists():
            return []
        with open(log) as f:
            return [c[kind] for c in map(json.loads, f) if kind in c]

    return env, calls


def _launch(cmd, cwd, env, expect_rc=0):
    result = subprocess.run(
        cmd,
        cwd=str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT)
    assert result.returncode == expect_rc, \
        f'{" ".join(cmd)} -> {result.returncode}\n{result.stdout[-6000:]}'
    return result.stdout


def _srun_options(partition, job_name, tasks, per_node, cpus):
    return {
        'partition': partition,
        'job-name': job_name,
        'gres': f'gpu:{per_node}',
        'ntasks': str(tasks),
        'ntasks-per-node': str(per_node),
        'cpus-per-task': str(cpus),
        'kill-on-bad-exit': '1'
    }


def test_launchers_pass_openmmlab_options_to_srun(slurm, tmp_path):
    env, calls = slurm
    env = dict(env, STAND_IN_SRUN_DRY='1')
    # Defaults as OpenMMLab's scripts: 8 tasks, 8 GPUs a node, 5 CPUs.
    _launch([
        'bash', SLURM_TRAIN, 'part', 'job-a', 'cfg.py', 'work dir', '--amp',
        '--cfg-options', 'a=1'
    ], tmp_path, env)
    # No WORK_DIR: train.py arguments right after the config.
    _launch(['bash', SLURM_TRAIN, 'part', 'job-b', 'cfg.py', '--resume'],
            tmp_path,
            dict(
                env,
                GPUS='16',
                CPUS_PER_TASK='2',
                SRUN_ARGS='--time=10 --quotatype=auto'))
    _launch([
        'bash', SLURM_TEST, 'part', 'job-c', 'cfg.py', 'ck.pth', '--tta',
        '--out', 'r.pkl'
    ], tmp_path, dict(env, GPUS='2'))
    train, no_work_dir, test = calls('srun')

    assert train['options'] == _srun_options('part', 'job-a', 8, 8, 5)
    assert train['extra'] == []
    train_py = osp.join(ROOT, 'tools', 'train.py')
    assert train['command'] == [
        sys.executable, '-u', train_py, '--launcher=slurm', 'cfg.py',
        '--work-dir=work dir', '--amp', '--cfg-options', 'a=1'
    ]
    assert train['pythonpath'].split(os.pathsep)[0] == \
        osp.join(ROOT, 'tools', '..')

    assert no_work_dir['options'] == _srun_options('part', 'job-b', 16, 8, 2)
    assert no_work_dir['extra'] == ['--time=10', '--quotatype=auto']
    assert no_work_dir['command'][3:] == [
        '--launcher=slurm', 'cfg.py', '--resume'
    ]

    assert test['options'] == _srun_options('part', 'job-c', 2, 8, 5)
    assert test['command'][2:] == [
        osp.join(ROOT, 'tools', 'test.py'), '--launcher=slurm', 'cfg.py',
        'ck.pth', '--tta', '--out', 'r.pkl'
    ]


def test_launchers_need_their_arguments(slurm, tmp_path):
    env, calls = slurm
    out = _launch(['bash', SLURM_TRAIN, 'part', 'job'],
                  tmp_path,
                  env,
                  expect_rc=1)
    assert 'usage: bash' in out and 'PARTITION JOB_NAME CONFIG' in out
    out = _launch(['bash', SLURM_TEST, 'part', 'job', 'cfg.py'],
                  tmp_path,
                  env,
                  expect_rc=1)
    assert 'CONFIG CHECKPOINT' in out
    assert calls('srun') == []


@pytest.mark.slow
def test_slurm_train_then_test_two_cpu_tasks(slurm, tmp_path):
    env, calls = slurm
    data = str(tmp_path / 'data')
    demo_data.make_imagenet_like(
        osp.join(data, 'imagenet'), 8, 4, image_size=(64, 64))
    config = write_file(
        tmp_path / 'vheat_cls_slurm.py',
        cls_config(data, max_iters=2, val_interval=2, ckpt_interval=2))
    work_dir = str(tmp_path / 'work_dir')
    train_env = dict(env, GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1')
    # PY_ARGS reach train.py: a checkpoint after every iteration.
    out = _launch([
        'bash', SLURM_TRAIN, 'cpu', 'vheat-train', config, work_dir,
        '--cfg-options', 'default_hooks.checkpoint.interval=1'
    ], tmp_path, train_env)
    srun = calls('srun')[-1]
    assert srun['options'] == _srun_options('cpu', 'vheat-train', 2, 2, 1)
    # mmengine asked scontrol for the master's address.
    assert calls('scontrol') == [['show', 'hostname', NODE]] * 2
    assert 'replaced by gloo' in out
    assert 'Distributed launcher: slurm' in out, out[-3000:]
    assert 'Distributed training: True' in out
    assert 'GPU number: 2' in out  # mmengine's name for the world size
    # 8 images, 2 a batch on each of the 2 tasks: 2 iterations an epoch.
    assert re.search(r'Iter\(train\) \[\s*2/2\]', out)
    _metric('mmpretrain', out)
    for it in (1, 2):
        assert osp.isfile(osp.join(work_dir, f'iter_{it}.pth')), it
    checkpoint = osp.join(work_dir, 'iter_2.pth')

    test_env = dict(train_env, MASTER_PORT=_free_port())
    tta_env = dict(train_env, MASTER_PORT=_free_port())
    test = ['bash', SLURM_TEST, 'cpu', 'vheat-test', config, checkpoint]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=str(tmp_path),
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True) for cmd, e in
        ((test + ['--work-dir', str(tmp_path / 't')], test_env),
         (test +
          ['--tta', '--work-dir', str(tmp_path / 'tta')], tta_env))
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-6000:]
        _metric('mmpretrain', out)
        # 4 images, 2 a batch: one batch for each task.
        assert re.search(r'Iter\(test\) \[\s*1/1\]', out), out[-3000:]
    assert 'TestTimeAug' not in outs[0] and 'TestTimeAug' in outs[1]
    assert sorted('--tta' in c['command'] for c in calls('srun')[-2:]) == \
        [False, True]


def test_stand_in_srun_reports_the_task_that_failed(slurm, tmp_path):
    """With --kill-on-bad-exit=1 a failing task ends the others, and the
    exit status is the failed task's (3), not a killed one's."""
    env, _ = slurm
    task = ('import os, sys, time\n'
            'if os.environ["SLURM_PROCID"] == "1":\n'
            '    sys.exit(3)\n'
            'time.sleep(60)\n')
    start = time.monotonic()
    _launch([
        'srun', '-p', 'cpu', '--job-name=fail', '--ntasks=2',
        '--kill-on-bad-exit=1', sys.executable, '-c', task
    ],
            tmp_path,
            env,
            expect_rc=3)
    assert time.monotonic() - start < 30
