# Copyright (c) mmvheat contributors. All rights reserved.
"""Export a vHeat backbone (or, with ``--full``, its classifier/segmentor)
to ONNX and check the result against PyTorch with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT \\
        --shape H W --out FILE [--full] [--opset N] [--non-strict] \\
        [--cfg-options ...]

``CHECKPOINT`` may be ``none`` (random initialisation, for tests); a
checkpoint that does not fit the model is refused unless ``--non-strict``.
The model is switched to deploy mode; the graph holds the folded filters
and is valid for ``H x W`` only. How the export is checked:
:mod:`mmvheat.apis.onnx_export`. Exits with 1 and writes no file when
anything fails.
"""
import argparse
import os.path as osp
import sys

from mmvheat.apis import (CheckpointMismatchError, add_model_args,
                          checkpoint_arg)
from mmvheat.apis.onnx_export import DEFAULT_OPSET, ExportError, export_onnx
from mmvheat.utils.io import first_line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a vHeat backbone (or full classifier/segmentor) '
        'to ONNX and check it with onnxruntime')
    add_model_args(parser)
    parser.add_argument(
        '--shape',
        type=int,
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


def main(argv=None):
    args = parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        print(f'error: {exc}; install onnx and onnxruntime', file=sys.stderr)
        return 1
    try:
        model, report = export_onnx(
            args.config,
            checkpoint_arg(args.checkpoint),
            tuple(args.shape),
            args.out,
            full=args.full,
            opset=args.opset,
            atol=args.atol,
            seed=args.seed,
            cfg_options=args.cfg_options,
            strict=not args.non_strict)
    except (ExportError, CheckpointMismatchError, ValueError,
            FileNotFoundError) as exc:
        print(f'error: {first_line(exc)}', file=sys.stderr)
        return 1
    what = 'full model' if args.full else 'backbone'
    print(f'exported the {what} of {type(model).__name__} '
          f'({model.cfg.default_scope}) for input '
          f'1x3x{args.shape[0]}x{args.shape[1]}, opset {args.opset}, '
          'TorchScript exporter')
    for name, shape, err in report:
        print(f'  {name}: shape {shape}, max abs error {err:.3e}')
    max_err = max(err for _, _, err in report)
    print(f'max abs error vs PyTorch: {max_err:.3e} (atol {args.atol:g})')
    size = osp.getsize(args.out)
    print(f'saved {args.out} ({size / 2**20:.2f} MiB, {size} bytes)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
