# Copyright (c) mmvheat contributors. All rights reserved.
"""Crafted and broken checkpoints, and careless command lines, through the
tools a user runs and the host libraries' own.

Every case is a command line run in a child process, as a person would run
it, on a file built here from the session's trained classifier
(:mod:`crafted`): what must hold is what the person would check. Code named
by a file never runs without ``--trust-checkpoint`` (a marker file would
appear), an input is never overwritten (its bytes are compared), a bad
input ends in one ``error:`` line, exit status 1 (2 for an option that
cannot work), and a resumed run ends where an uninterrupted one does.
"""
import hashlib
import os
import os.path as osp
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import crafted
import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer

import mmvheat  # noqa: F401  (the allowlist, before torch.load)
from . import test_slurm
from .tiny_runs import ROOT, TEST, TRAIN, tool_env

TOOLS = osp.join(ROOT, 'tools')
INFERENCE = osp.join(TOOLS, 'inference.py')
EXPORT = osp.join(TOOLS, 'deployment', 'export_onnx.py')
CONVERTER = osp.join(TOOLS, 'model_converters', 'vheat_to_mmvheat.py')
INTERPOLATE = osp.join(TOOLS, 'interpolate4downstream.py')
DIST_TRAIN = osp.join(TOOLS, 'dist_train.sh')
TIMEOUT = 300
# What mmengine's logs and the tools print to stdout is theirs; an error
# is one line on stderr.
ONE_LINE = 'one line'


def _host_tool(library: str, name: str) -> str:
    """A library's own tool, as its package ships it in ``.mim/tools``."""
    import importlib
    package = importlib.import_module(library)
    return osp.join(osp.dirname(package.__file__), '.mim', 'tools', name)


class Outcome:
    """A finished command line: status, output, seconds and peak memory."""

    def __init__(self, argv, returncode, stdout, stderr, seconds, max_rss):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds
        self.max_rss = max_rss  # bytes

    def __repr__(self):
        return (f'{" ".join(map(str, self.argv))} -> {self.returncode} in '
                f'{self.seconds:.1f} s\nstdout: {self.stdout[-3000:]}\n'
                f'stderr: {self.stderr[-3000:]}')


def _run(argv, cwd, env, limits=(), timeout=TIMEOUT):
    """Run ``argv``; its own resource usage comes from ``wait4``."""
    out_path, err_path = (
        osp.join(cwd, f'.{os.getpid()}-{id(argv)}.{n}')
        for n in ('out', 'err'))

    def apply_limits():
        for limit, value in limits:
            resource.setrlimit(limit, (value, value))
        # A write past RLIMIT_FSIZE fails with EFBIG instead of killing.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    start = time.monotonic()
    with open(out_path, 'w') as out, open(err_path, 'w') as err:
        proc = subprocess.Popen([str(a) for a in argv],
                                cwd=cwd,
                                env=env,
                                stdout=out,
                                stderr=err,
                                preexec_fn=apply_limits)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    with open(out_path) as out, open(err_path) as err:
        stdout, stderr = out.read(), err.read()
    os.remove(out_path)
    os.remove(err_path)
    return Outcome(argv, proc.returncode, stdout, stderr, seconds,
                   usage.ru_maxrss * 1024)


def _run_all(commands, cwd, parallel=2):
    """``{name: (argv, env changes, rlimits, timeout)}`` -> ``{name:
    Outcome}``, two at a time (the machine has two cores)."""
    with ThreadPoolExecutor(parallel) as pool:
        futures = {
            name:
            pool.submit(_run, argv, str(cwd),
                        tool_env(OMP_NUM_THREADS='1', **env), limits, timeout)
            for name, (argv, env, limits, timeout) in commands.items()
        }
        return {name: future.result() for name, future in futures.items()}


def _sha256(path) -> str:
    with open(path, 'rb') as file:
        return hashlib.sha256(file.read()).hexdigest()


def check_error(outcome: Outcome, status: int, *words: str) -> None:
    """One ``error:`` line on stderr, no traceback, the exit status, and
    each of ``words`` in the line."""
    assert outcome.returncode == status, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), outcome
    for word in words:
        assert word in lines[0], (word, outcome)
    assert 'Traceback' not in outcome.stdout, outcome


# -- the files ----------------------------------------------------------------
@pytest.fixture(scope='module')
def session_run(trained):
    """The session's trained classifier: config, work dir, checkpoints."""
    config, work_dir, _ = trained('mmpretrain')
    return dict(
        config=config,
        work_dir=work_dir,
        **{f'ckpt{i}': osp.join(work_dir, f'iter_{i}.pth')
           for i in (2, 4, 6)})


