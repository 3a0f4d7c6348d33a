# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/train.py, tools/test.py, tools/dist_train.sh and tools/dist_test.sh.

End to end on tiny vHeat models and tiny datasets in the real formats (COCO
instances, ADE20K layout, ImageNet layout): a few training iterations, then
testing with and without ``--tta``, for mmpretrain, mmdet and mmseg configs
that inherit the libraries' own ``_base_`` files; an interrupted run resumed
with ``--resume``; a two-process CPU (gloo) run through the dist scripts.
The datasets come from the demo's generator (:mod:`demo.data`).
"""
import argparse
import copy
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmvheat  # noqa: F401  (before mmpretrain and torch.load)
from mmvheat import apis
from mmvheat.apis.configs import MASK_TTA, ConfigError
from mmvheat.engine import CPU_DDP
from mmvheat.utils.io import UsageError
from .tiny_runs import (CONFIGS, METRICS, ROOT, TEST, TIMEOUT, TRAIN,
                        cls_config, run_cmd, run_cmds, tool_env, write_file)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _keep_local_rank(monkeypatch):
    # The tools' argument parsing sets LOCAL_RANK, as the libraries' do.
    monkeypatch.delenv('LOCAL_RANK', raising=False)


def _metric(library, output):
    found = re.findall(METRICS[library], output)
    assert found, f'no {METRICS[library]} in the output:\n{output[-4000:]}'
    return float(found[-1])


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def _state_dict(path):
    return torch.load(path, map_location='cpu')['state_dict']


# -- train, then test with and without --tta ----------------------------------
@pytest.mark.parametrize('library', ['mmpretrain', 'mmdet', 'mmseg'])
def test_train_then_test(trained, library, tmp_path):
    config, work_dir, out = trained(library)
    last = 6 if library == 'mmpretrain' else 4
    assert re.search(rf'Iter\(train\) \[\s*{last}/{last}\]', out), out[-3000:]
    assert 'loss:' in out
    _metric(library, out)  # validation during training
    ckpt = osp.join(work_dir, f'iter_{last}.pth')
    assert osp.isfile(ckpt) and osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip().endswith(f'iter_{last}.pth')

    # Without and with --tta, side by side.
    out_path = str(tmp_path / ('pred' if library == 'mmseg' else 'pred.pkl'))
    show_dir = str(tmp_path / 'show')
    test = [sys.executable, TEST, config, ckpt]
    plain_args = ['--work-dir', str(tmp_path / 'test'), '--out', out_path]
    if library != 'mmseg':  # mmseg's hook draws every 50th image only
        plain_args += ['--show-dir', show_dir]
    out, tta = run_cmds([
        test + plain_args, test +
        ['--tta', '--work-dir', str(tmp_path / 'tta')]
    ], tmp_path)

    _metric(library, out)
    assert re.search(r'Iter\(test\) \[\s*\d+/\d+\]', out)  # progress
    # Tested in deploy mode, validated during training without.
    assert 'switch_to_deploy(): backbone' in out
    assert 'switch_to_deploy()' not in trained(library)[2]
    if library == 'mmseg':
        assert len(os.listdir(out_path)) == 4  # predicted label maps
    else:
        assert osp.getsize(out_path) > 0
        drawn = [
            f for _, _, files in os.walk(tmp_path) for f in files
            if f.endswith(('.jpg', '.JPEG', '.png'))
        ]
        assert len(drawn) >= 4, drawn
    if library == 'mmdet':
        assert 'coco/segm_mAP' in out

    _metric(library, tta)
    assert 'TestTimeAug' in tta
    assert 'switch_to_deploy(): module.backbone' in tta
    if library == 'mmdet':
        assert 'mmvheat.MaskDetTTAModel' in tta
        assert 'coco/segm_mAP' in tta


# -- torch.compile through mmengine -------------------------------------------
@pytest.mark.slow
def test_train_compiled_by_mmengine(trained, tmp_path):
    """``compile`` in the config (mmengine compiles the model's
    ``train_step``) trains through ``tools/train.py`` with the losses of the
    uncompiled run, and Dynamo breaks no graph in our code (mmengine's
    optimizer wrapper and torch.optim break their own). Compiled through
    AOTAutograd (``aot_eager``): inductor's code generation takes minutes on
    a CPU and compiles the same graphs."""
    config, _, eager = trained('mmpretrain')
    out = run_cmd([
        sys.executable, TRAIN, config, '--work-dir',
        str(tmp_path / 'work_dir'), '--cfg-options',
        'compile.backend=aot_eager', 'train_cfg.max_iters=3'
    ],
                  tmp_path,
                  env=tool_env(TORCH_LOGS='graph_breaks'))
    assert 'Model has been "compiled"' in out
    ours = osp.join(ROOT, 'mmvheat') + os.sep
    breaks = re.findall(r'Graph break in user code at (\S+)', out)
    # mmengine's breaks show that the log is there to read.
    assert breaks and not [b for b in breaks if b.startswith(ours)], breaks
    losses = [re.findall(r'\bloss: (\S+)', run)[:3] for run in (out, eager)]
    # The same three steps: the compiled graph runs the plain ops where the
    # eager step recomputes the MLP and the gate in its backward pass, so
    # the logged losses (4 decimals) agree to round-off.
    assert len(losses[0]) == 3
    np.testing.assert_allclose(*np.float64(losses), rtol=0, atol=2e-4)


# -- mixed precision ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('library', ['mmdet', 'mmseg'])
def test_amp_train_and_test_in_both_half_dtypes(data_root, library, tmp_path):
    """``--amp`` trains in bfloat16 and float16 with finite losses, and
    ``test.py --amp`` evaluates the result; on the CPU the detector's mmcv
    ops (NMS, RoIAlign) run in float32 inside the autocast region."""
    config = write_file(
        tmp_path / f'vheat_{library}.py', CONFIGS[library](
            data_root, max_iters=3, val_interval=3, ckpt_interval=3))
    runs = {dtype: str(tmp_path / dtype) for dtype in ('bfloat16', 'float16')}
    outs = run_cmds([[
        sys.executable, TRAIN, config, '--amp', '--amp-dtype', dtype,
        '--work-dir', work_dir, '--cfg-options',
        'default_hooks.logger.interval=1'
    ] for dtype, work_dir in runs.items()], tmp_path)
    for (dtype, work_dir), out in zip(runs.items(), outs):
        if not torch.cuda.is_available():
            assert f'--amp trains with {dtype} autocast on the CPU' in out
        losses = [float(v) for v in re.findall(r'\bloss: (\S+)', out)]
        assert len(losses) == 3, out[-3000:]
        assert all(np.isfinite(losses)), losses
        _metric(library, out)
    out = run_cmd([
        sys.executable, TEST, config,
        osp.join(runs['bfloat16'], 'iter_3.pth'), '--amp', '--work-dir',
        str(tmp_path / 'test')
    ], tmp_path)
    _metric(library, out)


# -- interrupted and resumed --------------------------------------------------
@pytest.mark.slow
def test_resume_continues_where_it_stopped(trained, data_root, tmp_path):
    # The uninterrupted 6-iteration run of test_train_then_test.
    config, reference_dir, _ = trained('mmpretrain')
    work_dir = str(tmp_path / 'work_dir')
    # "Interrupted" after iteration 4: the same config, stopped early.
    out = run_cmd([
        sys.executable, TRAIN, config, '--work-dir', work_dir, '--cfg-options',
        'train_cfg.max_iters=4'
    ],
                  cwd=tmp_path)
    assert 'Saving checkpoint at 4 iterations' in out
    assert not osp.exists(osp.join(work_dir, 'iter_6.pth'))

    out = run_cmd(
        [sys.executable, TRAIN, config, '--work-dir', work_dir, '--resume'],
        cwd=tmp_path)
    assert re.search(r'resumed epoch: \d+, iter: 4', out), out[-3000:]
    assert 'iter_4.pth' in out  # the latest checkpoint was found
    iters = [int(i) for i in re.findall(r'Iter\(train\) \[\s*(\d+)/6\]', out)]
    assert iters == [5, 6], iters
    assert 'Saving checkpoint at 6 iterations' in out

    resumed = _state_dict(osp.join(work_dir, 'iter_6.pth'))
    reference = _state_dict(osp.join(reference_dir, 'iter_6.pth'))
    assert resumed.keys() == reference.keys()
    before = _state_dict(osp.join(work_dir, 'iter_4.pth'))
    assert any(not torch.equal(before[k], resumed[k]) for k in resumed)
    for key in reference:
        torch.testing.assert_close(
            resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


# -- two processes on the CPU -------------------------------------------------
# Saves each process's final weights, to compare the ranks.
_DUMP_WEIGHTS_HOOK = """
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpWeightsHook(Hook):

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_train(self, runner):
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        torch.save(model.state_dict(), f'{self.out_dir}/rank{get_rank()}.pth')
"""


@pytest.mark.slow
def test_dist_train_and_test_two_cpu_processes(data_root, tmp_path):
    """Two gloo processes of 2 images each train the same weights on both
    ranks, equal to one process with batches of 4: the gradients are
    averaged across the processes."""
    hook_dir = tmp_path / 'hook'
    write_file(hook_dir / 'dump_weights_hook.py', _DUMP_WEIGHTS_HOOK)
    config = write_file(
        tmp_path / 'vheat_cls_dist.py',
        cls_config(data_root, max_iters=2, val_interval=2, ckpt_interval=2) +
        f"""
