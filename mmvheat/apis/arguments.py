# Copyright (c) mmvheat contributors. All rights reserved.
"""The command lines of ``tools/train.py`` and ``tools/test.py``.

The flags follow each library's own ``tools/train.py`` and ``tools/test.py``
(mmdet 3.3, mmseg 1.2, mmpretrain 1.2); see :mod:`mmvheat.apis.runner_utils`.
"""
import argparse
import os
from typing import Optional, Sequence

from mmengine.config import DictAction

from mmvheat.utils.io import UsageError, add_trust_option
from mmvheat.utils.weights import ALLOW_NONFINITE_OPTION

__all__ = [
    'train_parser', 'test_parser', 'parse_train_args', 'parse_test_args',
    'add_model_args', 'add_non_strict_option', 'add_allow_nonfinite_option',
    'checkpoint_arg', 'metrics_format'
]

_CFG_OPTIONS_HELP = (
    'override some settings in the used config, the key-value pair in '
    'xxx=yyy format will be merged into config file. If the value to be '
    'overwritten is a list, it should be like key="[a,b]" or key=a,b It also '
    'allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note that the '
    'quotation marks are necessary and that no white space is allowed.')


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='whether to disable the pin_memory option in dataloaders.')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help=_CFG_OPTIONS_HELP)
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_trust_option(parser)
    add_allow_nonfinite_option(parser)


def add_non_strict_option(parser: argparse.ArgumentParser) -> None:
    """``--non-strict``: accept a checkpoint that does not fit the model."""
    parser.add_argument(
        '--non-strict',
        action='store_true',
        help='accept a checkpoint that leaves weights of the model unset, '
        'holds weights the model lacks or of another shape (they are listed '
        'as warnings)')


def add_allow_nonfinite_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-nonfinite``: load weights with NaN or Inf values."""
    parser.add_argument(
        ALLOW_NONFINITE_OPTION,
        action='store_true',
        help='load a checkpoint whose weights hold NaN or Inf values (to '
        'inspect it); refused otherwise')


#: How ``--out`` files of metrics are written, by suffix.
_METRICS_FORMATS = {
    '.json': 'json',
    '.yaml': 'yaml',
    '.yml': 'yaml',
    '.pkl': 'pkl',
    '.pickle': 'pkl'
}


def metrics_format(path: str) -> Optional[str]:
    """mmengine's file format for metrics written to ``path``, or None."""
    return _METRICS_FORMATS.get(os.path.splitext(path)[1].lower())


def _parser(what: str, work_dir_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f'{what.capitalize()} an mmpretrain, mmdet or mmseg '
        "model (the library is the config's default_scope)")
    parser.add_argument('config', help=f'{what.split()[0]} config file path')
    if what.startswith('test'):
        parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help=work_dir_help)
    return parser


def train_parser() -> argparse.ArgumentParser:
    parser = _parser('train', 'the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint in the work '
        'directory.')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (on a GPU with '
        "mmengine's AmpOptimWrapper, on the CPU with CPUAmpOptimWrapper)")
    parser.add_argument(
        '--amp-dtype',
        choices=['float16', 'bfloat16'],
        help='the autocast dtype of --amp (default: float16 with dynamic '
        'loss scaling on a GPU, bfloat16 on the CPU, where float16 is slow)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='enable automatically scaling LR (the config needs '
        'auto_scale_lr.base_batch_size)')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='whether not to evaluate the checkpoint during training')
    parser.add_argument(
        '--no-persistent-workers',
        action='store_true',
        help='whether to disable the persistent_workers option in '
        'dataloaders.')
    _add_common_args(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    parser = _parser(
        'test (and evaluate)',
        'the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out',
        type=str,
        help='mmdet, mmpretrain: dump predictions to this pickle file for '
        'offline evaluation; mmseg: the directory to save the predicted '
        'segmentation maps to')
    parser.add_argument(
        '--out-item',
        choices=['metrics', 'pred'],
        help='mmpretrain only: whether --out holds the metrics or the '
        'predictions (default)')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, '
        'it will be automatically saved to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--interval',
        type=int,
        default=1,
        help='mmpretrain only: visualize per interval samples.')
    parser.add_argument(
        '--tta',
        action='store_true',
        help="Test-time augmentation with the config's tta_model and "
        'tta_pipeline; mmdet and mmpretrain configs without them get flip '
        'TTA, as with their own tools.')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='test with automatic mixed precision (test_cfg.fp16)')
    add_non_strict_option(parser)
    _add_common_args(parser)
    return parser


def _parse(parser, argv):
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def parse_train_args(argv: Optional[Sequence[str]] = None):
    return _parse(train_parser(), argv)


def parse_test_args(argv: Optional[Sequence[str]] = None):
    args = _parse(test_parser(), argv)
    if args.out is None and args.out_item is not None:
        raise UsageError('--out-item needs --out (the file to write)')
    if args.out_item == 'metrics' and metrics_format(args.out) is None:
        raise UsageError(
            f'--out {args.out}: metrics are written as '
            f'{", ".join(sorted(_METRICS_FORMATS))}; choose one of these '
            'suffixes')
    return args


def add_model_args(parser: argparse.ArgumentParser,
                   checkpoint: str = 'positional') -> None:
    """The arguments of the tools that build a config's model with
    :func:`mmvheat.apis.build_model`: ``config``, the checkpoint,
    ``--cfg-options``, ``--non-strict`` and ``--trust-checkpoint``.

    Args:
        parser (argparse.ArgumentParser): The tool's parser.
        checkpoint (str): ``'positional'``: a positional argument that may
            be ``none`` (random weights); ``'optional'``: a positional
            argument that may be left out; ``'option'``: ``--checkpoint``.
            Defaults to ``'positional'``.
    """
    parser.add_argument('config', help='config file path')
    if checkpoint == 'positional':
        parser.add_argument(
            'checkpoint', help="checkpoint file, or 'none' for random weights")
    elif checkpoint == 'optional':
        parser.add_argument('checkpoint', nargs='?', help='checkpoint file')
    elif checkpoint == 'option':
        parser.add_argument(
            '--checkpoint', help='weights to load (checked against the model)')
    else:
        raise ValueError(f'checkpoint must be positional, optional or '
                         f'option, got {checkpoint!r}')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help=_CFG_OPTIONS_HELP)
    add_non_strict_option(parser)
    add_trust_option(parser)
    add_allow_nonfinite_option(parser)


def checkpoint_arg(value: Optional[str]) -> Optional[str]:
    """A checkpoint argument: None for ``none`` (random weights)."""
    return None if value is None or value.lower() == 'none' else value
