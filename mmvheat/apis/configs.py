# Copyright (c) mmvheat contributors. All rights reserved.
"""Reading a config, and what the train and test flags do to it, as in each
library's own ``tools/train.py`` and ``tools/test.py``; see
:mod:`mmvheat.apis.runner_utils` for the additions.

A config that cannot be read (missing, a directory, a syntax error, an
error in its code or its ``_base_``) or that names a type no registry knows
is a :class:`ConfigError`, one line that names the file.
"""
import ast
import contextlib
import copy
import logging
import os
import os.path as osp
import re
import warnings
from typing import Dict, Iterator, Union

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

from mmvheat.engine import (ATOMIC_BACKEND,
                            mmcv_ops_in_float32_under_cpu_autocast)
from mmvheat.utils.io import ToolError, UsageError, first_line
from .resume import find_resumable_checkpoint

__all__ = [
    'MASK_TTA', 'DEPLOY_HOOK', 'ConfigError', 'config_name', 'read_config',
    'registry_errors_explained', 'load_config', 'merge_common_args',
    'setup_train_cfg', 'setup_test_cfg', 'add_dump_metric',
    'check_config_values', 'run_outputs'
]

MASK_TTA = 'mmvheat.MaskDetTTAModel'
DEPLOY_HOOK = 'SwitchToDeployHook'


class ConfigError(ToolError, ValueError):
    """A config that cannot be read or built; the message names the file."""


def config_name(cfg: Config) -> str:
    """The file a config was read from, for messages."""
    return getattr(cfg, 'filename', None) or 'the config'


def read_config(path: Union[str, os.PathLike]) -> Config:
    """``Config.fromfile``, with every failure a one-line
    :class:`ConfigError`.

    Whatever goes wrong while a config file is read comes from the file:
    its path, its Python (a syntax error, a name it lacks), or the
    ``_base_`` files it inherits.
    """
    path = os.fspath(path)
    if not osp.lexists(path):
        raise ConfigError(f'{path}: no such config file')
    if osp.isdir(path):
        raise ConfigError(f'{path}: is a directory, not a config file')
    try:
        with warnings.catch_warnings():
            # mmengine finds the package of each ``pkg::`` base by reloading
            # pkg_resources, which setuptools 80 answers with a deprecation
            # warning every time; nothing the person can act on.
            warnings.filterwarnings('ignore', 'pkg_resources is deprecated',
                                    UserWarning)
            return Config.fromfile(path)
    except SyntaxError as exc:
        # mmengine parses a copy of the file, so the error does not say
        # which file it is in: this one, or one of its _base_ files.
        try:
            with open(path, encoding='utf-8') as file:
                ast.parse(file.read(), path)
            what = 'a syntax error in one of its _base_ files'
        except SyntaxError:
            what = 'a syntax error'
        where = f' (line {exc.lineno})' if exc.lineno else ''
        raise ConfigError(f'{path}: cannot be read: {what}{where}: '
                          f'{exc.msg or first_line(exc)}') from exc
    except OSError as exc:
        raise ConfigError(f'{path}: cannot be read: '
                          f'{exc.strerror or first_line(exc)}') from exc
    except Exception as exc:  # noqa: B902  (the config's own code failed)
        raise ConfigError(f'{path}: cannot be read: {type(exc).__name__}: '
                          f'{first_line(exc)}') from exc


# mmengine's words for a type no registry in scope has.
_UNKNOWN_TYPE = re.compile(r'''([^\s'"]+) is not in the (\S+) registry''')


@contextlib.contextmanager
def registry_errors_explained(source: str) -> Iterator[None]:
    """Within it, building a type that no registry knows is a
    :class:`ConfigError` naming the type, not mmengine's ``KeyError``.

    Args:
        source (str): The config, named in front of the message.
    """
    try:
        yield
    except KeyError as exc:
        unknown = _UNKNOWN_TYPE.search(str(exc))
        if unknown is None:
            raise
        raise ConfigError(
            f'{source}: unknown type {unknown.group(1)!r} (not in the '
            f'{unknown.group(2)} registry): check its spelling, and '
            'custom_imports for types of other packages') from exc


def load_config(args) -> Config:
    """:func:`read_config` with ``--cfg-options`` merged, work_dir set."""
    return merge_common_args(read_config(args.config), args)