@pytest.fixture(scope='module')
def checkpoint(session_run):
    """Iteration 4's checkpoint as loaded data, to craft from."""
    return torch.load(session_run['ckpt4'], map_location='cpu')


# A weight of the classifier's backbone, and its name in a checkpoint.
WEIGHT = 'backbone.stages.0.blocks.0.mlp.fc1.weight'


def _malformed(checkpoint):
    """Checkpoints whose weights are not weights, by name."""
    weights = checkpoint['state_dict']
    int_key = crafted.with_changes(checkpoint)
    int_key['state_dict'][3] = torch.zeros(1)
    return {
        'weight-dict': crafted.with_weight(checkpoint, WEIGHT, {'a': 1}),
        'weight-list': crafted.with_weight(checkpoint, WEIGHT, [1., 2.]),
        'weight-str': crafted.with_weight(checkpoint, WEIGHT, 'abc'),
        'int-key': int_key,
        'list-checkpoint': [weights[WEIGHT]],
        'tensor-checkpoint': weights[WEIGHT],
    }


MALFORMED_WORDS = {
    'weight-dict': f'weight {WEIGHT} is a dict, not a tensor',
    'weight-list': f'weight {WEIGHT} is a list, not a tensor',
    'weight-str': f'weight {WEIGHT} is a str, not a tensor',
    'int-key': 'a weight named by a int (3), not a string',
    'list-checkpoint': 'holds no state dict (a list)',
    'tensor-checkpoint': 'holds no state dict (a Tensor)',
}


@pytest.fixture(scope='module')
def files(checkpoint, session_run, tmp_path_factory):
    """Every crafted file, by name (a path), and the markers that code
    from a file would create."""
    tmp = tmp_path_factory.mktemp('crafted')
    paths = dict(marker_dir=str(tmp / 'markers'))
    os.makedirs(paths['marker_dir'])

    def marker(name):
        return osp.join(paths['marker_dir'], name)

    def save(name, obj):
        paths[name] = crafted.save(tmp / f'{name}.pth', obj)

    # Code: a config text that resuming runs; a pickle that runs a command.
    save(
        'config-code',
        crafted.with_meta(
            checkpoint, config=crafted.config_running(marker('config'))))
    save('reduce-code',
         crafted.with_meta(checkpoint, hook=crafted.touch(marker('reduce'))))
    # Resume state.
    save('iter-huge', crafted.with_meta(checkpoint, iter=10**30))
    save('iter-negative', crafted.with_meta(checkpoint, iter=-3))
    save('no-meta', crafted.with_changes(checkpoint, meta=None))
    save('no-message-hub', crafted.with_changes(checkpoint, message_hub=None))
    save('seed-str', crafted.with_meta(checkpoint, seed='zero'))
    save('iter-str', crafted.with_meta(checkpoint, iter='4'))
    save(
        'bad-optimizer',
        crafted.with_changes(
            checkpoint, optimizer=dict(state={}, param_groups=[{}])))
    save('bad-scheduler',
         crafted.with_changes(checkpoint, param_schedulers=['warm-up']))
    hub = crafted.with_changes(checkpoint)
    hub['message_hub']['log_scalars']['train/loss'] = crafted.NewObj(
        HistoryBuffer)
    save('unbuilt-buffer', hub)
    # Weights that are not weights.
    for name, obj in _malformed(checkpoint).items():
        save(name, obj)
    nan = checkpoint['state_dict'][WEIGHT].clone()
    nan[1, 2] = float('nan')
    save('nan', crafted.with_weight(checkpoint, WEIGHT, nan))
    save(
        'int64',
        crafted.with_weight(checkpoint, WEIGHT,
                            checkpoint['state_dict'][WEIGHT].long()))
    save(
        'complex',
        crafted.with_weight(checkpoint, WEIGHT,
                            checkpoint['state_dict'][WEIGHT].cfloat()))
    save(
        'hooked-parameter',
        crafted.with_weight(
            checkpoint, WEIGHT,
            crafted.Reduce(torch._utils._rebuild_parameter,
                           checkpoint['state_dict'][WEIGHT], True,
                           OrderedDict([(0, torch.device('cpu'))]))))
    save(
        'shadowed-get',
        crafted.with_changes(
            checkpoint,
            state_dict=crafted.ordered_dict(checkpoint['state_dict'].items(),
                                            dict(get=torch.device('cpu')))))
    # Sizes a file asks for.
    save(
        'numpy-huge-empty',
        crafted.with_meta(
            checkpoint, stats=crafted.numpy_array((2**40, 2**40, 0), b'')))
    paths['bytearray-1tb'] = crafted.bytearray_bomb(tmp / 'bytearray.pth',
                                                    2**40)
    paths['deflate-bomb'] = crafted.deflate_bomb(tmp / 'deflate.pth',
                                                 512 << 20)
    # Published layout with numpy values in its meta, for the converters.
    published = dict(
        state_dict=checkpoint['state_dict'],
        meta=dict(stats=np.arange(3.), eta=np.float64(2.5)))
    save('with-numpy-meta', published)
    zero = crafted.with_changes(checkpoint)
    zero['state_dict']['backbone.stages.0.freq_embed'] = torch.zeros(16, 16, 0)
    save('zero-channels', zero)
    return paths