custom_imports = dict(imports=['dump_weights_hook'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='DumpWeightsHook', out_dir={str(tmp_path)!r})]
""")
    work_dir = str(tmp_path / 'work_dir')
    one_dir = str(tmp_path / 'one_process')
    env = tool_env(PORT=_free_port(), PYTHON=sys.executable)
    env['PYTHONPATH'] += os.pathsep + str(hook_dir)
    out, one = run_cmds([[
        'bash',
        osp.join(ROOT, 'tools', 'dist_train.sh'), config, '2', '--work-dir',
        work_dir
    ],
                         [
                             sys.executable, TRAIN, config, '--work-dir',
                             one_dir, '--cfg-options',
                             'train_dataloader.batch_size=4', 'custom_hooks=[]'
                         ]],
                        tmp_path,
                        env=env)
    assert 'replaced by gloo' in out
    assert 'Distributed training: True' in out
    assert re.search(r'Iter\(train\) \[\s*2/2\]', out)
    _metric('mmpretrain', out)
    ckpt = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(ckpt)

    ranks = [
        torch.load(tmp_path / f'rank{r}.pth', weights_only=True)
        for r in (0, 1)
    ]
    single = _state_dict(osp.join(one_dir, 'iter_2.pth'))
    before = _state_dict(osp.join(work_dir, 'iter_2.pth'))
    assert ranks[0].keys() == ranks[1].keys() == single.keys()
    for key in single:
        # Both ranks apply the same all-reduced gradient with the same
        # arithmetic: bit for bit the same weights.
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(
            before[key], ranks[0][key], rtol=0, atol=0, msg=key)
        # The one-process run sums the same 4 images' gradients in another
        # order: float32 rounding only (relative 1e-7 on the gradients;
        # unsynchronised ranks differ by 1e-2 after these two SGD steps).
        torch.testing.assert_close(
            ranks[0][key], single[key], rtol=1e-5, atol=1e-6, msg=key)

    env['PORT'] = _free_port()
    out = run_cmd([
        'bash',
        osp.join(ROOT, 'tools', 'dist_test.sh'), config, ckpt, '2',
        '--work-dir',
        str(tmp_path / 'test')
    ],
                  cwd=tmp_path,
                  env=env)
    _metric('mmpretrain', out)
    # 4 images, 2 a batch: one batch for each of the two processes.
    assert re.search(r'Iter\(test\) \[\s*1/1\]', out), out[-3000:]


# -- without processes: the library, the flags, the config --------------------
@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    """Each library's config, parsed once (the ``::`` bases are slow)."""
    tmp = tmp_path_factory.mktemp('configs')
    cfgs = {}
    for library, make in CONFIGS.items():
        path = write_file(tmp / f'vheat_{library}.py', make('/nonexistent'))
        cfgs[library] = Config.fromfile(path)
    return cfgs