def merge_common_args(cfg: Config, args) -> Config:
    """``--cfg-options``, ``--launcher`` and ``--work-dir``."""
    if args.cfg_options is not None:
        try:
            cfg.merge_from_dict(args.cfg_options)
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(f'{config_name(cfg)}: --cfg-options cannot be '
                              f'merged: {first_line(exc)}') from exc
    cfg.launcher = args.launcher
    # work_dir: CLI > config > ./work_dirs/<config stem>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


def _set_dataloader_defaults(cfg,
                             fields,
                             persistent_workers,
                             no_pin_memory,
                             no_persistent_workers=False):
    """mmpretrain's tools: pin_memory, persistent_workers, default_collate."""
    for field in fields:
        if cfg.get(field, None) is None:
            continue
        # Pinned memory speeds up copies to an accelerator; without one,
        # torch warns that it is unused.
        loader = ConfigDict(
            pin_memory=torch.cuda.is_available(),
            collate_fn=dict(type='default_collate'))
        # torch refuses persistent workers without workers.
        if persistent_workers and cfg[field].get('num_workers', 0) > 0:
            loader.persistent_workers = True
        loader.update(cfg[field])
        if no_pin_memory:
            loader.pin_memory = False
        if no_persistent_workers:
            loader.persistent_workers = False
        cfg[field] = loader


def _amp_on_this_machine(cfg: Config, asked_by: str) -> None:
    """Without CUDA, ``AmpOptimWrapper`` (which asserts a GPU) becomes
    ``CPUAmpOptimWrapper`` with the same dtype; bfloat16 if none is set.

    A dtype the config sets is kept, float16 included: it is part of the
    recipe (float16 with dynamic loss scaling, as on the GPU), and the log
    line says how to choose bfloat16, which most CPUs compute faster.
    Without a dtype, mmengine would autocast to float16 on a GPU; on the
    CPU bfloat16 needs no loss scaling and is the faster one.
    """
    wrapper = cfg.optim_wrapper
    if wrapper.get('type') != 'AmpOptimWrapper' or torch.cuda.is_available():
        return
    wrapper.type = 'CPUAmpOptimWrapper'
    dtype = wrapper.get('dtype', None)
    note = ''
    if dtype is None:
        dtype = wrapper.dtype = 'bfloat16'
    else:
        dtype = str(dtype).replace('torch.', '')
        if dtype == 'float16':
            note = (' float16 is slow on most CPUs; --amp --amp-dtype '
                    'bfloat16 trains in bfloat16.')
    print_log(
        f'No CUDA: {asked_by} trains with {dtype} autocast on the CPU '
        f'(CPUAmpOptimWrapper).{note}',
        logger='current')


def setup_train_cfg(cfg: Config, args, library: str) -> Config:
    """Apply the training flags to ``cfg`` as the library's train.py does.

    Without CUDA, a config's ``AmpOptimWrapper`` (or ``--amp``) trains with
    ``CPUAmpOptimWrapper`` (see :func:`_amp_on_this_machine`).
    """
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.amp_dtype and not args.amp:
        raise UsageError('--amp-dtype needs --amp')
    asked_by = "the config's AmpOptimWrapper"
    if args.amp:
        if args.amp_dtype:
            cfg.optim_wrapper.dtype = args.amp_dtype
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
            print_log(
                'AMP training is already enabled in your config.',
                logger='current',
                level=logging.WARNING)
        else:
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            asked_by = '--amp'
    _amp_on_this_machine(cfg, asked_by)

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr', None)
        if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
            raise ConfigError(
                f'{config_name(cfg)}: --auto-scale-lr needs '
                'auto_scale_lr=dict(enable=False, base_batch_size=...) in '
                'the config; it has none.')
        cfg.auto_scale_lr.enable = True

    # An explicit checkpoint, or 'auto': the newest complete one in work_dir
    # (also for a config that sets resume=True without a file).
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if cfg.get('resume', False) and cfg.get('load_from', None) is None:
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
        cfg.resume = cfg.load_from is not None
    _checkpoints_atomic(cfg)

    if library == 'mmpretrain' or args.no_pin_memory or \
            args.no_persistent_workers:
        _set_dataloader_defaults(
            cfg, ['train_dataloader', 'val_dataloader', 'test_dataloader'],
            persistent_workers=library == 'mmpretrain',
            no_pin_memory=args.no_pin_memory,
            no_persistent_workers=args.no_persistent_workers)
    return cfg


