# Copyright (c) mmvheat contributors. All rights reserved.
"""Every command of the README and of ``docs/*.md`` works as written.

The commands are the lines of the fenced ``bash``/``shell`` blocks
(backslash continuations joined, comments dropped). Each one is

* run for real (:data:`RUNS`), its placeholders (``CONFIG``,
  ``CHECKPOINT``, ``IMG``, ``WORK_DIR``, ...) replaced by the tiny trained
  classifier and the tiny datasets of ``tests/test_tools``, kept short with
  extra arguments; or
* checked (:data:`CHECKED`, each with the reason it is not run here and the
  test that runs it, where one does): its script exists, and the tool's own
  argument parser accepts exactly the documented options.

Every command, run or not, has its script, its repository paths (configs
load with ``Config.fromfile``) and its options checked. A documented
command in neither list fails, as does an entry of either list that no
page documents any more.
"""
import functools
import glob
import os
import os.path as osp
import re
import shlex
import sys
from importlib.util import module_from_spec, spec_from_file_location

import pytest
from test_tools.tiny_runs import ROOT, run_cmds

PAGES = ['README.md'] + sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'docs', '*.md')))

_GPU = 'needs CUDA GPUs'
_DATA = 'needs the full dataset (ImageNet, COCO or ADE20K) and its weights'
_PUBLISHED = 'needs a published checkpoint'
#: Commands checked against their parser, not run here: command -> why.
CHECKED = {
    'bash tools/demo.sh':
    'the whole demo (12 minutes); tests/test_demo runs its phases',
    'bash tools/run_tests.sh':
    'the test suite itself, CI runs it',
    'bash tools/run_tests.sh -- -x -k vheat':
    'the test suite itself',
    'bash tools/run_tests.sh --find-links ~/wheels -- -k vheat -x':
    'the test suite itself',
    'bash tools/run_tests.sh -- tests/test_ops -x':
    'the test suite itself',
    'bash tools/demo.sh -- --tasks det --max-iters 100':
    'trains Mask R-CNN for minutes; tests/test_demo runs the demo tool',
    'python tools/demo.py --tasks det --max-iters 100 --work-dir '
    'work_dirs/demo_det':
    'trains Mask R-CNN for minutes; tests/test_demo runs the demo tool',
    'bash tools/setup_env.sh':
    'installs packages; tests/test_setup_script.py runs it',
    'bash tools/setup_env.sh --find-links ~/wheels':
    'installs packages; tests/test_setup_script.py runs it',
    'bash tools/setup_env.sh --find-links https://download.openmmlab.com/'
    'mmcv/dist/cu121/torch2.1/index.html':
    'needs the network',
    'pip install -r requirements/mminstall.txt':
    'installs packages',
    'pip install -e .':
    'installs packages; tests/test_packaging.py builds the package',
    'bash tools/lint.sh':
    'lints the tree; tools/run_tests.sh runs it before the suite',
    'bash tools/lint.sh --fix':
    'rewrites the tree',
    'bash tools/dist_train.sh CONFIG GPUS --amp':
    f'{_GPU}; tests/test_tools/test_train_test.py runs dist_train.sh',
    'bash tools/dist_train.sh CONFIG GPUS --work-dir WORK_DIR --amp '
    '--amp-dtype bfloat16':
    f'{_GPU}; tests/test_tools/test_train_test.py runs dist_train.sh',
    'bash tools/dist_test.sh CONFIG CHECKPOINT GPUS --out results.pkl':
    f'{_GPU}; tests/test_tools/test_train_test.py runs dist_test.sh',
    'bash tools/dist_test.sh CONFIG CHECKPOINT GPUS --tta --out results.pkl':
    f'{_GPU}; tests/test_tools/test_train_test.py runs dist_test.sh',
    'GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR '
    '--amp':
    'needs Slurm; tests/test_tools/test_slurm.py runs it with a stand-in '
    'srun',
    'GPUS=8 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT '
    '--tta':
    'needs Slurm; tests/test_tools/test_slurm.py runs it with a stand-in '
    'srun',
    'python tools/train.py CONFIG --work-dir WORK_DIR --resume':
    'tests/test_tools/test_train_test.py resumes the tiny runs',
    'python tools/test.py CONFIG CHECKPOINT --tta':
    'tests/test_tools/test_train_test.py tests the tiny runs with --tta',
    'python tools/test.py CONFIG CHECKPOINT --tta --show-dir vis':
    'tests/test_tools/test_train_test.py tests the tiny runs with --tta',
    'python tools/model_converters/vheat_to_mmvheat.py vHeat_tiny.pth '
    'checkpoints/vheat-tiny_in1k-512.pth --tg-size 512':
    f'{_PUBLISHED}; tests/test_tools/test_vheat_converter.py converts '
    'crafted ones',
    'python tools/model_converters/vheat_to_mmvheat.py vHeat_tiny.pth '
    'checkpoints/vheat-tiny_in1k.pth':
    f'{_PUBLISHED}; tests/test_tools/test_vheat_converter.py',
    'python tools/model_converters/mpvit_to_mmvheat.py mpvit_small.pth '
    'checkpoints/mpvit-small_in1k_mmvheat.pth':
    f'{_PUBLISHED}; tests/test_tools/test_mpvit_converter.py',
    'python tools/interpolate4downstream.py --pt_pth '
    'checkpoints/vheat-tiny_in1k.pth --tg_pth '
    'checkpoints/vheat-tiny_in1k-512-bicubic.pth --pt_size 224 --tg_size 512 '
    '--mode bicubic':
    f'{_PUBLISHED}; tests/test_tools/test_interpolate4downstream.py',
    'python tools/deployment/export_onnx.py CONFIG CHECKPOINT --shape 512 512 '
    '--out model.onnx':
    'tests/test_tools/test_export_onnx.py exports the tiny models',
    'python tools/deployment/export_onnx.py CONFIG CHECKPOINT --shape 512 512 '
    '--out model.onnx --full':
    'tests/test_tools/test_export_onnx.py exports the tiny models',
    'python tools/deployment/export_onnx.py CONFIG --random-weights --shape '
    '512 512 --out model.onnx':
    'tests/test_tools/test_export_onnx.py exports the tiny models',
    'python tools/analysis_tools/benchmark.py --models vheat-t swin-t mpvit-t '
    '--resolutions 224 512 1024':
    f'{_GPU} (whole models at 1024); tests/test_analysis/test_benchmark.py '
    'runs the harness on tiny models',
    'python tools/analysis_tools/benchmark.py --device cpu --model-only '
    '--memory-only --models vheat-t swin-t --resolutions 512 1024 '
    '--batch-size 1 --no-flops':
    'full-size models for minutes; tests/test_analysis/test_benchmark.py',
    'python tools/analysis_tools/benchmark.py --device cpu --model-only '
    '--models vheat-t vheat-t-plain vheat-t-pub vheat-t-pub-fold '
    '--resolutions 224 512 --batch-size 8 --mode infer --no-flops '
    '--repeats 7 --no-memory':
    'full-size models for minutes; tests/test_analysis/test_benchmark.py',
    'python tools/analysis_tools/benchmark.py --device cpu --model-only '
    '--published-repo VHEAT_REPO --models vheat-t vheat-t-plain vheat-t-pub '
    'vheat-t-pub-fold vheat-t-published vheat-t-published-fold '
    '--resolutions 224 --img-size 224 --batch-size 8 --mode infer '
    '--no-flops --repeats 7 --no-memory':
    'needs a checkout of the published repository; tests/test_analysis/'
    'test_benchmark.py runs it on a stand-in',
    'python tools/analysis_tools/gpu_report.py --out-dir '
    'work_dirs/gpu_report':
    f'{_GPU}; tests/test_analysis/test_gpu_report.py runs --device cpu',
    'python tools/analysis_tools/gpu_report.py --device cpu --quick '
    '--out-dir work_dirs/gpu_report_cpu':
    'Triton\'s interpreter for minutes; tests/test_analysis/'
    'test_gpu_report.py runs it',
    'bash tools/analysis_tools/gpu_report.sh fetch':
    'needs the network',
    'bash tools/analysis_tools/gpu_report.sh run OUT':
    f'{_GPU}, with the fetched wheels',
    'python tools/analysis_tools/visualize_heat.py CONFIG CHECKPOINT --img '
    'IMG --out-dir OUT_DIR --compare-config '
    'configs/mpvit/mpvit-tiny_8xb128_in1k.py':
    'tests/test_tools/test_analysis_tools.py runs it on the tiny models',
}