def _setup(configs, library, *argv, kind='test', cfg=None):
    """What tools/{train,test}.py do to the config, minus building."""
    if kind == 'test':
        args = apis.parse_test_args([f'vheat_{library}.py', 'ckpt.pth', *argv])
    else:
        args = apis.parse_train_args([f'vheat_{library}.py', *argv])
    cfg = apis.merge_common_args(copy.deepcopy(cfg or configs[library]), args)
    setup = apis.setup_test_cfg if kind == 'test' else \
        apis.setup_train_cfg
    return setup(cfg, args, library)


@pytest.mark.parametrize('library', ['mmpretrain', 'mmdet', 'mmseg'])
def test_detect_library(configs, library):
    assert apis.detect_library(configs[library]) == library


def test_detect_library_errors():
    with pytest.raises(ValueError, match='sets no default_scope'):
        apis.detect_library(Config(dict(model=dict())))
    with pytest.raises(ValueError, match="default_scope='mmocr'"):
        apis.detect_library(Config(dict(default_scope='mmocr')))


def test_tool_without_default_scope_fails_clearly(tmp_path, check_cli_error):
    """End to end, as a person runs it: one line, no traceback."""
    config = write_file(tmp_path / 'noscope.py', 'model = dict()\n')
    result = subprocess.run([sys.executable, TRAIN, config],
                            cwd=str(tmp_path),
                            env=tool_env(),
                            capture_output=True,
                            text=True,
                            timeout=TIMEOUT)
    check_cli_error(result, 1, f'{config} sets no default_scope')


