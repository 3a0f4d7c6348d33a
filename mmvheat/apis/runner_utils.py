# Copyright (c) mmvheat contributors. All rights reserved.
"""One ``train``/``test`` entry point for mmpretrain, mmdet and mmseg configs.

``tools/train.py`` and ``tools/test.py`` are thin wrappers around
:func:`train` and :func:`test`. The library is taken from the config's
``default_scope`` (``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``, which every
config inheriting the libraries' ``_base_/default_runtime.py`` has); the flags
and what they do to the config follow each library's own ``tools/train.py``
and ``tools/test.py`` (mmdet 3.3, mmseg 1.2, mmpretrain 1.2), with these
additions:

* Without CUDA, a distributed run (``--launcher pytorch|slurm|mpi``) uses the
  ``gloo`` backend, and the model is wrapped for data parallelism on the CPU,
  so ``GPUS=2 bash tools/dist_train.sh ...`` runs two CPU processes (see
  :mod:`mmvheat.apis.distributed`). A config
  whose model uses ``SyncBN`` still cannot train distributed on the CPU
  (torch's SyncBatchNorm needs a GPU); a warning says so. Single-process runs
  are unaffected: mmengine reverts SyncBN to BN there.
* A distributed run ends with a barrier and ``destroy_process_group``: left
  to the interpreter's exit, gloo sometimes aborted the process that
  finished first.
* ``--tta`` on a detection config: mmdet's ``DetTTAModel`` refuses
  instance masks (Mask R-CNN...), so the tools use
  ``mmvheat.MaskDetTTAModel`` in its place, which merges the views as
  ``DetTTAModel`` does and carries the masks along.
* ``--tta`` on a segmentation config without ``tta_model``/``tta_pipeline``
  raises a clear error (mmseg has no default); mmdet and mmpretrain configs
  get their library's default flip TTA, as their tools do.
* Testing switches the mmvheat backbones to deploy mode (their inference
  specialisation) once the checkpoint is loaded; validation during training
  runs the training model.
* mmdet and mmseg configs need mmcv in the range mmdet 3.3 and mmseg 1.2
  support; another mmcv is refused with the fix.
* Checkpoints (``--resume``, ``load_from``, ``Pretrained`` init, the tested
  checkpoint) load with ``weights_only=True`` unless ``--trust-checkpoint``
  (:func:`mmvheat.utils.checkpoint_loading.mmengine_checkpoint_loading`).
* Testing loads the checkpoint strictly: one that leaves weights of the
  model unset, holds weights the model lacks or of another shape is an
  error listing them, unless ``--non-strict`` (mmengine only warns, and
  would test random weights).
* Without CUDA, a config's ``AmpOptimWrapper`` trains with
  ``CPUAmpOptimWrapper`` (:func:`mmvheat.apis.configs.setup_train_cfg`).
* A bad input (a missing or broken config, an unknown type, an unreadable
  checkpoint, one that does not fit, a work dir that cannot be written)
  ends the tool with one line and exit status 1 (:func:`run_cli`).

Import :mod:`mmvheat` before anything imports mmpretrain, torchvision or
loads a checkpoint (the tools do): it lets torch >= 2.6 load mmengine
checkpoints with ``weights_only=True`` and torchvision import on CPU-only
torch.
"""
import os.path as osp
import re
from typing import Callable, List, Optional

from mmengine.config import Config
from mmengine.hooks import Hook

from mmvheat.utils.checkpoint_loading import mmengine_checkpoint_loading
from mmvheat.utils.io import ensure_directory, run_tool
from mmvheat.utils.versions import IncompatibleVersionError
from .arguments import parse_test_args, parse_train_args
from .configs import (add_dump_metric, config_name, load_config,
                      registry_errors_explained, setup_test_cfg,
                      setup_train_cfg)
from .distributed import setup_cpu_distributed, shutdown_distributed
from .libraries import build_runner, detect_library, register_library
from .model import CheckpointMismatchError, fit_state_dict

__all__ = ['StrictCheckpointHook', 'train', 'test', 'run_cli']


class StrictCheckpointHook(Hook):
    """Refuse a checkpoint that does not fit the model, before the runner
    loads it (``Runner.load_checkpoint`` loads non-strictly and only warns).

    The checkpoint's weights are compared as the runner loads them: a
    ``module.`` prefix removed, into the model inside data-parallel and
    test-time-augmentation wrappers (see :func:`mmvheat.apis.fit_state_dict`).

    Args:
        source (str): The checkpoint, named in the error.
    """
    priority = 'VERY_HIGH'

    def __init__(self, source: str):
        self.source = source

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state_dict = checkpoint.get('state_dict', checkpoint)
        if not isinstance(state_dict, dict):
            raise CheckpointMismatchError(
                f'{self.source} holds no state dict (a '
                f'{type(state_dict).__name__})')
        state_dict = {
            re.sub(r'^module\.', '', key): value
            for key, value in state_dict.items()
        }
        fit_state_dict(runner.model, state_dict, self.source)


def _build_runner(args, setup_cfg):
    """The runner of the config ``args`` name, set up by ``setup_cfg``."""
    cfg: Config = load_config(args)
    library = detect_library(cfg)
    register_library(library)
    cfg = setup_cfg(cfg, args, library)
    ensure_directory(cfg.work_dir, 'the work dir')
    setup_cpu_distributed(cfg)
    with registry_errors_explained(config_name(cfg)):
        return build_runner(cfg, library), library


def train(argv: Optional[List[str]] = None):
    """``tools/train.py``; returns the runner after training."""
    args = parse_train_args(argv)
    with mmengine_checkpoint_loading(args.trust_checkpoint):
        runner, _ = _build_runner(args, setup_train_cfg)
        with registry_errors_explained(args.config):
            runner.train()
    shutdown_distributed()
    return runner


def _check_out(args, library: str) -> None:
    """``--out`` can be written: a folder for mmseg, a file otherwise."""
    if args.out is None:
        return
    if library == 'mmseg':
        ensure_directory(args.out, '--out')
    else:
        ensure_directory(osp.dirname(osp.abspath(args.out)), '--out')


def test(argv: Optional[List[str]] = None):
    """``tools/test.py``; returns the metrics."""
    args = parse_test_args(argv)
    with mmengine_checkpoint_loading(args.trust_checkpoint):
        runner, library = _build_runner(args, setup_test_cfg)
        _check_out(args, library)
        if not args.non_strict:
            runner.register_hook(StrictCheckpointHook(args.checkpoint))
        add_dump_metric(runner, args, library)
        with registry_errors_explained(args.config):
            metrics = runner.test()
    if args.out and library == 'mmpretrain' and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)
    shutdown_distributed()
    return metrics


def run_cli(entry: Callable[[Optional[List[str]]], object],
            argv: Optional[List[str]] = None) -> int:
    """Run :func:`train` or :func:`test` for a person at a terminal.

    A known bad input (:class:`mmvheat.utils.io.ToolError`: a config that
    cannot be read or names an unknown type, a checkpoint that cannot be
    read or does not fit, a work dir that cannot be written; an unsupported
    mmcv) ends it with one line on stderr; anything else is a bug and keeps
    its traceback (:func:`mmvheat.utils.io.run_tool`).

    Returns:
        int: The exit status.
    """
    return run_tool(
        lambda: entry(argv) and None,
        input_errors=(IncompatibleVersionError, ))
