# Copyright (c) mmvheat contributors. All rights reserved.
"""A GPU report of the Heat Conduction Operator and of vHeat-T, in one run:
a preset of :mod:`mmvheat.analysis.benchmark`, with its targets.

The report measures what the paper's Figure 1 draws (throughput and peak
memory of vHeat and Swin against the input resolution, batch 64), times each
implementation of the operator on the device it runs on as cuDNN's benchmark
mode does, and puts the operator's time beside a device-to-device copy of
the same tensor (a memory-bound operator can at best read its input and
write its output once). It needs torch, mmengine and mmvheat; Triton for the
kernels, matplotlib for the figure and mmpretrain for Swin-T are used when
they can be imported.

The work runs in this order, so that a run stopped by its time budget has
the most important numbers first: the operator at the target shape
(bfloat16, :attr:`ReportPlan.target_op`); whole-model inference; the
operator at every stage shape in bfloat16; whole-model training steps; the
operator at every stage shape in float32.

Operator rows (:data:`OP_COLUMNS`), per stage shape of vHeat-T/S (their
widths are the same: one ``vheat-t/s`` row serves both) and vHeat-B, dtype
and mode (``infer``: forward without gradients; ``train``: forward and
backward to ``x`` and the filter):

* ``impl``: ``reference`` (four float32 matmuls), each Triton kernel path
  that takes the shape (``fused``, ``tiled``; run directly, without the
  dispatcher's fallbacks, so that each is timed and checked for itself),
  ``published`` (cosine matrices through ``F.conv1d``, ``decay ** k``
  recomputed from ``k`` inside the call -- an ``(H, W, C)`` map, 1/B of the
  activations -- under autocast for bfloat16, as published; in float32 its
  convolutions take PyTorch's default, TF32 in cuDNN on recent GPUs, which
  the header line names), ``autotuned`` (what :func:`spectral_filter`
  runs on CUDA: the dispatcher's choice for the forward and for the
  backward, self-checked) and ``copy`` (``dst.copy_(x)``).
* ``err_out``, ``err_grad_x``, ``err_grad_t``: ``max |y - y64| / max |y64|``
  against the reference computed in float64 on the same (rounded) inputs.
* ``gb_per_s``: the bytes an ideal implementation moves (infer: read ``x``
  and the filter, write ``y``; train: also read ``x`` and the output
  gradient, write ``x``'s gradient, read the filter and write its
  gradient) over the time; for ``copy`` the bytes it moves. ``vs_copy``:
  the time over the time of those bytes at the copy's bandwidth (1: as fast
  as reading and writing once).
* ``bytes_per_elem``: for a kernel path, the global-memory bytes it moves
  per element of the map (:func:`mmvheat.ops.triton_hco.bytes_moved`:
  activations in their dtype, the float32 maps between its kernels,
  grad_T's partials; 2 s and 5 s for an s-byte dtype would be reading and
  writing once), for ``copy`` its 2 s; ``vs_own_bytes``: the time over the
  time of the kernel's own bytes (and the filter's) at the copy's
  bandwidth (1: it moves its bytes as fast as a copy).
* ``autotuned``: the choice of :data:`~mmvheat.ops.hco_dispatcher` for the
  shape's bucket (:meth:`~mmvheat.ops.dispatch.HCODispatcher.tune`; in
  training ``forward/backward`` where the two differ), and ``tuner_ms``
  the tuner's own time of each implementation (forward plus backward in
  training, on the first images of the batch that fit in
  :data:`~mmvheat.ops.dispatch.TUNING_MAX_BYTES`).

Model rows (:data:`MODEL_COLUMNS`): the classifiers of
:func:`mmvheat.analysis.benchmark.benchmark_models` in bfloat16 autocast,
peak memory on CUDA (above the built model):
vHeat-T deployed (inference) and training, the published formulation of the
same weights (its inference mode, folded, for inference; recomputed for
training), our plain eval model, and Swin-T. Each model is built at the
resolution it runs at, so the published inference mode folds at every one
(as the published throughput numbers were measured). Every speed-up, of
the operator's rows as of the models', is the median of the rounds'
ratios (the rows timed one after the other in each round).

:data:`TARGETS` are then judged PASS or FAIL with the measured ratio.

Without CUDA, ``device='cpu'`` with ``quick=True`` runs all of it on tiny
shapes (:data:`QUICK_PLAN`): wall-clock timers instead of CUDA events, the
kernels in Triton's interpreter (``TRITON_INTERPRET=1`` before the kernels
are imported: the command line sets it for ``--device cpu``; without it
the kernel rows are left out with a note), and the dispatcher's tuning
timed by the wall clock. Its numbers check the report's logic, not a
device.

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
import contextlib
import csv
import math
import os
import os.path as osp
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmvheat.analysis import benchmark as harness
from mmvheat.models import VHeat
from mmvheat.ops import dispatch as hco_dispatch
from mmvheat.ops import hco_dispatcher
from mmvheat.utils.io import (ToolError, UsageError, ensure_directory,
                              first_line, run_tool)

OP_COLUMNS = [
    'arch', 'input', 'stage', 'batch_size', 'H', 'W', 'C', 'dtype', 'mode',
    'impl', 'median_ms', 'gb_per_s', 'vs_copy', 'bytes_per_elem',
    'vs_own_bytes', 'speedup_vs_published', 'speedup_vs_reference', 'err_out',
    'err_grad_x', 'err_grad_t', 'autotuned', 'tuner_ms', 'tuner_source',
    'samples', 'device', 'status'
]
MODEL_COLUMNS = [
    'model', 'resolution', 'batch_size', 'mode', 'dtype', 'device',
    'median_ms', 'images_per_s', 'speedup_vs_published', 'speedup_vs_swin',
    'peak_mem_mb', 'mem_vs_swin', 'params_m', 'samples', 'status'
]
TARGET_COLUMNS = ['target', 'ratio', 'threshold', 'result', 'detail']

#: The targets: (name, the measured ratio must be >= or <=, threshold).
TARGETS = (
    ('HCO kernel vs published formulation, target shape', '>=', 5.0),
    ('HCO kernel time vs its bytes moved at copy bandwidth', '<=', 2.0),
    ('vHeat-T vs published formulation', '>=', 1.3),
    ('vHeat-T vs Swin-T throughput, smallest resolution', '>=', 1.5),
    ('vHeat-T vs Swin-T throughput, largest resolution', '>=', 3.0),
    ('vHeat-T vs Swin-T peak inference memory, largest resolution', '<=', 0.3),
    ('autotuned choice vs reference time, worst shape', '<=', 1.1),
)
# The second target: a kernel within 2x of the time its own global-memory
# traffic takes at the copy's bandwidth (``vs_own_bytes``). Reading and
# writing the map once (``vs_copy``, the first version of this target) is
# reachable only where the whole map stays on chip, up to 32 x 32 (the
# fused path); the tiled path moves 2 s + 16 bytes per element of an
# s-byte dtype (20 in bfloat16, 5x a copy), see
# :func:`mmvheat.ops.triton_hco.bytes_moved`.
# The report times the autotuned choice and the reference again, apart
# from the tuner: 10% covers run-to-run noise of two such timings.


@dataclass(frozen=True, eq=False)
class ReportPlan:
    """What the GPU report measures.

    Attributes:
        op_archs (tuple): ``(name, width of each stage)`` of the models
            whose stage shapes are measured.
        op_inputs (tuple): Input sizes ``(H, W)``.
        op_stages (tuple): Stages measured.
        op_batch_size (int): Images per operator call.
        dtypes (tuple): ``'bf16'`` and/or ``'fp32'``; the first goes first.
        target_op (tuple): ``(arch, input, stage)`` of the target shape.
        model_resolutions (tuple): Square inputs of the whole models,
            ascending.
        model_batch_size (int): Images per model call.
        model_archs (dict): ``family -> arch`` in place of vHeat-T's and
            Swin-T's (``archs`` of ``benchmark_models``); empty for the
            real ones.
        repeats (int): Timed rounds per configuration.
        warmup (int): Untimed calls per candidate first.
        min_sample_s (float): Operator samples repeat the call to last
            this long.
    """
    op_archs: Tuple[Tuple[str, Tuple[int, ...]], ...]
    op_inputs: Tuple[Tuple[int, int], ...]
    op_stages: Tuple[int, ...]
    op_batch_size: int
    dtypes: Tuple[str, ...]
    target_op: Tuple[str, Tuple[int, int], int]
    model_resolutions: Tuple[int, ...]
    model_batch_size: int
    model_archs: Dict[str, dict]
    repeats: int
    warmup: int
    min_sample_s: float


def vheat_stage_widths(archs: Sequence[str] = ('t', 's', 'b')) -> tuple:
    """``(name, width of each stage)`` of vHeat's ``archs``, one entry per
    distinct set of widths (``'vheat-t/s'`` where T and S share them), as
    :meth:`~mmvheat.models.VHeat.parse_arch` gives them."""
    by_widths: Dict[Tuple[int, ...], List[str]] = {}
    for arch in archs:
        widths = tuple(VHeat.parse_arch(arch)['dims'])
        by_widths.setdefault(widths, []).append(arch)
    return tuple((f'vheat-{"/".join(names)}', widths)
                 for widths, names in by_widths.items())


#: The GPU report: vHeat-T/S/B stage shapes at 224, 512 and 800 x 1333;
#: vHeat-T at 224, 512 and 1024; batch 64.
FULL_PLAN = ReportPlan(
    op_archs=vheat_stage_widths(),
    op_inputs=((224, 224), (512, 512), (800, 1333)),
    op_stages=(0, 1, 2, 3),
    op_batch_size=64,
    dtypes=('bf16', 'fp32'),
    target_op=('vheat-t/s', (512, 512), 0),
    model_resolutions=(224, 512, 1024),
    model_batch_size=64,
    model_archs={},
    repeats=10,
    warmup=2,
    min_sample_s=1e-3)
#: Tiny shapes that reach every code path (both kernel paths at 8 x 8, only
#: the tiled one at 10 x 36) and small stand-ins of vHeat-T and Swin-T (the
#: same code with fewer, narrower blocks), for a CPU.
QUICK_PLAN = ReportPlan(
    op_archs=(('tiny', (4, 8, 16, 32)), ),
    op_inputs=((32, 32), (40, 144)),
    op_stages=(0, ),
    op_batch_size=2,
    dtypes=('bf16', 'fp32'),
    target_op=('tiny', (32, 32), 0),
    model_resolutions=(32, 64),
    model_batch_size=2,
    model_archs=dict(
        vheat=dict(
            depths=[1, 1, 2, 1],
            dims=8,
            post_norm=False,
            layer_scale=None,
            mlp_ratio=2.),
        swin=dict(embed_dims=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 4])),
    repeats=2,
    warmup=0,
    min_sample_s=0.)


def op_shape(plan: ReportPlan, arch: str, size: Tuple[int, int],
             stage: int) -> Tuple[int, int, int, int]:
    """``(B, H, W, C)`` of the operator's input in stage ``stage`` of
    ``arch`` (a name of ``plan.op_archs``) for an input of ``size``."""
    h, w = harness.stage_grid(size, stage)
    return plan.op_batch_size, h, w, dict(plan.op_archs)[arch][stage]


def input_name(size: Tuple[int, int]) -> str:
    """``'512'`` for a square input, ``'800x1333'`` otherwise."""
    return str(size[0]) if size[0] == size[1] else f'{size[0]}x{size[1]}'


def report_items(plan: ReportPlan) -> List[Tuple[str, tuple]]:
    """The GPU report's work, most important first: the operator at the
    target shape (first dtype), whole-model inference (smallest and largest
    resolution first), the operator at every shape in the first dtype,
    training steps, the operator in the other dtypes."""
    res = list(plan.model_resolutions)
    order = list(dict.fromkeys([res[0], res[-1]] + res[1:-1]))

    def sweep(dtype):
        return [('op', (arch, size, stage, dtype, mode))
                for arch, _ in plan.op_archs for size in plan.op_inputs
                for stage in plan.op_stages for mode in ('infer', 'train')]

    arch, size, stage = plan.target_op
    first = [('op', (arch, size, stage, plan.dtypes[0], mode))
             for mode in ('infer', 'train')]
    items = first + [('models', (r, 'infer')) for r in order]
    items += [i for i in sweep(plan.dtypes[0]) if i not in first]
    items += [('models', (r, 'train')) for r in order]
    for dtype in plan.dtypes[1:]:
        items += sweep(dtype)
    return items


def _report_op(args: tuple, plan: ReportPlan, device: torch.device, dispatcher,
               deadline: float) -> Tuple[List[dict], str]:
    """The operator rows of one shape (one ``'all'`` row with the failure if
    it could not be measured, e.g. for lack of memory) and its line."""
    arch, size, stage, dtype, mode = args
    shape = op_shape(plan, arch, size, stage)
    key = (arch, input_name(size), stage, dtype, mode)
    try:
        rows = harness.measure_hco(
            shape,
            dtype,
            mode,
            device,
            repeats=plan.repeats,
            warmup=plan.warmup,
            min_sample_s=plan.min_sample_s,
            deadline=deadline,
            tune=partial(_autotune, dispatcher))
    except Exception as e:  # noqa: BLE001 -- e.g. OOM: the others go on
        rows = [dict(impl='all', status=harness.failure_status(e))]
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    for row in rows:
        row.update(
            zip(('arch', 'input', 'stage', 'dtype', 'mode'), key),
            batch_size=shape[0],
            H=shape[1],
            W=shape[2],
            C=shape[3],
            device=device.type)
    return rows, (f'HCO {arch} {size} stage {stage} '
                  f'{"x".join(map(str, shape))} {dtype} {mode}: '
                  f'{harness.times_line(rows, "impl", "median_ms", "ms")}; '
                  f'autotuned {rows[0].get("autotuned")}')


def _report_models(res: int, mode: str, device: torch.device, plan: ReportPlan,
                   with_swin: bool,
                   deadline: float) -> Tuple[List[dict], List[str], str]:
    """vHeat-T (deployed for inference), its published forms, our plain
    model and Swin-T at one resolution in bfloat16: rows, notes, line."""
    models = ['vheat-t', 'vheat-t-pub-fold', 'vheat-t-pub', 'vheat-t-plain']
    # Swin-T first: the baseline of benchmark_models' ratios (paired
    # round by round), reported last.
    rows, notes = harness.benchmark_models(
        device, ['swin-t'] * with_swin + models,
        resolutions=[res],
        batch_size=plan.model_batch_size,
        mode=mode,
        dtype='bf16',
        repeats=plan.repeats,
        warmup=plan.warmup,
        flops=False,
        deadline=deadline,
        archs=plan.model_archs,
        cpu_memory=False)
    swin = [r for r in rows if r['model'] == 'swin-t']
    if swin:
        for row in rows:
            row['speedup_vs_swin'] = row['speedup_vs_baseline']
            row['mem_vs_swin'] = row['mem_vs_baseline']
    rows = [r for r in rows if r['model'] != 'swin-t'] + swin
    return rows, notes, (
        f'whole model {res} {mode}: '
        f'{harness.times_line(rows, "model", "images_per_s", "img/s")}')


def measure_report(plan: ReportPlan,
                   device: torch.device,
                   max_minutes: float = 8.,
                   on_result: Optional[Callable[[str, List[dict], str],
                                                None]] = None,
                   start: Optional[float] = None) -> dict:
    """Measure the GPU report's work (:func:`report_items`) in order within
    a time budget: work that would not fit (by the longest of its kind so
    far) is skipped with a note.

    Args:
        plan (ReportPlan): :data:`FULL_PLAN` or :data:`QUICK_PLAN`.
        device (torch.device): Where to run.
        max_minutes (float): The time budget. Defaults to 8.
        start (float, optional): The ``time.monotonic()`` the budget
            counts from. Defaults to None: now.
        on_result (callable, optional): Called with ``(kind, rows, line)``
            after each piece of work (``kind``: ``'op'`` or ``'models'``).

    Returns:
        dict: ``op_rows`` (:data:`OP_COLUMNS`), ``model_rows``
        (:data:`MODEL_COLUMNS`) and ``notes``.
    """
    deadline = (start or time.monotonic()) + max_minutes * 60.
    longest: Dict[str, float] = {}
    skipped: Dict[str, int] = {}
    swin_note = harness.swin_unavailable()
    result: dict = dict(
        op_rows=[], model_rows=[], notes=[swin_note] if swin_note else [])
    items = report_items(plan)
    with tuning_dispatcher(device) as dispatcher:
        for done, (kind, args) in enumerate(items, 1):
            if time.monotonic() + longest.get(kind, 0.) >= deadline:
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            start = time.monotonic()
            if kind == 'op':
                rows, line = _report_op(args, plan, device, dispatcher,
                                        deadline)
                result['op_rows'] += rows
            else:
                rows, notes, line = _report_models(*args, device, plan,
                                                   swin_note is None, deadline)
                result['notes'] += [
                    n for n in notes if n not in result['notes']
                ]
                result['model_rows'] += rows
            longest[kind] = max(
                longest.get(kind, 0.),
                time.monotonic() - start)
            if on_result is not None:
                on_result(kind, rows, f'[{done}/{len(items)}] {line}')
    for kind, count in skipped.items():
        result['notes'].append(
            f'time budget ({max_minutes:g} min): {count} '
            f'{"operator shapes" if kind == "op" else "model runs"} skipped')
    return result


# ------------------------------------------------------------- tuning
def _wall_clock_timer(candidate: str, step: Callable, repeats: int) -> float:
    """:func:`mmvheat.ops.dispatch.time_candidate` by the wall clock."""
    return statistics.median([
        harness._time_calls(step, 1, torch.device('cpu'))
        for _ in range(repeats)
    ]) * 1e3


@contextlib.contextmanager
def tuning_dispatcher(device: torch.device):
    """The process's dispatcher, whose autotuned choices are reported. Off
    CUDA (where :func:`~mmvheat.ops.spectral_filter` never tunes) its tuning
    is timed by the wall clock and its decisions are forgotten at the end.
    """
    if device.type == 'cuda':
        yield hco_dispatcher
        return
    cuda_timer = hco_dispatch.time_candidate
    hco_dispatch.time_candidate = _wall_clock_timer
    hco_dispatcher.reset()
    try:
        yield hco_dispatcher
    finally:
        hco_dispatch.time_candidate = cuda_timer
        hco_dispatcher.reset()


def _autotune(dispatcher, x: Tensor, transfer: Tensor,
              grad: Optional[Tensor]) -> dict:
    """The dispatcher's ``choice`` for ``x``'s bucket (``fwd/bwd`` where the
    backward's differs), the tuner's own ``times_ms`` (forward plus
    backward; ``autotuned``: those of the choices) and their ``source``."""
    try:
        decisions = [dispatcher.tune(x, transfer, 'forward')]
        if grad is not None:
            decisions.append(
                dispatcher.tune(x, transfer, 'backward(x,transfer)', grad))
    except Exception as e:  # noqa: BLE001 -- reported, never fatal
        return dict(choice=f'error: {first_line(e)}', times_ms={}, source='')
    times = {}
    for name in decisions[0].times_ms:
        parts = [d.times_ms.get(name) for d in decisions]
        if None not in parts:
            times[name] = sum(parts)
    times['autotuned'] = sum(d.times_ms[d.choice] for d in decisions)
    return dict(
        choice='/'.join(dict.fromkeys(d.choice for d in decisions)),
        times_ms=times,
        source=decisions[0].source)


# ------------------------------------------------------------- targets
def _target(index: int, qualifier: str, ratio: Optional[float],
            detail: str) -> dict:
    name, op, threshold = TARGETS[index]
    if ratio is None or math.isnan(ratio):
        result = 'n/a'
    else:
        passed = ratio >= threshold if op == '>=' else ratio <= threshold
        result = 'PASS' if passed else 'FAIL'
    return dict(
        target=f'{name} ({qualifier})' if qualifier else name,
        ratio=ratio,
        threshold=f'{op} {threshold:g}',
        result=result,
        detail=detail)


def _ok(row: Optional[dict]) -> bool:
    return row is not None and row.get('status') == 'ok'


def _op_configs(op_rows: List[dict]) -> Dict[tuple, Dict[str, dict]]:
    """``(arch, input, stage, dtype, mode) -> impl -> row``."""
    configs: Dict[tuple, Dict[str, dict]] = {}
    for row in op_rows:
        key = tuple(row[k]
                    for k in ('arch', 'input', 'stage', 'dtype', 'mode'))
        configs.setdefault(key, {})[row['impl']] = row
    return configs


def _value(row: Optional[dict], column: str, unit: str) -> str:
    if not _ok(row) or row.get(column) is None:
        return 'not measured'
    if math.isnan(row[column]):
        return 'n/a'
    return f'{row[column]:.4g} {unit}'


def _against(row: Optional[dict], baseline: Optional[dict],
             column: str) -> Optional[float]:
    """``row``'s ratio ``column`` against ``baseline`` (a speed-up paired
    round by round, or a memory ratio) where both were measured."""
    if not (_ok(row) and _ok(baseline)):
        return None
    return row.get(column)


def _best_kernel(impls: Dict[str, dict]) -> Optional[dict]:
    kernels = [impls[p] for p in harness.kernel_paths() if _ok(impls.get(p))]
    return min(kernels, key=lambda r: r['median_ms']) if kernels else None


def evaluate_targets(op_rows: List[dict], model_rows: List[dict],
                     plan: ReportPlan) -> List[dict]:
    """Judge :data:`TARGETS` on the measured rows (``n/a`` where a
    measurement is missing).

    Returns:
        list[dict]: Rows of :data:`TARGET_COLUMNS`.
    """
    configs = _op_configs(op_rows)
    arch, size, stage = plan.target_op
    targets = []
    for mode in ('infer', 'train'):
        impls = configs.get(
            (arch, input_name(size), stage, plan.dtypes[0], mode), {})
        best, pub = _best_kernel(impls), impls.get('published')
        shape = f'{plan.dtypes[0]}, {mode}, {arch} {input_name(size)} ' \
            f'stage {stage}'
        if best is None:
            why = 'no kernel measured (Triton missing, failed or skipped)'
            targets += [
                _target(0, shape, None, why),
                _target(1, shape, None, why)
            ]
            continue
        copy = impls.get('copy')
        targets += [
            _target(
                0, shape, _against(best, pub, 'speedup_vs_published'),
                f'{best["impl"]} {_value(best, "median_ms", "ms")}, '
                f'published {_value(pub, "median_ms", "ms")}'),
            _target(
                1, shape,
                best.get('vs_own_bytes') if _ok(copy) else None,
                f'{best["impl"]} moves {_value(best, "bytes_per_elem", "")}'
                f'bytes per element, copy {_value(copy, "bytes_per_elem", "")}'
                f'({_value(copy, "gb_per_s", "GB/s")}); '
                f'{_value(best, "vs_copy", "x")} the time of reading and '
                'writing once')
        ]
    models = {(r['model'], r['resolution'], r['mode']): r for r in model_rows}
    res = plan.model_resolutions
    for mode in ('infer', 'train'):
        counterpart = 'vheat-t-pub-fold' if mode == 'infer' else 'vheat-t-pub'
        for r in res:
            ours = models.get(('vheat-t', r, mode))
            theirs = models.get((counterpart, r, mode))
            targets.append(
                _target(
                    2, f'{mode}, {r}, vs {counterpart}',
                    _against(ours, theirs, 'speedup_vs_published'),
                    f'{_value(ours, "images_per_s", "images/s")} vs '
                    f'{_value(theirs, "images_per_s", "images/s")}'))
    for index, r, column, unit in ((3, res[0], 'images_per_s', 'images/s'),
                                   (4, res[-1], 'images_per_s', 'images/s'),
                                   (5, res[-1], 'peak_mem_mb', 'MiB')):
        ours = models.get(('vheat-t', r, 'infer'))
        swin = models.get(('swin-t', r, 'infer'))
        ratio = _against(
            ours, swin,
            'speedup_vs_swin' if column == 'images_per_s' else 'mem_vs_swin')
        targets.append(
            _target(
                index, f'infer, {r}', ratio, f'{_value(ours, column, unit)} '
                f'vs {_value(swin, column, unit)}'))
    worst, where, tuner_worst = None, 'no autotuned choice measured', None
    for key, impls in configs.items():
        reference = impls.get('reference')
        choice = impls.get('autotuned')
        if not (_ok(reference) and _ok(choice)):
            continue
        # Its time over the reference's.
        ratio = 1 / choice.get('speedup_vs_reference', math.nan)
        if math.isnan(ratio):
            continue
        if worst is None or ratio > worst:
            worst = ratio
            where = (f'{" ".join(map(str, key))}: {choice["autotuned"]} '
                     f'{choice["median_ms"]:.4g} ms, reference '
                     f'{reference["median_ms"]:.4g} ms')
        tuned = [choice.get('tuner_ms'), reference.get('tuner_ms')]
        if None not in tuned:
            tuner_worst = max(tuner_worst or 0., tuned[0] / tuned[1])
    if tuner_worst is not None:
        where += f'; by the tuner\'s own times at worst {tuner_worst:.3g}x'
    targets.append(_target(6, 'all measured shapes', worst, where))
    return targets


class _CsvLog:
    """A CSV file written row by row and flushed, so that a stopped run
    leaves what it measured."""

    def __init__(self, path: str, columns: Sequence[str]):
        self.columns = list(columns)
        self._file = open(path, 'w', newline='', encoding='utf-8')
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        self._file.flush()

    def write(self, rows: Sequence[dict]):
        for row in rows:
            self._writer.writerow(harness.csv_row(row, self.columns))
        self._file.flush()

    def __enter__(self) -> '_CsvLog':
        return self

    def __exit__(self, *exc_info):
        self._file.close()


def _matmul_precision() -> str:
    """The float32 matmul setting, by whichever API set it: the per-backend
    one (``torch.backends.cuda.matmul.fp32_precision``, torch >= 2.9), or
    the global one (``torch.set_float32_matmul_precision``), which raises
    once the former was used."""
    per_backend = getattr(torch.backends.cuda.matmul, 'fp32_precision', None)
    if per_backend not in (None, 'none'):
        return f'cuda matmul {per_backend}'
    return torch.get_float32_matmul_precision()


def _environment(device: torch.device, plan_name: str,
                 max_minutes: float) -> List[str]:
    from mmvheat import __version__
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = 'not importable (kernel rows skipped)'
    if triton_version[0].isdigit() and not harness.kernels_run_on(device):
        triton_version += (' (kernel rows skipped: the kernels were imported '
                           'for the interpreter' if device.type == 'cuda' else
                           ' (kernel rows skipped: the kernels were imported '
                           'compiled; TRITON_INTERPRET=1 before the import '
                           'runs them on the CPU')
        triton_version += ')'
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        where = (f'{props.name}, {props.total_memory / 2**30:.0f} GiB, '
                 f'compute capability {props.major}.{props.minor}, CUDA '
                 f'{torch.version.cuda}')
    else:
        where = (f'cpu, {torch.get_num_threads()} threads (a logic check: '
                 'interpreted kernels, wall-clock timers)')
    return [
        f'device: {where}',
        f'torch {torch.__version__}, triton {triton_version}, mmvheat '
        f'{__version__}; float32 matmul precision {_matmul_precision()}, '
        f'cuDNN TF32 {torch.backends.cudnn.allow_tf32}',
        f'plan: {plan_name}; time budget {max_minutes:g} min'
    ]


def _op_summary(op_rows: List[dict]) -> List[dict]:
    """One row per measured shape: the best kernel beside the others."""
    summary = []
    for key, impls in _op_configs(op_rows).items():
        best = _best_kernel(impls) or {}

        def ms(name):
            row = impls.get(name)
            return row['median_ms'] if _ok(row) else None

        summary.append(
            dict(
                zip(('arch', 'input', 'stage', 'dtype', 'mode'), key),
                kernel=best.get('impl'),
                kernel_ms=best.get('median_ms'),
                reference_ms=ms('reference'),
                published_ms=ms('published'),
                copy_ms=ms('copy'),
                vs_copy=best.get('vs_copy'),
                bytes_per_elem=best.get('bytes_per_elem'),
                vs_own_bytes=best.get('vs_own_bytes'),
                vs_published=best.get('speedup_vs_published'),
                kernel_err=best.get('err_out'),
                reference_err=impls.get('reference', {}).get('err_out'),
                published_err=impls.get('published', {}).get('err_out'),
                autotuned=impls.get('reference', {}).get('autotuned')))
    return summary


_SUMMARY_COLUMNS = [
    'arch', 'input', 'stage', 'dtype', 'mode', 'kernel', 'kernel_ms',
    'reference_ms', 'published_ms', 'copy_ms', 'vs_copy', 'bytes_per_elem',
    'vs_own_bytes', 'vs_published', 'kernel_err', 'reference_err',
    'published_err', 'autotuned'
]
_MODEL_TABLE_COLUMNS = [
    'model', 'resolution', 'mode', 'median_ms', 'images_per_s',
    'speedup_vs_published', 'speedup_vs_swin', 'peak_mem_mb', 'mem_vs_swin',
    'samples', 'status'
]


# ------------------------------------------------------------- the run
def run_report(out_dir: str,
               device: Optional[torch.device] = None,
               quick: bool = False,
               max_minutes: float = 8.,
               progress: Optional[Callable[[str], None]] = None) -> dict:
    """Measure (:func:`measure_report`), judge the targets and write the
    files: ``gpu_report_ops.csv``, ``gpu_report_models.csv`` and
    ``gpu_report.txt`` grow as the work goes on; ``gpu_report_targets.csv``
    and ``gpu_report.png`` (throughput and peak memory against resolution,
    as the paper's Figure 1; skipped with a note without matplotlib) come at
    the end.

    Args:
        out_dir (str): Where the files go (created).
        device (torch.device, optional): Defaults to None: CUDA.
        quick (bool): Tiny shapes (:data:`QUICK_PLAN`). Defaults to False.
        max_minutes (float): Time budget. Defaults to 8.
        progress (callable, optional): Called with each line of the report
            as it is measured. Defaults to None.

    Returns:
        dict: ``lines`` (the report: header, tables, targets, notes),
        ``op_rows``, ``model_rows``, ``targets``, ``notes`` and ``files``.

    Raises:
        ToolError: without CUDA for a CUDA device, or when ``out_dir``
            cannot be written.
    """
    start = time.monotonic()
    device = torch.device(device or 'cuda')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ToolError('no CUDA device here; --device cpu --quick runs '
                        "the report's logic on tiny shapes")
    plan = QUICK_PLAN if quick else FULL_PLAN
    ensure_directory(out_dir)
    files = {
        name: osp.join(out_dir, f'gpu_report{suffix}')
        for name, suffix in (('ops', '_ops.csv'), ('models', '_models.csv'),
                             ('targets', '_targets.csv'), ('text', '.txt'),
                             ('figure', '.png'))
    }
    with open(files['text'], 'w', encoding='utf-8') as text, \
            _CsvLog(files['ops'], OP_COLUMNS) as op_log, \
            _CsvLog(files['models'], MODEL_COLUMNS) as model_log:

        def say(line: str):
            text.write(line + '\n')
            text.flush()
            if progress is not None:
                progress(line)

        def on_result(kind: str, rows: List[dict], line: str):
            (op_log if kind == 'op' else model_log).write(rows)
            say(line)

        header = _environment(device, 'quick' if quick else 'full',
                              max_minutes)
        for line in header:
            say(line)
        swin_note = harness.swin_unavailable()
        if swin_note:
            say(f'note: {swin_note}')
        result = measure_report(plan, device, max_minutes, on_result, start)
        lines = _conclude(result, plan, files, header)
        for line in lines:
            text.write(line + '\n')
    return dict(result, lines=header + lines, files=files)


def _conclude(result: dict, plan: ReportPlan, files: Dict[str, str],
              header: List[str]) -> List[str]:
    """Judge the targets, write their file and the figure; the report's
    closing lines."""
    op_rows, model_rows, notes = (result['op_rows'], result['model_rows'],
                                  result['notes'])
    result['targets'] = targets = evaluate_targets(op_rows, model_rows, plan)
    harness.write_csv(files['targets'], targets, TARGET_COLUMNS)
    note = harness.write_figure(
        model_rows, files['figure'], f'{header[0][8:]}; vHeat-T vs '
        f'baselines, batch {plan.model_batch_size}, bf16')
    if note:
        files.pop('figure')
        notes.append(note)
    lines = [
        harness.format_table(
            _op_summary(op_rows), _SUMMARY_COLUMNS, 'HCO per shape (batch '
            f'{plan.op_batch_size}; kernel = fastest Triton path; vs_copy = '
            'time / time of reading and writing once at the copy\'s '
            'bandwidth; bytes_per_elem = the kernel\'s global-memory bytes '
            'per element, vs_own_bytes = time / time of those at the copy\'s'
            ' bandwidth; errors = max |y - y64| / max |y64|)'),
        harness.format_table(
            model_rows, _MODEL_TABLE_COLUMNS,
            f'whole model (batch {plan.model_batch_size}, bf16; vs_published:'
            ' deployed / published inference mode, plain and training / '
            'published; peak memory above the built model, on CUDA only)'),
        '\ntargets:'
    ]
    for t in targets:
        ratio = 'n/a' if t['result'] == 'n/a' else f'{t["ratio"]:.3g}'
        lines.append(f'{t["result"]:4}  {t["target"]}: {ratio} '
                     f'(target {t["threshold"]}); {t["detail"]}')
    lines += [f'note: {note}' for note in notes]
    lines.append(f'written: {", ".join(files.values())}')
    return lines


# ------------------------------------------------------------- command line
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
        # Triton reads it when the kernels are imported (in the first
        # measurement).
        os.environ.setdefault('TRITON_INTERPRET', '1')
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