# -- bad inputs, in process ---------------------------------------------------
@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory, data_root):
    """A tiny classifier config and checkpoints: its own, one holding an
    argparse.Namespace besides, a ResNet-18 classifier's, a text file."""
    from mmengine.runner import save_checkpoint
    tmp = tmp_path_factory.mktemp('bad_inputs')
    config = write_file(tmp / 'vheat_cls.py',
                        cls_config(data_root, max_iters=1, val_interval=1))
    resnet_config = write_file(
        tmp / 'resnet18.py', """
        _base_ = ['mmpretrain::_base_/models/resnet18.py']
        default_scope = 'mmpretrain'
        model = dict(head=dict(num_classes=3))
        """)
    paths = dict(config=config, dir=str(tmp))
    for name, cfg in (('vheat', config), ('resnet18', resnet_config)):
        paths[name] = str(tmp / f'{name}.pth')
        save_checkpoint({'state_dict': apis.build_model(cfg).state_dict()},
                        paths[name])
    paths['namespace'] = str(tmp / 'namespace.pth')
    torch.save(
        dict(
            state_dict=torch.load(paths['vheat'])['state_dict'],
            meta=dict(args=argparse.Namespace(lr=0.1))), paths['namespace'])
    paths['text'] = write_file(tmp / 'text.pth', 'not a checkpoint\n')
    paths['syntax'] = write_file(tmp / 'syntax.py', 'model = dict(\n')
    paths['a_file'] = write_file(tmp / 'a_file', '')
    return paths


def _main(tool, argv, capsys):
    """``tools/{train,test}.py``'s main in this process: (status, stderr)."""
    capsys.readouterr()
    status = (
        apis.run_cli(apis.train if tool == 'train' else apis.test,
                     [str(arg) for arg in argv]))
    return status, capsys.readouterr().err


def _bad_config_cases(paths, tmp):
    config, a_file = paths['config'], paths['a_file']
    return [
        (['nope.py'], 'nope.py: no such config file'),
        ([paths['dir']], f'{paths["dir"]}: is a directory, not a config '
         'file'),
        ([paths['syntax']], f'{paths["syntax"]}: cannot be read: a syntax '
         "error (line 1): '(' was never closed"),
        ([config, '--cfg-options', 'model.backbone.type=NoSuchBackbone'],
         f"{config}: unknown type 'NoSuchBackbone' (not in the "
         'mmpretrain::model registry)'),
        ([config, '--work-dir', f'{a_file}/sub'],
         f'cannot write the work dir {a_file}/sub: {a_file} is not a '
         'directory'),
    ]


