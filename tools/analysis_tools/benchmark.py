# Copyright (c) mmvheat contributors. All rights reserved.
"""Speed, memory and FLOPs of vHeat against Swin (and MPViT), and of the HCO.

What is measured and how: :mod:`mmvheat.analysis.benchmark`. Candidates run
side by side (interleaved, median of ``--repeats``), so the ratios are the
result; absolute times on a CPU are informative only. On the CPU the peak
memory of each model row is measured in a process of its own. One progress
line per measured configuration goes to stderr.

Outputs: ``OUT/benchmark_models.csv``, ``OUT/benchmark_ops.csv``,
``OUT/benchmark_op_exponents.csv``, ``OUT/benchmark.png`` (throughput, peak
memory and FLOPs against resolution, one line per model and mode, in the
style of the paper's Figure 1) and a printed table.

Models: ``vheat-t`` (deployed for inference), ``vheat-t-plain`` (plain eval
mode), ``vheat-t-pub`` (the published dataflow, ``decay ** k`` recomputed at
every forward), ``vheat-t-pub-fold`` (the published inference mode, folded
at the pretraining size ``--img-size``), the same for ``-s``/``-b``;
``swin-t/s/b`` (needs mmpretrain), ``mpvit-t/xs/s/b``.

The replays run the published dataflow with our modules. To time the
published code itself, ``--published-repo DIR`` (a checkout of
github.com/MzeroMiko/vHeat; what its ``classification/models/vHeat.py``
imports, timm say, must be installed) adds ``vheat-t-published`` (its
classifier) and ``vheat-t-published-fold`` (its inference mode,
``infer_init()`` at ``--img-size``), the same for ``-s``/``-b``, with the
same weights as the other rows. ``speedup_vs_published`` then divides by
these rows: deployed and ``-pub-fold`` by ``-published-fold``, plain,
training and ``-pub`` by ``-published``; the replays' value is how fast
they run against the code they replay. The models' speed-ups are medians
of each round's ratio.

Operator rows: ``reference`` (four float32 matmuls), ``published``
(``F.conv1d`` transforms) and, on CUDA, each Triton kernel path that takes
the shape (``fused`` up to 32 x 32 grids, ``tiled`` for any; on a CPU one
``triton`` row says they were skipped).

GPU (defaults)::

    python tools/analysis_tools/benchmark.py --out-dir work_dirs/benchmark

CPU, like with like against the published formulation::

    python tools/analysis_tools/benchmark.py --device cpu --model-only \\
        --models vheat-t vheat-t-plain vheat-t-pub vheat-t-pub-fold \\
        --resolutions 224 512 --batch-size 8 --mode infer --no-flops \\
        --repeats 7 --no-memory

Against the published code itself (a checkout in ``../vHeat``)::

    python tools/analysis_tools/benchmark.py --device cpu --model-only \\
        --published-repo ../vHeat --models vheat-t vheat-t-plain \\
        vheat-t-pub vheat-t-pub-fold vheat-t-published \\
        vheat-t-published-fold --resolutions 224 --img-size 224 \\
        --batch-size 8 --mode infer --no-flops --repeats 7 --no-memory

CPU, peak memory only (a process per row; 2048 for inference)::

    python tools/analysis_tools/benchmark.py --device cpu --model-only \\
        --memory-only --models vheat-t swin-t vheat-t-plain vheat-s \\
        vheat-s-plain vheat-b vheat-b-plain vheat-t-pub vheat-t-pub-fold \\
        mpvit-t --resolutions 224 512 1024 --batch-size 1 --no-flops
    python tools/analysis_tools/benchmark.py --device cpu --model-only \\
        --memory-only --models vheat-t swin-t --resolutions 2048 \\
        --batch-size 1 --mode infer --no-flops
"""
import argparse
import math
import os.path as osp
import sys
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from mmvheat.analysis import benchmark as harness
from mmvheat.analysis.flops import hco_macs
from mmvheat.analysis.published_repo import (MODEL_FILE,
                                             import_published_vheat,
                                             is_published_checkout)
from mmvheat.models import VHeat
from mmvheat.utils.io import (ensure_directory, int_at_least, parse_device,
                              positive_int, run_tool)

MODEL_COLUMNS = [
    'model', 'resolution', 'batch_size', 'mode', 'dtype', 'device',
    'median_ms', 'images_per_s', 'speedup_vs_baseline', 'speedup_vs_published',
    'peak_mem_mb', 'mem_vs_baseline', 'gflops_per_image', 'gflops_shared',
    'params_m', 'status'
]
OP_COLUMNS = [
    'impl', 'input_res', 'stage', 'batch_size', 'H', 'W', 'C', 'N', 'mode',
    'dtype', 'device', 'median_ms', 'speedup_vs_reference', 'gmacs',
    'gmacs_per_s', 'max_rel_err', 'status'
]
EXP_COLUMNS = ['impl', 'stage', 'C', 'mode', 'exponent', 'points']
NAN = float('nan')