#: Commands run for real: command -> extra arguments that keep it short.
RUNS = {
    'python tools/train.py CONFIG --work-dir WORK_DIR':
    ['--cfg-options', 'train_cfg.max_iters=1'],
    'python tools/train.py CONFIG --work-dir WORK_DIR --cfg-options '
    'train_dataloader.batch_size=4': ['train_cfg.max_iters=1'],
    'python tools/test.py CONFIG CHECKPOINT --work-dir WORK_DIR --out '
    'results.pkl': [],
    'python tools/inference.py CONFIG CHECKPOINT IMG IMAGE_FOLDER --out-dir '
    'OUT_DIR --device cpu --score-thr 0.3 --batch-size 1': [],
    'python tools/analysis_tools/get_flops.py '
    'configs/vheat/vheat-tiny_16xb128_in1k.py': [],
    'python tools/analysis_tools/saved_tensors.py --model vheat-t --size '
    '1024': ['--size', '64'],
    'python tools/dataset_converters/make_demo_data.py --out data/demo': [
        '--tasks', 'cls', '--num-train', '2', '--num-val', '1', '--size', '32',
        '32'
    ],
}

#: What the placeholders stand for in the parser checks.
PLACEHOLDERS = dict(
    CONFIG='configs/vheat/vheat-tiny_16xb128_in1k.py',
    CHECKPOINT='checkpoint.pth',
    GPUS='8',
    IMG='demo.jpg',
    IMAGE_FOLDER='images',
    WORK_DIR='work_dirs/docs',
    OUT_DIR='work_dirs/docs_out',
    PARTITION='partition',
    JOB_NAME='job',
    VHEAT_REPO=osp.join(ROOT, 'tests', 'test_analysis', 'published_checkout'))