def test_train_bad_inputs(bad_inputs, tmp_path, capsys):
    paths = bad_inputs
    config, work_dir = paths['config'], str(tmp_path / 'work_dir')
    cases = [(argv[:1] + ['--work-dir', work_dir] +
              argv[1:] if '--work-dir' not in argv else argv, message)
             for argv, message in _bad_config_cases(paths, tmp_path)]
    cases += [
        ([config, '--work-dir', work_dir, '--resume',
          paths['text']], f'{paths["text"]}: is not a PyTorch checkpoint'),
        ([config, '--work-dir', work_dir, '--resume',
          'nope.pth'], 'nope.pth: no such file'),
        ([
            config, '--work-dir', work_dir, '--cfg-options',
            f'load_from={paths["namespace"]}'
        ], f'{paths["namespace"]}: refused global argparse.Namespace'),
    ]
    for argv, message in cases:
        status, err = _main('train', argv, capsys)
        assert (status, err.count('\n')) == (1, 1), (argv, err)
        assert err.startswith(f'error: {message}'), (argv, err)
        assert '--trust-checkpoint' in err or 'Namespace' not in message
    # Trusted, the same file loads (load_from, then one iteration).
    status, err = _main('train', [
        config, '--work-dir', work_dir, '--trust-checkpoint', '--cfg-options',
        f'load_from={paths["namespace"]}'
    ], capsys)
    assert status == 0, err
    assert osp.isfile(osp.join(work_dir, 'iter_1.pth'))


def test_test_bad_inputs(bad_inputs, tmp_path, capsys):
    paths = bad_inputs
    config, work_dir = paths['config'], str(tmp_path / 'work_dir')
    cases = [(argv[:1] + [paths['vheat'], '--work-dir', work_dir] +
              argv[1:] if '--work-dir' not in argv else argv[:1] +
              [paths['vheat']] + argv[1:], message)
             for argv, message in _bad_config_cases(paths, tmp_path)]
    resnet = paths['resnet18']
    # ResNet-18's 62 weights are all unexpected, the vHeat's 95 all unset
    # but for the head's bias, and the head's weight has another shape.
    does_not_fit = (f'{resnet} does not fit the ImageClassifier: 95 weights '
                    'unset [backbone.patch_embed.conv1.weight, ')
    cases += [
        ([config, paths['text'], '--work-dir',
          work_dir], f'{paths["text"]}: is not a PyTorch checkpoint'),
        ([config, paths['namespace'], '--work-dir', work_dir],
         f'{paths["namespace"]}: refused global argparse.Namespace'),
        ([config, resnet, '--work-dir', work_dir], does_not_fit),
        # The TTA model holds the classifier under module.: the same names.
        ([config, resnet, '--tta', '--work-dir', work_dir], does_not_fit),
    ]
    for argv, message in cases:
        status, err = _main('test', argv, capsys)
        assert (status, err.count('\n')) == (1, 1), (argv, err)
        assert err.startswith(f'error: {message}'), (argv, err)
    _, err = _main('test', [config, resnet, '--work-dir', work_dir], capsys)
    assert ('unexpected [backbone.conv1.weight, backbone.bn1.weight, '
            'backbone.bn1.bias, backbone.bn1.running_mean, ') in err
    assert '1 of another shape [head.fc.weight]; load it anyway with ' \
        '--non-strict' in err
    # A fitting checkpoint passes the check through the TTA model, a
    # trusted one loads, and --non-strict tests a misfit anyway.
    for argv in ([paths['namespace'], '--tta',
                  '--trust-checkpoint'], [resnet, '--non-strict']):
        status, err = _main('test', [config, *argv, '--work-dir', work_dir],
                            capsys)
        assert status == 0, (argv, err)


def test_load_config(tmp_path):
    config = write_file(tmp_path / 'vheat_cls.py', cls_config('/nonexistent'))
    args = apis.parse_train_args(
        [config, '--cfg-options', 'train_cfg.max_iters=7'])
    cfg = apis.load_config(args)
    assert cfg.work_dir == osp.join('./work_dirs', 'vheat_cls')
    assert cfg.train_cfg.max_iters == 7 and cfg.launcher == 'none'