# -- every command line, run once ---------------------------------------------
def _selected(request, commands) -> dict:
    """The commands the selected tests of this module ask for (all of them
    in a full run; a few under ``-k``): a test names its command by its
    parameters, or in :data:`COMMANDS_OF`."""
    wanted = set()
    for item in request.session.items:
        if item.module is not request.module:
            continue
        wanted |= COMMANDS_OF.get(item.originalname, set())
        params = getattr(item, 'callspec', None)
        for value in (params.params.values() if params else ()):
            if isinstance(value, str):
                wanted |= {
                    value, f'resume-{value}', f'test-{value}',
                    f'test-out-{value}'
                }
    return {name: commands[name] for name in commands if name in wanted}


#: The commands of tests that do not name them by a parameter.
COMMANDS_OF = dict(
    test_host_test_tool_refuses_too={'host-test-reduce-env'},
    test_nonfinite_weights_load_when_asked={'test-nan-allowed'},
    test_pretrained_prefix_that_matches_nothing={'pretrained-prefix'},
    test_sizes_a_file_asks_for_are_refused_before_allocating={
        'test-weight-dict'
    },
    test_metrics_suffix_checked_before_testing={'test-out-metrics-txt'},
    test_interpolate_leaves_no_stand_in_behind={'interpolate-numpy-meta'},
    test_inference_out_dir_is_not_an_input={'inference-input-folder'},
)