def _blocks(text):
    return re.findall(r'^```(?:bash|shell)\n(.*?)^```', text, re.M | re.S)


def documented_commands():
    """``{command: page}`` for every command of the pages, the command as
    its words joined by one space."""
    commands = {}
    for page in PAGES:
        with open(osp.join(ROOT, page), encoding='utf-8') as f:
            text = f.read()
        for block in _blocks(text):
            for line in block.replace('\\\n', ' ').splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    commands.setdefault(' '.join(words), page)
    return commands


COMMANDS = documented_commands()


def _split_env(words):
    env = {}
    while words and re.match(r'^[A-Z_]+=', words[0]):
        key, value = words[0].split('=', 1)
        env[key] = value
        words = words[1:]
    return env, words


def _load_tool(path):
    spec = spec_from_file_location('docs_' + re.sub(r'\W', '_', path),
                                   osp.join(ROOT, path))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse_python_tool(path, args):
    from mmvheat.apis.arguments import parse_test_args, parse_train_args
    from mmvheat.apis.inference import inference_parser
    parsers = {
        'tools/train.py': parse_train_args,
        'tools/test.py': parse_test_args,
        'tools/inference.py': inference_parser().parse_args,
    }
    parse = parsers.get(path) or _load_tool(path).parse_args
    return parse(args)


def _shell_options(path):
    """The options a shell script's ``case`` (or ``[ "$1" = --x ]``)
    accepts."""
    with open(osp.join(ROOT, path)) as f:
        text = f.read()
    cases = re.findall(r'^\s*([-\w]+(?:\s*\|\s*[-\w]+)*)\)', text, re.M)
    tests = re.findall(r'= (--[-\w]+) \]', text)  # [ "$1" = --fix ]
    return set(cases + tests)


def _check_shell_options(path, args):
    accepted = set()
    for alternatives in _shell_options(path):
        accepted.update(a.strip() for a in alternatives.split('|'))
    for i, arg in enumerate(args):
        if arg.startswith('-') or i == 0 and path.endswith('gpu_report.sh'):
            assert arg in accepted, f'{path} has no option {arg}'


def _check_setup_options(path, args):
    """``setup_env.sh`` options, then after ``--`` the demo's or pytest's."""
    own, rest = (args[:args.index('--')], args[args.index('--') + 1:]) \
        if '--' in args else (args, [])
    _check_shell_options('tools/setup_env.sh',
                         [a for a in own if a.startswith('-')])
    if path == 'tools/demo.sh':
        _parse_python_tool('tools/demo.py', rest)
    for arg in rest:
        if arg.startswith('tests/'):
            assert osp.exists(osp.join(ROOT, arg)), arg