@pytest.mark.parametrize('cuda', [True, False])
@pytest.mark.parametrize('dtype', [None, 'float16', 'bfloat16'])
def test_amp_flag_picks_wrapper_by_device(configs, monkeypatch, cuda, dtype):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    argv = ['--amp'] + (['--amp-dtype', dtype] if dtype else [])
    cfg = _setup(configs, 'mmdet', *argv, kind='train')
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    if cuda:
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
        # mmengine's default on a GPU is float16
        assert cfg.optim_wrapper.get('dtype') == dtype
    else:
        assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
        assert cfg.optim_wrapper.dtype == (dtype or 'bfloat16')


@pytest.fixture(scope='module')
def published_recipe():
    """The vHeat-T ImageNet config: AmpOptimWrapper with float16, as
    published."""
    return Config.fromfile(
        osp.join(ROOT, 'configs', 'vheat', 'vheat-tiny_16xb128_in1k.py'))


@pytest.mark.parametrize('cuda', [True, False])
@pytest.mark.parametrize('dtype', [None, 'float16', 'bfloat16'])
def test_config_amp_wrapper_on_a_machine_without_cuda(published_recipe,
                                                      monkeypatch, cuda,
                                                      dtype):
    """A config's AmpOptimWrapper (which asserts a GPU) trains with
    CPUAmpOptimWrapper without CUDA, in the config's dtype (bfloat16 if it
    sets none), and says so; with CUDA it is left alone."""
    from mmengine.optim import build_optim_wrapper

    from mmvheat.apis import configs as configs_module
    said = []
    monkeypatch.setattr(configs_module, 'print_log',
                        lambda message, **kwargs: said.append(message))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    cfg = copy.deepcopy(published_recipe)
    if dtype is None:
        cfg.optim_wrapper.pop('dtype')
    else:
        cfg.optim_wrapper.dtype = dtype
    args = apis.parse_train_args(['vheat.py'])
    cfg = apis.setup_train_cfg(cfg, args, 'mmpretrain')
    wrapper = cfg.optim_wrapper
    if cuda:
        assert wrapper.type == 'AmpOptimWrapper'
        assert wrapper.get('dtype') == dtype and said == []
        return
    expected = dtype or 'bfloat16'
    assert wrapper.type == 'CPUAmpOptimWrapper'
    assert wrapper.dtype == expected
    assert wrapper.loss_scale == 'dynamic'
    assert said[0].startswith(
        f"No CUDA: the config's AmpOptimWrapper trains with {expected} "
        'autocast on the CPU (CPUAmpOptimWrapper).')
    assert ('float16 is slow on most CPUs' in said[0]) == (dtype == 'float16')
    # The wrapper builds on this machine (mmengine's would assert a GPU).
    built = build_optim_wrapper(torch.nn.Linear(2, 2), wrapper)
    assert type(built).__name__ == 'CPUAmpOptimWrapper'
    assert built.cast_dtype == getattr(torch, expected)


def test_amp_dtype_needs_amp(configs):
    with pytest.raises(UsageError, match='--amp-dtype needs --amp'):
        _setup(configs, 'mmdet', '--amp-dtype', 'float16', kind='train')


def test_train_flags(configs):

    def setup(*argv):
        return _setup(configs, 'mmdet', *argv, kind='train')

    cfg = setup()
    assert not cfg.resume and cfg.load_from is None
    # Nothing to resume in the work dir: from the start, as mmengine's
    # auto-resume does when it finds no checkpoint.
    cfg = setup('--resume')
    assert cfg.resume is False and cfg.load_from is None
    cfg = setup('--resume', 'a/iter_2.pth', '--work-dir', 'w')
    assert cfg.resume is True and cfg.load_from == 'a/iter_2.pth'
    assert cfg.work_dir == 'w'
    cfg = setup('--amp', '--auto-scale-lr', '--cfg-options',
                'train_cfg.max_iters=7')
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
        assert cfg.optim_wrapper.loss_scale == 'dynamic'
    else:  # mmengine's AmpOptimWrapper needs a GPU: bf16 autocast instead
        assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
        assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.auto_scale_lr.enable is True
    assert cfg.train_cfg.max_iters == 7
    cfg = setup('--no-validate')
    assert cfg.val_cfg is None and cfg.val_dataloader is None
    args = apis.parse_train_args(
        ['c.py', '--launcher', 'pytorch', '--local-rank', '1'])
    assert args.launcher == 'pytorch' and args.local_rank == 1

    no_base = copy.deepcopy(configs['mmdet'])
    no_base.auto_scale_lr = dict(enable=False)
    with pytest.raises(ConfigError, match='auto_scale_lr'):
        _setup(configs, 'mmdet', '--auto-scale-lr', kind='train', cfg=no_base)

    # mmpretrain's tools fill in its dataloader defaults.
    cfg = _setup(configs, 'mmpretrain', '--no-pin-memory', kind='train')
    loader = cfg.train_dataloader
    assert loader.pin_memory is False and loader.collate_fn.type == \
        'default_collate'
    assert 'persistent_workers' in loader and not loader.persistent_workers


