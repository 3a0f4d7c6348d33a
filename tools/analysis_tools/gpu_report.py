# Copyright (c) mmvheat contributors. All rights reserved.
"""A GPU report of the heat conduction operator and of vHeat-T, in one run.

What is measured and how: :mod:`mmvheat.analysis.gpu_report`. Needs torch,
mmengine and mmvheat (Triton for the kernels; matplotlib for the figure and
mmpretrain for Swin-T when they can be imported). Each line of the report
goes to stderr as it is measured; the tables and the PASS/FAIL lines of the
targets are printed at the end.

Outputs: ``OUT/gpu_report_ops.csv``, ``OUT/gpu_report_models.csv`` and
``OUT/gpu_report.txt`` (written as the work goes, so a stopped run leaves
its results), ``OUT/gpu_report_targets.csv`` and ``OUT/gpu_report.png``.

On a GPU (within 8 minutes)::

    python tools/analysis_tools/gpu_report.py --out-dir work_dirs/gpu_report

Without one, the report's logic on tiny shapes (kernels in Triton's
interpreter: ``TRITON_INTERPRET=1`` is set for ``--device cpu`` before the
kernels are imported)::

    python tools/analysis_tools/gpu_report.py --device cpu --quick \\
        --out-dir work_dirs/gpu_report_cpu
"""
import argparse
import os
import sys
from functools import partial

import torch

from mmvheat.utils.io import UsageError, ensure_directory, run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='GPU report: the HCO and vHeat-T against the published '
        'formulation and Swin-T',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('Outputs:')[1])
    p.add_argument('--out-dir', default='work_dirs/gpu_report')
    p.add_argument(
        '--device',
        default=None,
        help='cuda (default) or cuda:N; cpu needs --quick')
    p.add_argument(
        '--quick',
        action='store_true',
        help='tiny shapes and few repeats (a check of the logic)')
    p.add_argument(
        '--max-minutes',
        type=float,
        default=8.,
        help='time budget; the most important work runs first (default: 8)')
    return p.parse_args(argv)


def _progress(line: str):
    print(line, file=sys.stderr, flush=True)


def report(args):
    """Run the report; returns the lines to print."""
    device = torch.device(args.device or 'cuda')
    if device.type != 'cuda' and not args.quick:
        raise UsageError(f'--device {device} needs --quick: the full report '
                         'sizes its work for a GPU')
    if args.max_minutes <= 0:
        raise UsageError('--max-minutes must be positive')
    ensure_directory(args.out_dir, '--out-dir')
    if device.type != 'cuda':
        # Triton reads it when the kernels are imported (next line).
        os.environ.setdefault('TRITON_INTERPRET', '1')
    from mmvheat.analysis.gpu_report import run_report
    return run_report(
        args.out_dir,
        device,
        quick=args.quick,
        max_minutes=args.max_minutes,
        progress=_progress)['lines'][3:]


def main(argv=None):
    args = parse_args(argv)
    return run_tool(partial(report, args))


if __name__ == '__main__':
    sys.exit(main())
