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

Import :mod:`mmvheat` before anything imports mmpretrain, torchvision or
loads a checkpoint (the tools do): it lets torch >= 2.6 load mmengine
checkpoints with ``weights_only=True`` and torchvision import on CPU-only
torch.
"""
import sys
from typing import Callable, List, Optional

from mmengine.config import Config

from mmvheat.utils.versions import IncompatibleVersionError
from .arguments import parse_test_args, parse_train_args
from .configs import (add_dump_metric, load_config, setup_test_cfg,
                      setup_train_cfg)
from .distributed import setup_cpu_distributed, shutdown_distributed
from .libraries import build_runner, detect_library, register_library

__all__ = ['train', 'test', 'run_cli']


def _build_runner(args, setup_cfg):
    """The runner of the config ``args`` name, set up by ``setup_cfg``."""
    cfg: Config = load_config(args)
    library = detect_library(cfg)
    register_library(library)
    cfg = setup_cfg(cfg, args, library)
    setup_cpu_distributed(cfg)
    return build_runner(cfg, library), library


def train(argv: Optional[List[str]] = None):
    """``tools/train.py``; returns the runner after training."""
    runner, _ = _build_runner(parse_train_args(argv), setup_train_cfg)
    runner.train()
    shutdown_distributed()
    return runner


def test(argv: Optional[List[str]] = None):
    """``tools/test.py``; returns the metrics."""
    args = parse_test_args(argv)
    runner, library = _build_runner(args, setup_test_cfg)
    add_dump_metric(runner, args, library)
    metrics = runner.test()
    if args.out and library == 'mmpretrain' and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)
    shutdown_distributed()
    return metrics


def run_cli(entry: Callable[[], object]) -> None:
    """Run a tool's entry point for a person at a terminal: an unsupported
    mmcv ends it with one line on stderr (what is needed and how to get it)
    and exit status 1."""
    try:
        entry()
    except IncompatibleVersionError as exc:
        sys.exit(f'error: {exc}')