def check_parsed(words):
    """The script exists and its parser takes ``words``' arguments."""
    words = [PLACEHOLDERS.get(w, w) for w in words]
    if words[0] == 'pip':
        for i, word in enumerate(words):
            if words[i - 1] == '-r' or word == '.':
                assert osp.exists(osp.join(ROOT, word)), word
        return
    runner, path, args = words[0], words[1], words[2:]
    assert runner in ('python', 'bash'), words
    assert osp.isfile(osp.join(ROOT, path)), f'no script {path}'
    if runner == 'python':
        _parse_python_tool(path, args)
    elif path in ('tools/dist_train.sh', 'tools/dist_test.sh'):
        what = 'train' if 'train' in path else 'test'
        positional = 2 if what == 'train' else 3
        assert args[positional - 1].isdigit(), args  # GPUS
        _parse_python_tool(f'tools/{what}.py',
                           args[:positional - 1] + args[positional:])
    elif path == 'tools/slurm_train.sh':
        config, rest = args[2], args[3:]
        if rest and not rest[0].startswith('-'):
            rest = ['--work-dir', rest[0]] + rest[1:]
        _parse_python_tool('tools/train.py', [config] + rest)
    elif path == 'tools/slurm_test.sh':
        _parse_python_tool('tools/test.py', args[2:])
    elif path in ('tools/setup_env.sh', 'tools/demo.sh', 'tools/run_tests.sh'):
        _check_setup_options(path, args)
    else:
        _check_shell_options(path, args)


@functools.lru_cache(maxsize=None)
def _load_config(path):
    from mmengine import Config

    import mmvheat  # noqa: F401  (the mmvheat:: prefix)
    return Config.fromfile(osp.join(ROOT, path))


def test_every_command_is_run_or_checked():
    assert COMMANDS, 'no commands found'
    neither = [
        f'{page}: {command}' for command, page in COMMANDS.items()
        if command not in RUNS and command not in CHECKED
    ]
    assert not neither, 'documented but neither run nor checked:\n' + \
        '\n'.join(neither)
    stale = sorted((set(RUNS) | set(CHECKED)) - set(COMMANDS))
    assert not stale, 'listed but no longer documented:\n' + '\n'.join(stale)
    assert not set(RUNS) & set(CHECKED)


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_command_names_what_exists(command):
    """Scripts and repository paths exist, configs load, and the tool's
    parser accepts the options as written."""
    env, words = _split_env(shlex.split(command))
    for word in words:
        if re.match(r'^(configs|tools|tests|requirements)/', word):
            assert osp.exists(osp.join(ROOT, word)), f'{word} is missing'
            if word.startswith('configs/') and word.endswith('.py'):
                _load_config(word)
    try:
        check_parsed(words)
    except SystemExit as exc:  # argparse refused the options
        pytest.fail(f'{command}: the parser refused it ({exc.code})')


def test_commands_run(tmp_path, trained, data_root):
    """The :data:`RUNS` commands, on the tiny classifier trained once per
    session, side by side."""
    config, work_dir, _ = trained('mmpretrain')
    images = osp.join(data_root, 'imagenet', 'val')
    image = sorted(glob.glob(osp.join(images, '*', '*.*')))[0]
    stand_ins = dict(
        CONFIG=config,
        CHECKPOINT=osp.join(work_dir, 'iter_6.pth'),
        IMG=image,
        IMAGE_FOLDER=images,
        WORK_DIR=str(tmp_path / 'work_dir'),
        OUT_DIR=str(tmp_path / 'out'))
    cmds = []
    for command, extra in RUNS.items():
        words = [
            osp.join(ROOT, w) if w.startswith('configs/') else stand_ins.get(
                w, w) for w in shlex.split(command)
        ]
        assert words[0] == 'python'
        cmds.append([sys.executable, osp.join(ROOT, words[1])] + words[2:] +
                    extra)
    outs = run_cmds(cmds, tmp_path)
    assert os.listdir(tmp_path / 'out' / 'preds'), outs[3]
    assert osp.isfile(tmp_path / 'results.pkl'), outs[2]
    assert osp.isdir(tmp_path / 'data' / 'demo'), outs[5]
    assert 'Flops' in outs[4] or 'FLOPs' in outs[4], outs[4]