def _checkpoints_atomic(cfg: Config) -> None:
    """Let ``CheckpointHook`` write each checkpoint all at once
    (:class:`mmvheat.engine.AtomicLocalBackend`), unless the config
    chooses where and how it writes."""
    hook = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
    if (hook is None or hook.get('backend_args', None) is not None
            or hook.get('file_client_args', None) is not None
            or '://' in str(hook.get('out_dir', None) or '')):
        return
    hook['backend_args'] = dict(backend=ATOMIC_BACKEND)


def _innermost_dataset(dataset_cfg):
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def _tta_mmdet(cfg: Config) -> None:
    # As mmdet's tools/test.py, plus masks.
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, '
                      'we will set it as default.')
        cfg.tta_model = dict(
            type='DetTTAModel',
            tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, '
                      'we will set it as default.')
        test_data_cfg = _innermost_dataset(cfg.test_dataloader.dataset)
        cfg.tta_pipeline = copy.deepcopy(test_data_cfg.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(type='RandomFlip', prob=1.),
                    dict(type='RandomFlip', prob=0.)
                ],
                [
                    dict(
                        type='PackDetInputs',
                        meta_keys=('img_id', 'img_path', 'ori_shape',
                                   'img_shape', 'scale_factor', 'flip',
                                   'flip_direction'))
                ],
            ])
    if cfg.tta_model.get('type') in ('DetTTAModel', 'mmdet.DetTTAModel'):
        # mmdet 3.3's DetTTAModel asserts that there are no masks; this one
        # merges the views the same way and carries the masks along.
        print_log(
            f'--tta: {MASK_TTA} (DetTTAModel, plus instance masks) '
            'merges the views.',
            logger='current')
        cfg.tta_model.type = MASK_TTA
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _tta_mmseg(cfg: Config) -> None:
    # As mmseg's tools/test.py, which has no default.
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        raise ConfigError(
            f'--tta: {config_name(cfg)} has no {"/".join(missing)}; mmseg '
            "configs get them from _base_/default_runtime.py (tta_model = "
            "dict(type='SegTTAModel')) and the dataset base "
            '(tta_pipeline = [...TestTimeAug...]).')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _tta_mmpretrain(cfg: Config) -> None:
    # As mmpretrain's tools/test.py.
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        test_pipeline = cfg.test_dataloader.dataset.pipeline
        cfg.tta_pipeline = copy.deepcopy(test_pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(type='RandomFlip', prob=1.),
                    dict(type='RandomFlip', prob=0.)
                ],
                [test_pipeline[-1]],
            ])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def _show(cfg: Config, args, library: str) -> None:
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise ConfigError(f'{config_name(cfg)}: --show and --show-dir need a '
                          'VisualizationHook in default_hooks: '
                          "visualization=dict(type='VisualizationHook')")
    hook = hooks['visualization']
    if library == 'mmpretrain':
        hook.enable = True
        hook.show = args.show
        hook.wait_time = args.wait_time
        hook.out_dir = args.show_dir
        hook.interval = args.interval
        return
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if library == 'mmdet':
            hook['test_out_dir'] = args.show_dir
        else:  # mmseg
            cfg.visualizer['save_dir'] = args.show_dir