def test_tta_configs(configs):
    cfg = _setup(configs, 'mmdet', '--tta')
    assert cfg.load_from == 'ckpt.pth'
    assert cfg.model.type == MASK_TTA
    assert cfg.model.module.type == 'MaskRCNN'
    assert cfg.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'

    cfg = _setup(configs, 'mmseg', '--tta')
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'EncoderDecoder'
    assert cfg.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'
    no_tta = copy.deepcopy(configs['mmseg'])
    no_tta.tta_pipeline = None
    no_tta._cfg_dict.pop('tta_pipeline')
    with pytest.raises(ConfigError, match='no tta_pipeline'):
        _setup(configs, 'mmseg', '--tta', cfg=no_tta)

    cfg = _setup(configs, 'mmpretrain', '--tta', '--out', 'r.pkl',
                 '--out-item', 'metrics')
    assert cfg.model.type == 'mmpretrain.AverageClsScoreTTA'
    assert cfg.model.module.type == 'ImageClassifier'
    flips = cfg.test_dataloader.dataset.pipeline[-1]
    assert flips.type == 'TestTimeAug' and len(flips.transforms[0]) == 2


@pytest.mark.parametrize('library', ['mmpretrain', 'mmdet', 'mmseg'])
def test_amp_test_flag(configs, library):
    cfg = _setup(configs, library, '--amp')
    assert cfg.test_cfg.fp16 is True
    assert cfg.test_cfg.type == 'AmpTestLoop'
    custom = copy.deepcopy(configs[library])
    custom.test_cfg = dict(type='MyTestLoop')
    cfg = _setup(configs, library, '--amp', cfg=custom)
    assert cfg.test_cfg.type == 'MyTestLoop' and cfg.test_cfg.fp16 is True


def test_out_and_show(configs):
    cfg = _setup(configs, 'mmseg', '--out', 'preds', '--show-dir', 'vis')
    assert cfg.test_evaluator.output_dir == 'preds'
    assert cfg.test_evaluator.keep_results is True
    assert cfg.visualizer.save_dir == 'vis'
    assert cfg.default_hooks.visualization.draw is True
    cfg = _setup(configs, 'mmdet', '--show-dir', 'vis')
    assert cfg.default_hooks.visualization.test_out_dir == 'vis'
    cfg = _setup(configs, 'mmpretrain', '--show-dir', 'vis')
    assert cfg.default_hooks.visualization.out_dir == 'vis'
    with pytest.raises(UsageError, match='must be a .pkl file'):
        _setup(configs, 'mmdet', '--out', 'preds.json')
    with pytest.raises(UsageError, match='--out-item needs --out'):
        apis.parse_test_args(['c.py', 'k.pth', '--out-item', 'pred'])


def test_cpu_distributed_config(configs, monkeypatch):
    import mmengine.dist
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(mmengine.dist, 'is_distributed', lambda: False)
    monkeypatch.setattr(mmengine.dist, 'init_dist',
                        lambda launcher, **kw: calls.append((launcher, kw)))
    cfg = _setup(configs, 'mmseg', '--launcher', 'pytorch', kind='train')
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    apis.setup_cpu_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == CPU_DDP
    assert calls == [('pytorch', dict(backend='gloo'))]

    cfg = _setup(configs, 'mmseg', kind='train')  # one process: untouched
    apis.setup_cpu_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert 'model_wrapper_cfg' not in cfg