@pytest.fixture(scope='module')
def runs(request, files, session_run, tmp_path_factory):
    """Every command line of this module that needs only the files and
    that a selected test asks for, run two at a time: ``{name: Outcome}``
    and the folders they used."""
    tmp = tmp_path_factory.mktemp('runs')
    config = session_run['config']
    # A user's config for the host libraries' tools, as the README shows.
    (tmp / 'import_mmvheat.py').write_text("__import__('mmvheat')\n")
    host_config = str(tmp / 'host_config.py')
    with open(host_config, 'w') as file:
        file.write(f"_base_ = ['./import_mmvheat.py', {config!r}]\n")
    no_weights_only = dict(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    commands = {}

    def add(name, *argv, env=None, limits=(), timeout=TIMEOUT):
        commands[name] = (argv, env or {}, limits, timeout)

    def work_dir(name):
        return str(tmp / name)

    def train(name, *argv, env=None, timeout=TIMEOUT):
        add(name,
            sys.executable,
            TRAIN,
            config,
            '--work-dir',
            work_dir(name),
            *argv,
            env=env,
            timeout=timeout)

    def test(name, checkpoint, *argv, env=None):
        add(name,
            sys.executable,
            TEST,
            config,
            checkpoint,
            '--work-dir',
            work_dir(name),
            *argv,
            env=env)

    # Code from a checkpoint.
    # Resumed at the schedule's end: the resume itself is what is tested.
    at_end = ('--cfg-options', 'train_cfg.max_iters=4')
    train('resume-config-code', '--resume', files['config-code'], *at_end)
    auto = tmp / 'auto-resume-config-code'
    os.makedirs(auto)
    shutil.copy(files['config-code'], auto / 'iter_4.pth')
    (auto / 'last_checkpoint').write_text(str(auto / 'iter_4.pth'))
    train('auto-resume-config-code', '--resume', *at_end)
    train(
        'resume-reduce-env',
        '--resume',
        files['reduce-code'],
        env=no_weights_only)
    test('test-reduce-env', files['reduce-code'], env=no_weights_only)
    add('host-train-config-code', sys.executable,
        _host_tool('mmpretrain', 'train.py'), host_config, '--work-dir',
        work_dir('host-train-config-code'), '--resume', files['config-code'],
        *at_end)
    add('host-test-reduce-env',
        sys.executable,
        _host_tool('mmpretrain', 'test.py'),
        host_config,
        files['reduce-code'],
        '--work-dir',
        work_dir('host-test-reduce-env'),
        env=no_weights_only)
    add('dist-train-config-code',
        'bash',
        DIST_TRAIN,
        config,
        '1',
        '--work-dir',
        work_dir('dist-train-config-code'),
        '--resume',
        files['config-code'],
        *at_end,
        env=dict(PORT=str(_free_port()), PYTHON=sys.executable))
    # Resume state.
    for name in ('iter-huge', 'iter-negative', 'no-meta', 'no-message-hub',
                 'seed-str', 'iter-str', 'bad-optimizer', 'bad-scheduler',
                 'unbuilt-buffer', 'weight-dict', 'tensor-checkpoint'):
        # A run the guard misses would train (or hang, for iter-huge):
        # it is stopped long before the time a run may take.
        train(f'resume-{name}', '--resume', files[name], timeout=120)
    # Weights that are not weights, through every door.
    for name in MALFORMED_WORDS:
        test(f'test-{name}', files[name])
    for name in ('nan', 'int64', 'complex', 'hooked-parameter', 'shadowed-get',
                 'numpy-huge-empty', 'bytearray-1tb', 'deflate-bomb'):
        test(f'test-{name}', files[name])
    test('test-nan-allowed', files['nan'], '--allow-nonfinite')
    images = str(tmp / 'images')
    os.makedirs(images)
    _write_image(osp.join(images, 'a.png'))
    for name in ('weight-dict', 'list-checkpoint', 'nan'):
        add(f'inference-{name}', sys.executable, INFERENCE, config,
            files[name], images, '--out-dir', work_dir(f'inference-{name}'))
    for name in ('weight-dict', 'int-key', 'nan'):
        add(f'export-{name}', sys.executable, EXPORT, config, files[name],
            '--shape', 64, 64, '--out', str(tmp / f'export-{name}.onnx'))
    for name in ('weight-list', 'int-key', 'nan'):
        train(f'load-from-{name}', '--cfg-options', f'load_from={files[name]}')
    for name, checkpoint, prefix in (('weight-dict', files['weight-dict'],
                                      'backbone.'), ('nan', files['nan'],
                                                     'backbone.'),
                                     ('prefix', session_run['ckpt4'],
                                      'nothing.')):
        pretrained = str(tmp / f'pretrained-{name}.py')
        with open(pretrained, 'w') as file:
            file.write(f"""_base_ = [{config!r}]
model = dict(backbone=dict(init_cfg=dict(
    _delete_=True, type='Pretrained', checkpoint={checkpoint!r},
    prefix={prefix!r})))
""")
        add(f'pretrained-{name}', sys.executable, TRAIN, pretrained,
            '--work-dir', work_dir(f'pretrained-{name}'))
    # Option values that cannot work.
    add('interpolate-tg-size', sys.executable,
        INTERPOLATE, '--pt_pth', session_run['ckpt4'], '--tg_pth',
        str(tmp / 'big.pth'), '--pt_size', 64, '--tg_size', 65536)
    add('export-shape', sys.executable, EXPORT, config, session_run['ckpt4'],
        '--shape', 65536, 65536, '--out', str(tmp / 'big.onnx'))
    add('converter-zero-channels', sys.executable,
        INTERPOLATE, '--pt_pth', files['zero-channels'], '--tg_pth',
        str(tmp / 'zero.pth'), '--pt_size', 64, '--tg_size', 128)
    add('inference-cuda', sys.executable,
        INFERENCE, config, session_run['ckpt4'], images, '--out-dir',
        work_dir('cuda'), '--device', 'cuda')
    add('inference-bogus-device', sys.executable,
        INFERENCE, config, session_run['ckpt4'], images, '--out-dir',
        work_dir('bogus'), '--device', 'bogus')
    for name, option in (('batch-size', 'train_dataloader.batch_size=-1'),
                         ('lr', 'optim_wrapper.optimizer.lr=abc'),
                         ('max-iters', 'train_cfg.max_iters=-5'),
                         ('persistent-workers',
                          'train_dataloader.persistent_workers=True')):
        train(f'option-{name}', '--cfg-options', option)
    test('test-out-metrics-txt', session_run['ckpt4'], '--out',
         str(tmp / 'm.txt'), '--out-item', 'metrics')
    add('interpolate-efbig',
        sys.executable,
        INTERPOLATE,
        '--pt_pth',
        session_run['ckpt4'],
        '--tg_pth',
        str(tmp / 'efbig.pth'),
        '--pt_size',
        64,
        '--tg_size',
        128,
        limits=[(resource.RLIMIT_FSIZE, 1 << 16)])
    add('interpolate-numpy-meta', sys.executable, INTERPOLATE,
        '--pt_pth', files['with-numpy-meta'], '--tg_pth',
        str(tmp / 'numpy-meta.pth'), '--pt_size', 64, '--tg_size', 128)
    outcomes = _run_all(_selected(request, commands), tmp)
    return dict(outcomes=outcomes, tmp=str(tmp))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _write_image(path):
    import cv2
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    cv2.imwrite(path, image)


# -- 1, 2: no code from a checkpoint ------------------------------------------
@pytest.mark.parametrize('name', [
    'resume-config-code', 'auto-resume-config-code', 'host-train-config-code',
    'dist-train-config-code'
])
def test_resumed_config_text_never_runs(name, runs, files):
    outcome = runs['outcomes'][name]
    assert outcome.returncode == 0, outcome
    assert os.listdir(files['marker_dir']) == [], outcome
    log = outcome.stdout + outcome.stderr
    assert "meta['config'] is Python that resuming would run" in log
    assert 'kept gpu_ids = [0]' in log
    # It resumed after iteration 4 and trained to the end.
    assert 'resumed epoch: 0, iter: 4' in log, outcome


@pytest.mark.parametrize('name', ['resume-reduce-env', 'test-reduce-env'])
def test_weights_only_holds_whatever_torch_is_told(name, runs, files):
    outcome = runs['outcomes'][name]
    check_error(outcome, 1, files['reduce-code'], 'refused global', 'system',
                '--trust-checkpoint')
    assert os.listdir(files['marker_dir']) == []


def test_host_test_tool_refuses_too(runs, files):
    outcome = runs['outcomes']['host-test-reduce-env']
    assert outcome.returncode != 0, outcome
    assert 'refused global' in outcome.stderr, outcome
    assert os.listdir(files['marker_dir']) == []


# -- 4: a resume that would hang, or train past the end -----------------------
@pytest.mark.parametrize('name,words', [
    ('iter-huge', "meta['iter'] is " + str(10**30) +
     ', past the end of the schedule (max_iters = 6)'),
    ('iter-negative', "meta['iter'] is -3, not an integer of at least 0"),
    ('iter-str', "meta['iter'] is '4', not an integer of at least 0"),
    ('seed-str', "meta['seed'] is 'zero', not an integer"),
    ('no-meta', 'it holds no meta'),
    ('no-message-hub', 'its message_hub is not the state mmengine saves'),
    ('bad-optimizer', 'cannot resume from it: '),
    ('bad-scheduler', 'cannot resume from it: '),
    ('unbuilt-buffer', 'refused a HistoryBuffer without its state'),
    ('weight-dict', MALFORMED_WORDS['weight-dict']),
    ('tensor-checkpoint', MALFORMED_WORDS['tensor-checkpoint']),
])
def test_resume_refuses_a_state_it_cannot_resume(name, words, runs, files):
    outcome = runs['outcomes'][f'resume-{name}']
    check_error(outcome, 1, files[name], words)
    # Refused before the data loader was asked for a single batch.
    assert outcome.seconds < 60
    assert 'Iter(train)' not in outcome.stdout


# -- 6, 7: weights that are not weights, through every door -------------------
@pytest.mark.parametrize('name', list(MALFORMED_WORDS))
def test_malformed_weights_through_test(name, runs, files):
    check_error(runs['outcomes'][f'test-{name}'], 1, files[name],
                MALFORMED_WORDS[name])


NONFINITE = '1 NaN or Inf value in its weights, the first in ' + WEIGHT


@pytest.mark.parametrize(
    'name,file,words',
    [('inference-weight-dict', 'weight-dict', MALFORMED_WORDS['weight-dict']),
     ('inference-list-checkpoint', 'list-checkpoint',
      MALFORMED_WORDS['list-checkpoint']), ('inference-nan', 'nan', NONFINITE),
     ('export-weight-dict', 'weight-dict', MALFORMED_WORDS['weight-dict']),
     ('export-int-key', 'int-key', MALFORMED_WORDS['int-key']),
     ('export-nan', 'nan', NONFINITE),
     ('load-from-weight-list', 'weight-list', MALFORMED_WORDS['weight-list']),
     ('load-from-int-key', 'int-key', MALFORMED_WORDS['int-key']),
     ('load-from-nan', 'nan', NONFINITE),
     ('pretrained-weight-dict', 'weight-dict',
      MALFORMED_WORDS['weight-dict'].replace('backbone.', '')),
     ('pretrained-nan', 'nan', NONFINITE.replace('backbone.', '')),
     ('test-nan', 'nan', NONFINITE),
     ('test-int64', 'int64',
      f'weight {WEIGHT} is torch.int64 where the model holds torch.float32'),
     ('test-complex', 'complex',
      f'weight {WEIGHT} is torch.complex64 where the model holds '
      'torch.float32'),
     ('test-hooked-parameter', 'hooked-parameter',
      'refused a tensor that carries backward hooks'),
     ('test-shadowed-get', 'shadowed-get',
      "refused an OrderedDict with the attributes ['get']"),
     ('test-numpy-huge-empty', 'numpy-huge-empty',
      'larger than numpy can index')])
def test_bad_weights_through_every_door(name, file, words, runs, files):
    check_error(runs['outcomes'][name], 1, files[file], words)


def test_nonfinite_weights_load_when_asked(runs):
    outcome = runs['outcomes']['test-nan-allowed']
    assert outcome.returncode == 0, outcome
    assert 'accuracy/top1' in outcome.stdout


def test_pretrained_prefix_that_matches_nothing(runs, session_run):
    check_error(runs['outcomes']['pretrained-prefix'], 1, session_run['ckpt4'],
                "holds no weights under the prefix 'nothing.'", "'backbone.'")


# -- 6: sizes a file asks for -------------------------------------------------
@pytest.mark.parametrize('name,words', [
    ('bytearray-1tb', 'refused global builtins.bytearray'),
    ('deflate-bomb', 'declare 536,87'),
])
def test_sizes_a_file_asks_for_are_refused_before_allocating(
        name, words, runs, files):
    outcome = runs['outcomes'][f'test-{name}']
    check_error(outcome, 1, files[name], words)
    # No more memory than a run that loads the real checkpoint and stops
    # at its weights, give or take a quarter of what the file asks for.
    baseline = runs['outcomes']['test-weight-dict'].max_rss
    assert outcome.max_rss < baseline + (128 << 20), (outcome.max_rss,
                                                      baseline)


# -- 6: option values that cannot work ----------------------------------------
@pytest.mark.parametrize('name,status,words', [
    ('interpolate-tg-size', 2, '--tg_size must be at most 8192, got 65536'),
    ('export-shape', 2, 'must be at most 8192, got 65536'),
    ('converter-zero-channels', 1,
     'backbone.stages.0.freq_embed has shape (16, 16, 0)'),
    ('inference-cuda', 1, '--device cuda: no CUDA device here'),
    ('inference-bogus-device', 2, "--device 'bogus': not a device"),
    ('option-batch-size', 1,
     'train_dataloader.batch_size must be a positive integer, got -1'),
    ('option-lr', 1,
     "optim_wrapper.optimizer.lr must be a number of at least 0, got 'abc'"),
    ('option-max-iters', 1,
     'train_cfg.max_iters must be an integer of at least 1, got -5'),
    ('option-persistent-workers', 1,
     'train_dataloader.persistent_workers=True needs num_workers > 0'),
    ('test-out-metrics-txt', 2, 'metrics are written as'),
    ('interpolate-efbig', 1, 'File too large'),
])
def test_option_values_that_cannot_work(name, status, words, runs):
    outcome = runs['outcomes'][name]
    if name.startswith(('export', 'interpolate-tg', 'inference-bogus')):
        assert outcome.returncode == status, outcome
        assert words in outcome.stderr, outcome
        assert 'Traceback' not in outcome.stderr
    else:
        check_error(outcome, status, words)


@pytest.mark.parametrize('name,out_dir', [('inference-cuda', 'cuda'),
                                          ('inference-bogus-device', 'bogus')])
def test_device_checked_before_any_work(name, out_dir, runs):
    assert runs['outcomes'][name].returncode != 0
    assert not osp.exists(osp.join(runs['tmp'], out_dir))


def test_metrics_suffix_checked_before_testing(runs):
    outcome = runs['outcomes']['test-out-metrics-txt']
    assert not osp.exists(osp.join(runs['tmp'], 'test-out-metrics-txt'))
    assert outcome.stdout == ''


def test_interpolate_leaves_no_stand_in_behind(runs):
    outcome = runs['outcomes']['interpolate-numpy-meta']
    assert outcome.returncode == 0, outcome
    from mmvheat.utils.checkpoint_loading import load_checkpoint_file
    written = load_checkpoint_file(osp.join(runs['tmp'], 'numpy-meta.pth'))
    stats = written['meta']['stats']
    assert type(stats) is np.ndarray
    np.testing.assert_array_equal(stats, [0., 1., 2.])
    assert type(written['meta']['eta']) is np.float64


# -- 3: outputs that would destroy an input or a device -----------------------
@pytest.fixture(scope='module')
def output_runs(request, session_run, tmp_path_factory):
    """Outputs that are an input, under four spellings, and outputs that
    are named pipes."""
    tmp = tmp_path_factory.mktemp('outputs')
    config = session_run['config']
    ckpt = str(tmp / 'ckpt.pth')
    shutil.copy(session_run['ckpt4'], ckpt)
    os.symlink(ckpt, tmp / 'link.pth')
    os.link(ckpt, tmp / 'hard.pth')
    os.makedirs(tmp / 'sub')
    fifo = str(tmp / 'fifo')
    os.mkfifo(fifo)
    images = str(tmp / 'images')
    os.makedirs(images)
    _write_image(osp.join(images, 'a.png'))
    commands = {}

    def add(name, *argv):
        commands[name] = (argv, {}, (), TIMEOUT)

    for name, out in (('same', ckpt), ('symlink', str(tmp / 'link.pth')),
                      ('hard-link', str(tmp / 'hard.pth')),
                      ('dotdot', str(tmp / 'sub' / '..' / 'ckpt.pth'))):
        add(f'test-out-{name}', sys.executable, TEST, config, ckpt,
            '--work-dir', str(tmp / 'w'), '--out', out)
    add('converter-fifo', sys.executable, CONVERTER, ckpt, fifo)
    add('export-fifo', sys.executable, EXPORT, config, ckpt, '--shape', 64, 64,
        '--out', fifo)
    add('interpolate-fifo', sys.executable, INTERPOLATE, '--pt_pth', ckpt,
        '--tg_pth', fifo, '--pt_size', 64, '--tg_size', 128)
    add('inference-input-folder', sys.executable, INFERENCE, config, ckpt,
        images, '--out-dir', images)
    before = _sha256(ckpt)
    outcomes = _run_all(_selected(request, commands), tmp)
    return dict(
        outcomes=outcomes,
        ckpt=ckpt,
        before=before,
        after=_sha256(ckpt),
        fifo=fifo,
        images=images)


@pytest.mark.parametrize('name', ['same', 'symlink', 'hard-link', 'dotdot'])
def test_test_out_never_replaces_the_checkpoint(name, output_runs):
    outcome = output_runs['outcomes'][f'test-out-{name}']
    check_error(outcome, 1, 'would replace the input')
    assert output_runs['after'] == output_runs['before']


@pytest.mark.parametrize('name',
                         ['converter-fifo', 'export-fifo', 'interpolate-fifo'])
def test_outputs_that_are_named_pipes_are_refused(name, output_runs):
    check_error(output_runs['outcomes'][name], 1, output_runs['fifo'],
                'it is a named pipe, not a regular file or directory')
    import stat
    assert stat.S_ISFIFO(os.stat(output_runs['fifo']).st_mode)


def test_inference_out_dir_is_not_an_input(output_runs):
    check_error(output_runs['outcomes']['inference-input-folder'], 1,
                'would replace the input')
    assert os.listdir(output_runs['images']) == ['a.png']


# -- 5: a kill while saving, then a resume that finds a complete file ---------
_KILLED_WHILE_SAVING = r'''
import os, runpy, signal, sys
replace = os.replace
def replace_or_die(source, target):
    # The process dies with the new checkpoint written but not in place.
    if target.endswith('iter_4.pth'):
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(source, target)
os.replace = replace_or_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_killed_save_leaves_no_partial_file_and_resume_goes_on(
        session_run, tmp_path):
    """SIGKILL while iteration 4 is saved: no iter_4.pth, part or whole;
    ``--resume`` goes on from iteration 2, removes what the killed save
    left, and ends with the uninterrupted run's weights."""
    work_dir = str(tmp_path / 'work_dir')
    script = tmp_path / 'killed.py'
    script.write_text(_KILLED_WHILE_SAVING)
    env = tool_env(OMP_NUM_THREADS='1')
    killed = _run([
        sys.executable, script, TRAIN, session_run['config'], '--work-dir',
        work_dir
    ], str(tmp_path), env)
    assert killed.returncode == -signal.SIGKILL, killed
    left = sorted(os.listdir(work_dir))
    assert 'iter_4.pth' not in left and 'iter_2.pth' in left
    stale = [name for name in left if name.startswith('.iter_4.pth.')]
    assert len(stale) == 1, left
    resumed = _run([
        sys.executable, TRAIN, session_run['config'], '--work-dir', work_dir,
        '--resume'
    ], str(tmp_path), env)
    assert resumed.returncode == 0, resumed
    assert 'resumed epoch: 0, iter: 2' in resumed.stdout, resumed
    assert not any(name.startswith('.iter_') for name in os.listdir(work_dir))
    _check_same_weights(osp.join(work_dir, 'iter_6.pth'), session_run['ckpt6'])


def _check_same_weights(path, reference):
    got = torch.load(path, map_location='cpu')['state_dict']
    expected = torch.load(reference, map_location='cpu')['state_dict']
    assert got.keys() == expected.keys()
    for key in expected:
        # The same iterations on the same data, deterministic: bit-equal.
        assert torch.equal(got[key], expected[key]), key


def test_auto_resume_passes_over_what_is_not_whole(session_run, tmp_path):
    work_dir = tmp_path / 'work_dir'
    os.makedirs(work_dir)
    shutil.copy(session_run['ckpt2'], work_dir / 'iter_2.pth')
    # Whole in size, one byte wrong: torch would load it without a word.
    record = crafted.damaged_record(session_run['ckpt4'],
                                    work_dir / 'iter_4.pth')
    raw = open(session_run['ckpt6'], 'rb').read()
    (work_dir / 'iter_6.pth').write_bytes(raw[:len(raw) // 2])
    (work_dir / 'last_checkpoint').write_text('')
    for i in (2, 4, 6):  # modification times in training order
        os.utime(work_dir / f'iter_{i}.pth', (1e9 + i, 1e9 + i))
    resumed = _run([
        sys.executable, TRAIN, session_run['config'], '--work-dir',
        str(work_dir), '--resume'
    ], str(tmp_path), tool_env(OMP_NUM_THREADS='1'))
    assert resumed.returncode == 0, resumed
    corrupt = 'cannot be read as a PyTorch checkpoint, truncated or corrupt'
    assert (f'Resuming from {work_dir}/iter_2.pth, the newest complete '
            f'checkpoint in {work_dir}; passed over {work_dir}/iter_6.pth '
            f'({corrupt} (') in resumed.stdout, resumed
    assert (f'; {work_dir}/iter_4.pth ({corrupt} (record {record} fails '
            'its checksum))') in resumed.stdout, resumed
    _check_same_weights(work_dir / 'iter_6.pth', session_run['ckpt6'])


def test_arch_of_a_zero_channel_embedding_is_refused():
    """What the converters read a checkpoint's arch from."""
    from mmvheat.converters import CheckpointError, infer_vheat_arch
    weights = {
        f'backbone.stages.{i}.blocks.0.norm1.weight': torch.ones(16 * 2**i)
        for i in range(4)
    }
    weights.update({
        f'backbone.stages.{i}.freq_embed': torch.zeros(4, 4, 0)
        for i in range(4)
    })
    with pytest.raises(
            CheckpointError,
            match=r'stages.0.freq_embed has shape \(4, 4, 0\)'):
        infer_vheat_arch(weights)


# The stand-in Slurm cluster of test_slurm.py.
slurm = test_slurm.slurm


def test_slurm_resume_never_runs_config_text(slurm, session_run, files,
                                             tmp_path):
    env, calls = slurm
    env = dict(env, GPUS='1', GPUS_PER_NODE='1', CPUS_PER_TASK='1')
    outcome = _run([
        'bash', test_slurm.SLURM_TRAIN, 'cpu', 'resume', session_run['config'],
        str(tmp_path / 'work_dir'), '--resume', files['config-code'],
        '--cfg-options', 'train_cfg.max_iters=4'
    ], str(tmp_path), env)
    assert outcome.returncode == 0, outcome
    assert calls('srun'), 'srun was not used'
    assert 'resumed epoch: 0, iter: 4' in outcome.stdout, outcome
    assert os.listdir(files['marker_dir']) == []
