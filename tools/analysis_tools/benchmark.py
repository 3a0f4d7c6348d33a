# Copyright (c) mmvheat contributors. All rights reserved.
"""Speed, memory and FLOPs of vHeat against Swin (and MPViT), and of the HCO.

What is measured and how: :mod:`mmvheat.analysis.benchmark`. Candidates run
side by side (interleaved, median of ``--repeats``), so the ratios are the
result; absolute times on a CPU are informative only. One progress line per
measured configuration goes to stderr.

Outputs: ``OUT/benchmark_models.csv``, ``OUT/benchmark_ops.csv``,
``OUT/benchmark_op_exponents.csv``, ``OUT/benchmark.png`` (throughput, peak
memory and FLOPs against resolution, one line per model and mode, in the
style of the paper's Figure 1) and a printed table.

Models: ``vheat-t`` (deployed for inference), ``vheat-t-plain`` (plain eval
mode), ``vheat-t-pub`` (the published dataflow, ``decay ** k`` recomputed at
every forward), ``vheat-t-pub-fold`` (the published inference mode, folded
at the pretraining size ``--img-size``), the same for ``-s``/``-b``;
``swin-t/s/b`` (needs mmpretrain), ``mpvit-t/xs/s/b``.

GPU (defaults)::

    python tools/analysis_tools/benchmark.py --out-dir work_dirs/benchmark

CPU, like with like against the published formulation::

    python tools/analysis_tools/benchmark.py --device cpu --model-only \\
        --models vheat-t vheat-t-plain vheat-t-pub vheat-t-pub-fold \\
        --resolutions 224 512 --batch-size 8 --mode infer --no-flops \\
        --repeats 7
"""
import argparse
import os.path as osp
import sys
from functools import partial

import torch

from mmvheat.analysis.benchmark import (EXP_COLUMNS, MODEL_COLUMNS,
                                        MODEL_NAMES, OP_COLUMNS,
                                        benchmark_models, benchmark_ops,
                                        format_table, plot, write_csv)
from mmvheat.utils.io import (ensure_directory, int_at_least, parse_device,
                              positive_int, run_tool)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='vHeat vs Swin/MPViT and HCO benchmark',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('Outputs:')[1])
    p.add_argument(
        '--models',
        nargs='+',
        default=[
            'vheat-t', 'vheat-s', 'vheat-b', 'swin-t', 'swin-s', 'swin-b',
            'mpvit-s'
        ],
        choices=MODEL_NAMES,
        metavar='MODEL',
        help='the first one is the baseline of the ratios')
    p.add_argument(
        '--resolutions',
        type=positive_int,
        nargs='+',
        default=[224, 384, 512, 768, 1024])
    p.add_argument(
        '--img-size',
        type=positive_int,
        default=None,
        help="vHeat's pretraining size (default: each resolution)")
    p.add_argument('--batch-size', type=positive_int, default=64)
    p.add_argument(
        '--mode', choices=['infer', 'train', 'both'], default='both')
    p.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32')
    g = p.add_mutually_exclusive_group()
    g.add_argument('--op-only', action='store_true')
    g.add_argument('--model-only', action='store_true')
    p.add_argument(
        '--op-resolutions',
        type=positive_int,
        nargs='+',
        default=[224, 512, 1024])
    p.add_argument(
        '--op-stages',
        type=int,
        nargs='+',
        choices=[0, 1, 2, 3],
        default=[0, 1, 2, 3])
    p.add_argument(
        '--op-batch-size',
        type=positive_int,
        default=None,
        help='default: --batch-size')
    p.add_argument('--repeats', type=positive_int, default=10)
    p.add_argument('--warmup', type=int_at_least(0), default=2)
    p.add_argument(
        '--no-flops',
        action='store_true',
        help='skip the FLOP counts (jit tracing is slow on CPU)')
    p.add_argument(
        '--device', default=None, help='cuda (default when available) or cpu')
    p.add_argument(
        '--threads',
        type=positive_int,
        default=None,
        help='torch.set_num_threads on CPU')
    p.add_argument('--out-dir', default='work_dirs/benchmark')
    args = p.parse_args(argv)
    if args.op_batch_size is None:
        args.op_batch_size = args.batch_size
    return args


def _progress(line: str):
    print(line, file=sys.stderr, flush=True)


def run(args):
    """Measure, write the files; returns the lines to print."""
    device = parse_device(args.device)
    ensure_directory(args.out_dir, '--out-dir')
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (
        torch.cuda.get_device_name(device) if device.type == 'cuda' else
        f'cpu, {torch.get_num_threads()} threads')
    lines = [
        f'device: {where}; dtype {args.dtype}; repeats {args.repeats} '
        '(round-robin, median)'
    ]
    if device.type != 'cuda':
        lines.append('note: peak memory is n/a on CPU (RSS high-water mark '
                     'is per process, not per model); absolute CPU times are '
                     'informative only, compare the ratios')
    _progress(lines[0])
    timing = dict(
        mode=args.mode,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=_progress)
    if not args.model_only:
        op_rows, exps, notes = benchmark_ops(
            device,
            resolutions=args.op_resolutions,
            stages=args.op_stages,
            batch_size=args.op_batch_size,
            **timing)
        lines += [f'note: {note}' for note in notes]
        write_csv(
            osp.join(args.out_dir, 'benchmark_ops.csv'), op_rows, OP_COLUMNS)
        write_csv(
            osp.join(args.out_dir, 'benchmark_op_exponents.csv'), exps,
            EXP_COLUMNS)
        title = (f'HCO op (batch {args.op_batch_size}; speedup = reference '
                 'time / time; max_rel_err = max |y - y_fp32| / max '
                 '|y_fp32| against float32 arithmetic on the unrounded '
                 'input)')
        lines.append(
            format_table(op_rows, [
                'impl', 'input_res', 'stage', 'H', 'C', 'mode', 'median_ms',
                'speedup_vs_reference', 'gmacs_per_s', 'max_rel_err', 'status'
            ], title))
        lines.append(
            format_table(
                exps, EXP_COLUMNS,
                'fitted exponent p of time ~ N^p (N = H*W; MACs ~ N^1.5)'))
    if not args.op_only:
        rows, notes = benchmark_models(
            device,
            args.models,
            resolutions=args.resolutions,
            batch_size=args.batch_size,
            flops=not args.no_flops,
            img_size=args.img_size,
            **timing)
        lines += [f'note: {note}' for note in notes]
        write_csv(
            osp.join(args.out_dir, 'benchmark_models.csv'), rows,
            MODEL_COLUMNS)
        plot(rows, osp.join(args.out_dir, 'benchmark.png'),
             f'{where}, batch {args.batch_size}, {args.dtype}')
        lines.append(
            format_table(
                rows, [
                    'model', 'resolution', 'mode', 'median_ms', 'images_per_s',
                    'speedup_vs_baseline', 'speedup_vs_published',
                    'peak_mem_mb', 'mem_vs_baseline', 'gflops_per_image',
                    'params_m', 'status'
                ], f'models (batch {args.batch_size}; speedup = baseline '
                f'{args.models[0]} time / time; vs_published: like with '
                'like, deployed / -pub-fold, plain / -pub)'))
    lines.append(f'\nwritten to {args.out_dir}')
    return lines


def main(argv=None):
    args = parse_args(argv)
    return run_tool(partial(run, args))


if __name__ == '__main__':
    sys.exit(main())