def setup_test_cfg(cfg: Config, args, library: str) -> Config:
    """Apply the test flags to ``cfg`` as the library's test.py does.

    ``--out`` for mmdet and mmpretrain is handled by :func:`add_dump_metric`
    once the runner exists. The mmvheat backbones are switched to deploy
    mode once the checkpoint is loaded (``SwitchToDeployHook``).
    """
    cfg.load_from = args.checkpoint
    cfg.custom_hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(hook.get('type') == DEPLOY_HOOK for hook in cfg.custom_hooks):
        cfg.custom_hooks.append(dict(type=DEPLOY_HOOK))
    if args.amp:
        cfg.test_cfg = cfg.get('test_cfg', None) or ConfigDict()
        cfg.test_cfg.fp16 = True
        if cfg.test_cfg.get('type', 'TestLoop') == 'TestLoop':
            # The same loop, with float32 predictions for the metrics.
            cfg.test_cfg.type = 'AmpTestLoop'
        if not torch.cuda.is_available():
            # mmengine's test loop then autocasts to bfloat16 on the CPU,
            # where mmcv's compiled ops take float32 only.
            mmcv_ops_in_float32_under_cpu_autocast()
    if args.show or args.show_dir:
        _show(cfg, args, library)
    if args.tta:
        dict(
            mmdet=_tta_mmdet, mmseg=_tta_mmseg,
            mmpretrain=_tta_mmpretrain)[library](
                cfg)
    if args.out is not None:
        if library == 'mmdet':
            if not args.out.endswith(('.pkl', '.pickle')):
                raise UsageError(f'--out {args.out}: the dump file of a '
                                 'detector must be a .pkl file')
        elif library == 'mmseg':
            evaluators = cfg.test_evaluator
            if isinstance(evaluators, dict):
                evaluators = [evaluators]
            for evaluator in evaluators:
                evaluator['output_dir'] = args.out
                evaluator['keep_results'] = True
    if library == 'mmpretrain' or args.no_pin_memory:
        _set_dataloader_defaults(
            cfg, ['test_dataloader'],
            persistent_workers=False,
            no_pin_memory=args.no_pin_memory)
    return cfg


def add_dump_metric(runner, args, library: str) -> None:
    """``--out`` for mmdet (DumpDetResults) and mmpretrain (DumpResults)."""
    if args.out is None:
        return
    if library == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    elif library == 'mmpretrain' and args.out_item in ('pred', None):
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))


# -- values a config may hold -------------------------------------------------
_TRAIN_LOADERS = ('train_dataloader', 'val_dataloader')
_TEST_LOADERS = ('test_dataloader', )
_LOOP_COUNTS = ('max_iters', 'max_epochs', 'val_interval', 'val_begin')


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config_values(cfg: Config, training: bool) -> None:
    """Refuse, in one line, values torch or mmengine would fail on only
    later, in a traceback: a dataloader's ``batch_size`` (a positive
    integer), ``num_workers`` (an integer of at least 0) and
    ``persistent_workers`` (needs workers); for training, the loop's counts
    (positive integers, ``val_begin`` at least 0) and the optimizer's
    ``lr`` (a number of at least 0).

    Raises:
        ConfigError: naming the config and the value.
    """
    name = config_name(cfg)

    def refuse(what: str):
        raise ConfigError(f'{name}: {what}')

    for field in _TRAIN_LOADERS if training else _TEST_LOADERS:
        loader = cfg.get(field, None)
        if not loader:
            continue
        batch_size = loader.get('batch_size', 1)
        if not _is_int(batch_size) or batch_size < 1:
            refuse(f'{field}.batch_size must be a positive integer, got '
                   f'{batch_size!r}')
        workers = loader.get('num_workers', 0)
        if not _is_int(workers) or workers < 0:
            refuse(f'{field}.num_workers must be an integer of at least 0, '
                   f'got {workers!r}')
        if loader.get('persistent_workers', False) and workers == 0:
            refuse(f'{field}.persistent_workers=True needs num_workers > 0 '
                   '(torch keeps no workers alive when there are none)')
    if not training:
        return
    loop = cfg.get('train_cfg', None) or {}
    for count in _LOOP_COUNTS:
        value = loop.get(count, None)
        least = 0 if count == 'val_begin' else 1
        if value is not None and (not _is_int(value) or value < least):
            refuse(f'train_cfg.{count} must be an integer of at least '
                   f'{least}, got {value!r}')
    optimizer = (cfg.get('optim_wrapper', None) or {}).get('optimizer', None)
    lr = (optimizer or {}).get('lr', 0)
    if isinstance(lr, bool) or not isinstance(lr,
                                              (int, float)) or not (lr >= 0):
        refuse(f'optim_wrapper.optimizer.lr must be a number of at least 0, '
               f'got {lr!r}')


def run_outputs(cfg: Config, args) -> Dict[str, str]:
    """What a run of ``tools/train.py`` or ``tools/test.py`` writes, by the
    option that names it."""
    outputs = {'--work-dir': cfg.work_dir}
    for option in ('out', 'show_dir'):
        path = getattr(args, option, None)
        if path:
            outputs[f'--{option.replace("_", "-")}'] = path
    return outputs