def fit_exponent(ns: List[float], ts: List[float]) -> float:
    """Least-squares slope of ``log t`` against ``log n``."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts)
           if t > 0 and not math.isnan(t)]
    if len(pts) < 2:
        return NAN
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx)**2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx else NAN


def benchmark_ops(
    device: torch.device,
    resolutions: Sequence[int] = (224, 512, 1024),
    stages: Sequence[int] = (0, 1, 2, 3),
    batch_size: int = 64,
    mode: str = 'both',
    dtype: str = 'fp32',
    repeats: int = 10,
    warmup: int = 2,
    progress: Optional[Callable[[str], None]] = None,
    arch: Union[str,
                dict] = 'tiny') -> Tuple[List[dict], List[str], List[str]]:
    """Time the HCO (``measure_hco``, the kernels on CUDA only: the
    interpreter is no benchmark) at a vHeat's stage shapes, and fit the
    exponent ``p`` of ``time ~ N^p`` (``N = H * W``; the MACs grow as
    ``N^1.5``) per implementation and stage, and over the whole network
    (time summed over its blocks).

    Args:
        device (torch.device): Where to run.
        resolutions (Sequence[int]): Input resolutions of the network.
        stages (Sequence[int]): Stages whose shapes are timed.
        batch_size (int): Images per call.
        mode (str): ``'infer'``, ``'train'`` or ``'both'``.
        dtype (str): ``'fp32'``, ``'bf16'`` or ``'fp16'``.
        repeats (int): Timed calls per candidate.
        warmup (int): Untimed calls per candidate first.
        progress (callable, optional): Called with one line per shape.
        arch (str | dict): The vHeat whose widths and depths are used
            (:meth:`~mmvheat.models.VHeat.parse_arch`). Defaults to
            ``'tiny'``.

    Returns:
        tuple: the rows (:data:`OP_COLUMNS`), the fitted exponents
        (:data:`EXP_COLUMNS`) and notes for the reader.
    """
    settings = VHeat.parse_arch(arch)
    widths, depths = settings['dims'], settings['depths']
    kernels = device.type == 'cuda' and harness.kernels_run_on(device)
    skipped = ('skipped: needs CUDA'
               if device.type != 'cuda' else 'skipped: no compiled Triton')
    notes = [] if kernels else [
        'Triton kernel rows (fused, tiled) skipped: they run on CUDA, '
        'compiled (Triton importable, its interpreter off)'
    ]
    modes = ['infer', 'train'] if mode == 'both' else [mode]
    shapes = [(m, res, s) for m in modes for res in resolutions
              for s in range(len(widths)) if s in stages]
    rows = []
    for done, (m, res, stage) in enumerate(shapes, 1):
        h, w = harness.stage_grid((res, res), stage)
        shape = dict(
            input_res=res,
            stage=stage,
            batch_size=batch_size,
            H=h,
            W=w,
            C=widths[stage],
            N=h * w,
            mode=m,
            dtype=dtype,
            device=device.type,
            gmacs=hco_macs(h, w, widths[stage], batch_size) / 1e9)
        measured = harness.measure_hco((batch_size, h, w, widths[stage]),
                                       dtype,
                                       m,
                                       device,
                                       repeats=repeats,
                                       warmup=warmup,
                                       kernels=kernels,
                                       copy=False)
        if progress is not None:
            progress(
                f'[{done}/{len(shapes)}] op {res} stage {stage} {m}: '
                f'{harness.times_line(measured, "impl", "median_ms", "ms")}')
        for row in measured:
            row.update(
                shape,
                gmacs_per_s=shape['gmacs'] / row.get('median_ms', NAN) * 1e3)
            rows.append({c: row.get(c) for c in OP_COLUMNS})
        if not kernels:
            rows.append(dict(shape, impl='triton', status=skipped))
    exps = []
    for m in modes:
        for impl in dict.fromkeys(r['impl'] for r in rows):
            sel = [
                r for r in rows
                if r['impl'] == impl and r['mode'] == m and r['status'] == 'ok'
            ]
            by_res: Dict[int, float] = {}
            for stage in sorted({r['stage'] for r in sel}):
                pts = [r for r in sel if r['stage'] == stage]
                exps.append(
                    dict(
                        impl=impl,
                        stage=stage,
                        C=widths[stage],
                        mode=m,
                        exponent=fit_exponent([r['N'] for r in pts],
                                              [r['median_ms'] for r in pts]),
                        points=len(pts)))
                for r in pts:
                    by_res[r['input_res']] = by_res.get(
                        r['input_res'], 0.) + r['median_ms'] * depths[stage]
            if by_res:
                exps.append(
                    dict(
                        impl=impl,
                        stage='all (x depth)',
                        C='',
                        mode=m,
                        exponent=fit_exponent([(r // 4)**2 for r in by_res],
                                              list(by_res.values())),
                        points=len(by_res)))
    return rows, exps, notes


def published_checkout(path: str) -> str:
    """``--published-repo``: a directory holding :data:`MODEL_FILE`."""
    if not is_published_checkout(path):
        raise argparse.ArgumentTypeError(
            f'{path!r} is no checkout of the published vHeat (no '
            f'{MODEL_FILE} in it)')
    return path


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
        choices=harness.MODEL_NAMES,
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
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        '--no-memory',
        action='store_true',
        help='on a CPU, no process per model row for its peak memory')
    g.add_argument(
        '--memory-only',
        action='store_true',
        help='the models\' peak memory, not their speed')
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
    p.add_argument(
        '--published-repo',
        type=published_checkout,
        default=None,
        metavar='DIR',
        help='a checkout of the published vHeat, for the -published models')
    args = p.parse_args(argv)
    checkout = [
        n for n in args.models
        if harness.split_model_name(n)[1] in harness.CHECKOUT_VARIANTS
    ]
    if checkout and args.published_repo is None:
        p.error(f'{", ".join(checkout)} need --published-repo')
    if args.published_repo is not None and not (checkout or args.op_only):
        p.error('--published-repo: list the published models in --models '
                '(vheat-t-published, vheat-t-published-fold, ...)')
    if args.op_batch_size is None:
        args.op_batch_size = args.batch_size
    return args


def _progress(line: str):
    print(line, file=sys.stderr, flush=True)


def run(args):
    """Measure, write the files; returns the lines to print."""
    device = parse_device(args.device)
    ensure_directory(args.out_dir, '--out-dir')
    if args.published_repo is not None and not args.op_only:
        import_published_vheat(args.published_repo)  # fails before timing
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
        lines.append(
            'note: absolute CPU times are informative only, compare the '
            'ratios; ' + ('peak memory not measured (--no-memory)' if args.
                          no_memory else 'peak memory: a process per model '
                          'row, the resident high-water mark above the built'
                          ' model'))
    _progress(lines[0])
    timing = dict(
        mode=args.mode,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=_progress)
    if not (args.model_only or args.memory_only):
        op_rows, exps, notes = benchmark_ops(
            device,
            resolutions=args.op_resolutions,
            stages=args.op_stages,
            batch_size=args.op_batch_size,
            **timing)
        lines += [f'note: {note}' for note in notes]
        harness.write_csv(
            osp.join(args.out_dir, 'benchmark_ops.csv'), op_rows, OP_COLUMNS)
        harness.write_csv(
            osp.join(args.out_dir, 'benchmark_op_exponents.csv'), exps,
            EXP_COLUMNS)
        title = (f'HCO op (batch {args.op_batch_size}; speedup = reference '
                 'time / time; max_rel_err = max |y - y_fp32| / max '
                 '|y_fp32| against float32 arithmetic on the unrounded '
                 'input)')
        lines.append(
            harness.format_table(op_rows, [
                'impl', 'input_res', 'stage', 'H', 'C', 'mode', 'median_ms',
                'speedup_vs_reference', 'gmacs_per_s', 'max_rel_err', 'status'
            ], title))
        lines.append(
            harness.format_table(
                exps, EXP_COLUMNS,
                'fitted exponent p of time ~ N^p (N = H*W; MACs ~ N^1.5)'))
    if not args.op_only:
        rows, notes = harness.benchmark_models(
            device,
            args.models,
            resolutions=args.resolutions,
            batch_size=args.batch_size,
            flops=not args.no_flops,
            img_size=args.img_size,
            cpu_memory=not args.no_memory,
            timed=not args.memory_only,
            published_repo=args.published_repo,
            **timing)
        lines += [f'note: {note}' for note in notes]
        vs_published = ('deployed and -pub-fold / -published-fold, plain '
                        'and -pub / -published' if args.published_repo else
                        'deployed / -pub-fold, plain / -pub')
        harness.write_csv(
            osp.join(args.out_dir, 'benchmark_models.csv'), rows,
            MODEL_COLUMNS)
        note = harness.write_figure(
            rows, osp.join(args.out_dir, 'benchmark.png'),
            f'{where}, batch {args.batch_size}, {args.dtype}',
            harness.PLOT_PANELS +
            (('gflops_per_image', 'FLOPs per image (GMACs)'), ))
        lines += [f'note: {note}'] if note else []
        lines.append(
            harness.format_table(
                rows, [
                    'model', 'resolution', 'mode', 'median_ms', 'images_per_s',
                    'speedup_vs_baseline', 'speedup_vs_published',
                    'peak_mem_mb', 'mem_vs_baseline', 'gflops_per_image',
                    'params_m', 'status'
                ], f'models (batch {args.batch_size}; speedup = baseline '
                f'{args.models[0]} time / time; vs_published: like with '
                f'like, {vs_published}; peak_mem_mb: above the built model)'))
    lines.append(f'\nwritten to {args.out_dir}')
    return lines


def main(argv=None):
    args = parse_args(argv)
    return run_tool(partial(run, args))


if __name__ == '__main__':
    sys.exit(main())
