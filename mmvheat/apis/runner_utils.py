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
from typing import Callable, List, Optional

import mmengine
from mmengine.config import Config
from mmengine.hooks import Hook

from mmvheat.utils.checkpoint_loading import mmengine_checkpoint_loading
from mmvheat.utils.io import (atomic_write, check_outputs, ensure_directory,
                              run_tool)
from mmvheat.utils.versions import IncompatibleVersionError
from mmvheat.utils.weights import check_state_dict
from .arguments import metrics_format, parse_test_args, parse_train_args
from .configs import (add_dump_metric, check_config_values, config_name,
                      load_config, registry_errors_explained, run_outputs,
                      setup_test_cfg, setup_train_cfg)
from .distributed import setup_cpu_distributed, shutdown_distributed
from .libraries import build_runner, detect_library, register_library
from .model import checkpoint_state_dict, fit_state_dict, unwrap_model
from .resume import check_resume_state, resume_errors_explained

__all__ = ['CheckedCheckpointHook', 'train', 'test', 'run_cli']


class CheckedCheckpointHook(Hook):
    """Check a checkpoint before the runner uses it.

    ``Runner.load_checkpoint`` loads non-strictly and only warns, keeps a
    weight that is no tensor at its random initialisation, and
    ``Runner.resume`` resumes whatever iteration, seed and states the file
    gives. The checkpoint's weights are compared as the runner loads them:
    a ``module.`` prefix removed, into the model inside data-parallel and
    test-time-augmentation wrappers.

    Args:
        source (str): The checkpoint, named in the errors.
        strict (bool, optional): Load the weights strictly, refusing a
            checkpoint that does not fit (:func:`mmvheat.apis.
            fit_state_dict`) or log what does not fit. None: check only that
            the weights are weights and leave the loading to mmengine (what
            training's ``load_from`` does, where a head of another size is
            usual). Defaults to None.
        allow_nonfinite (bool): Accept NaN and Inf weights. Defaults to
            False.
        resume (bool): The runner resumes from it: check its training
            state (:func:`mmvheat.apis.resume.check_resume_state`).
            Defaults to False.
    """
    priority = 'VERY_HIGH'

    def __init__(self,
                 source: str,
                 strict: Optional[bool] = None,
                 allow_nonfinite: bool = False,
                 resume: bool = False):
        self.source = source
        self.strict = strict
        self.allow_nonfinite = allow_nonfinite
        self.resume = resume

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        state_dict = checkpoint_state_dict(checkpoint, self.source)
        model = unwrap_model(runner.model)
        if self.strict is None:
            check_state_dict(state_dict, self.source, model.state_dict(),
                             self.allow_nonfinite)
        else:
            fit_state_dict(model, state_dict, self.source, self.strict,
                           self.allow_nonfinite)
        if self.resume:
            check_resume_state(checkpoint, runner, self.source)


def _build_runner(args, setup_cfg, inputs):
    """The runner of the config ``args`` name, set up by ``setup_cfg``.

    ``inputs(args, cfg)`` lists the files the run reads, which no output
    may be.
    """
    cfg: Config = load_config(args)
    library = detect_library(cfg)
    register_library(library)
    cfg = setup_cfg(cfg, args, library)
    check_config_values(cfg, training=setup_cfg is setup_train_cfg)
    check_outputs(run_outputs(cfg, args), inputs(args, cfg))
    ensure_directory(cfg.work_dir, 'the work dir')
    setup_cpu_distributed(cfg)
    with registry_errors_explained(config_name(cfg)):
        return build_runner(cfg, library), library, cfg


def _train_inputs(args, cfg) -> List[str]:
    return [args.config] + ([cfg.load_from] if cfg.get('load_from') else [])


def _test_inputs(args, cfg) -> List[str]:
    return [args.config, args.checkpoint]


def _check_out(args, library: str) -> None:
    """``--out`` can be written: a folder for mmseg, a file otherwise."""
    if args.out is None:
        return
    if library == 'mmseg':
        ensure_directory(args.out, '--out')
    else:
        ensure_directory(osp.dirname(osp.abspath(args.out)), '--out')


def train(argv: Optional[List[str]] = None):
    """``tools/train.py``; returns the runner after training."""
    args = parse_train_args(argv)
    with mmengine_checkpoint_loading(args.trust_checkpoint):
        runner, _, cfg = _build_runner(args, setup_train_cfg, _train_inputs)
        if cfg.get('load_from'):
            runner.register_hook(
                CheckedCheckpointHook(
                    cfg.load_from,
                    allow_nonfinite=args.allow_nonfinite,
                    resume=bool(cfg.get('resume'))))
            resume_errors_explained(runner)
        with registry_errors_explained(args.config):
            runner.train()
    shutdown_distributed()
    return runner


def test(argv: Optional[List[str]] = None):
    """``tools/test.py``; returns the metrics."""
    args = parse_test_args(argv)
    with mmengine_checkpoint_loading(args.trust_checkpoint):
        runner, library, _ = _build_runner(args, setup_test_cfg, _test_inputs)
        _check_out(args, library)
        runner.register_hook(
            CheckedCheckpointHook(
                args.checkpoint,
                strict=not args.non_strict,
                allow_nonfinite=args.allow_nonfinite))
        add_dump_metric(runner, args, library)
        with registry_errors_explained(args.config):
            metrics = runner.test()
    if args.out and library == 'mmpretrain' and args.out_item == 'metrics':
        file_format = metrics_format(args.out)
        mode = 'wb' if file_format == 'pkl' else 'w'
        with atomic_write(args.out, mode) as file:
            mmengine.dump(metrics, file, file_format=file_format)
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
