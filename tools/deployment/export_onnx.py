# Copyright (c) mmvheat contributors. All rights reserved.
"""Export a vHeat backbone (or, with ``--full``, its classifier/segmentor)
to ONNX and check the result against PyTorch with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT \\
        --shape H W --out FILE [--full] [--opset N] [--non-strict] \\
        [--trust-checkpoint] [--cfg-options ...]
    python tools/deployment/export_onnx.py CONFIG --random-weights ...

The checkpoint is loaded strictly: one that leaves weights of the model
unset, holds weights the model lacks or of another shape is refused unless
``--non-strict``. ``--random-weights`` exports the random initialisation
instead (for testing the export itself). The model is switched to deploy
mode; the graph holds the folded filters and is valid for ``H x W`` only.
How the export is checked: :mod:`mmvheat.apis.onnx_export`. A bad input
ends it with one line and exit status 1 (2 for bad options), and no file
is written.
"""
import argparse
import os.path as osp
import sys

from mmvheat.apis import add_model_args
from mmvheat.apis.onnx_export import DEFAULT_OPSET, export_onnx
from mmvheat.utils.io import ToolError, UsageError, image_side, run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a vHeat backbone (or full classifier/segmentor) '
        'to ONNX and check it with onnxruntime')
    add_model_args(parser, checkpoint='optional')
    parser.add_argument(
        '--random-weights',
        action='store_true',
        help='export the random initialisation, without a checkpoint (to '
        'test the export)')
    parser.add_argument(
        '--shape',
        type=image_side,
        nargs=2,
        required=True,
        metavar=('H', 'W'),
        help='input height and width (the graph is fixed to this size)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument(
        '--full',
        action='store_true',
        help='export the whole classifier/segmentor (mode="tensor"), not '
        'only the backbone')
    parser.add_argument(
        '--opset',
        type=int,
        default=DEFAULT_OPSET,
        help=f'ONNX opset version (default {DEFAULT_OPSET})')
    parser.add_argument(
        '--atol',
        type=float,
        default=1e-4,
        help='largest max-abs error accepted against PyTorch (default 1e-4)')
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of the random input')
    return parser.parse_args(argv)


def _checkpoint(args):
    if args.random_weights and args.checkpoint is not None:
        raise UsageError('give a CHECKPOINT or --random-weights, not both')
    if args.random_weights:
        return None
    if args.checkpoint is None:
        raise UsageError('a CHECKPOINT is required (--random-weights exports '
                         'random weights, for testing the export)')
    if args.checkpoint.lower() == 'none':
        raise UsageError("CHECKPOINT 'none': pass --random-weights to "
                         'export random weights')
    return args.checkpoint


def export(args):
    """Export as ``args`` say; returns the summary lines."""
    checkpoint = _checkpoint(args)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ToolError(f'{exc}; install onnx and onnxruntime') from None
    model, report = export_onnx(
        args.config,
        checkpoint,
        tuple(args.shape),
        args.out,
        full=args.full,
        opset=args.opset,
        atol=args.atol,
        seed=args.seed,
        cfg_options=args.cfg_options,
        strict=not args.non_strict,
        trust=args.trust_checkpoint,
        allow_nonfinite=args.allow_nonfinite)
    what = 'full model' if args.full else 'backbone'
    weights = 'random weights' if checkpoint is None else checkpoint
    lines = [
        f'exported the {what} of {type(model).__name__} '
        f'({model.cfg.default_scope}, {weights}) for input '
        f'1x3x{args.shape[0]}x{args.shape[1]}, opset {args.opset}, '
        'TorchScript exporter'
    ]
    lines += [
        f'  {name}: shape {shape}, max abs error {err:.3e}'
        for name, shape, err in report
    ]
    max_err = max(err for _, _, err in report)
    size = osp.getsize(args.out)
    lines += [
        f'max abs error vs PyTorch: {max_err:.3e} (atol {args.atol:g})',
        f'saved {args.out} ({size / 2**20:.2f} MiB, {size} bytes)'
    ]
    return lines


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: export(args))


if __name__ == '__main__':
    sys.exit(main())
