# Copyright (c) mmvheat contributors. All rights reserved.
"""Speed, memory and FLOPs of vHeat against Swin (and MPViT), and of the HCO.

Two levels, both measured side by side in one run (candidates interleaved
round-robin, ``--repeats`` timed calls each after a warm-up, median taken),
so the *ratios* are the result; absolute times on CPU are informative only.

* op level: the HCO ``IDCT2D(DCT2D(x) * transfer)`` at the stage shapes of
  vHeat-T (``B, res/4/2^i, res/4/2^i, C_i``) for 224/512/1024 inputs, three
  implementations: ``reference`` (four matmuls, the baseline), ``triton``
  (the fused kernel; CUDA only -- skipped with a note on CPU, the
  interpreter is no benchmark) and ``published`` (cosine matrices through
  ``F.conv1d`` in separate passes). Per implementation and stage the
  exponent ``p`` of ``time ~ N^p`` (N = H*W pixels) is fitted by log-log
  least squares; the operator's MACs grow as ``N^1.5``. Each output is
  also compared with float32 arithmetic on the unrounded input
  (``max_rel_err``): with ``--dtype bf16``/``fp16`` that is the operator's
  half-precision error.
* model level: ImageNet classifiers (backbone, global pooling, linear head)
  of vHeat-T/S/B, mmpretrain's Swin-T/S/B and MPViT-T/XS/S/B at each
  resolution, inference (``torch.no_grad``, eval mode) and/or one training
  step (forward, cross-entropy, backward, AdamW step): images/s, throughput
  ratio to the baseline model (the first one), peak memory, FLOPs per image
  (MACs, fvcore/mmengine convention like the papers, HCO counted right; see
  :mod:`mmvheat.analysis.flops`) and params. Inference runs the models
  switched to deploy mode (:func:`mmvheat.models.switch_to_deploy`).
  ``vheat-t-pub`` etc. run the same weights through the published dataflow
  (NCHW, conv1d DCTs; :mod:`mmvheat.analysis.published`).

Peak memory is ``torch.cuda.max_memory_allocated`` during the timed calls
minus what was allocated before, plus the model's own parameters, buffers
(and AdamW state for training), on GPU. On CPU it is reported as n/a (empty
in the CSV): the process RSS high-water mark is shared by all the models of
a run and cannot attribute a peak to one of them.

``tools/analysis_tools/benchmark.py`` is the command line; it writes the
CSV files, the plot and the tables.
"""
import csv
import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mmvheat.models import switch_to_deploy
from mmvheat.ops import dct_basis, spectral_filter_reference
from .flops import hco_macs, model_complexity
from .published import conv1d_spectral_filter, published_forward

__all__ = [
    'MODEL_NAMES', 'MODEL_COLUMNS', 'OP_COLUMNS', 'EXP_COLUMNS',
    'run_round_robin', 'fit_exponent', 'benchmark_ops', 'benchmark_models',
    'build_classifier', 'format_table', 'write_csv', 'plot'
]

VHEAT_T_DIMS = (96, 192, 384, 768)
VHEAT_T_DEPTHS = (2, 2, 6, 2)

# model name -> (backbone family, arch, channels of the last stage)
_ARCHS = {
    'vheat-t': ('vheat', 'tiny', 768),
    'vheat-s': ('vheat', 'small', 768),
    'vheat-b': ('vheat', 'base', 1024),
    'swin-t': ('swin', 'tiny', 768),
    'swin-s': ('swin', 'small', 768),
    'swin-b': ('swin', 'base', 1024),
    'mpvit-t': ('mpvit', 'tiny', 216),
    'mpvit-xs': ('mpvit', 'xsmall', 256),
    'mpvit-s': ('mpvit', 'small', 288),
    'mpvit-b': ('mpvit', 'base', 480),
}
MODEL_NAMES = sorted(_ARCHS) + [
    f'{n}-pub' for n in sorted(_ARCHS) if n.startswith('vheat')
]

MODEL_COLUMNS = [
    'model', 'resolution', 'batch_size', 'mode', 'dtype', 'device',
    'median_ms', 'images_per_s', 'speedup_vs_baseline', 'peak_mem_mb',
    'mem_vs_baseline', 'gflops_per_image', 'gflops_shared', 'params_m',
    'status'
]
OP_COLUMNS = [
    'impl', 'input_res', 'stage', 'batch_size', 'H', 'W', 'C', 'N', 'mode',
    'dtype', 'device', 'median_ms', 'speedup_vs_reference', 'gmacs',
    'gmacs_per_s', 'max_rel_err', 'status'
]
EXP_COLUMNS = ['impl', 'stage', 'C', 'mode', 'exponent', 'points']


# ---------------------------------------------------------------- utilities
def _dtype(name: str) -> Optional[torch.dtype]:
    return {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[name]


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(
        device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err,
                      torch.cuda.OutOfMemoryError) or ('out of memory'
                                                       in str(err).lower())


class _Candidate:
    """A callable timed round-robin with the others of its group."""

    def __init__(self,
                 name: str,
                 fn: Callable[[], None],
                 extra_bytes: int = 0):
        self.name = name
        self.fn = fn
        self.extra_bytes = extra_bytes
        self.times: List[float] = []
        self.peak: Optional[int] = None
        self.status = 'ok'


def run_round_robin(cands: List[_Candidate], repeats: int, warmup: int,
                    device: torch.device):
    """Warm each candidate up, then time ``repeats`` calls interleaved."""
    for c in cands:
        try:
            for _ in range(warmup):
                c.fn()
            _sync(device)
        except Exception as e:  # noqa: BLE001 -- keep the others running
            c.status = 'OOM' if _is_oom(e) else f'error: {e}'[:200]
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    for _ in range(repeats):
        for c in cands:
            if c.status != 'ok':
                continue
            try:
                if device.type == 'cuda':
                    _sync(device)
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                c.fn()
                _sync(device)
                c.times.append(time.perf_counter() - t0)
                if device.type == 'cuda':
                    peak = torch.cuda.max_memory_allocated(device) - base
                    c.peak = max(c.peak or 0, peak + c.extra_bytes)
            except Exception as e:  # noqa: BLE001
                c.status = 'OOM' if _is_oom(e) else f'error: {e}'[:200]
                if device.type == 'cuda':
                    torch.cuda.empty_cache()


def _median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float('nan')


def fit_exponent(ns: List[float], ts: List[float]) -> float:
    """Least-squares slope of ``log t`` against ``log n``."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts)
           if t > 0 and not math.isnan(t)]
    if len(pts) < 2:
        return float('nan')
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx)**2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx else float('nan')


def _fmt(v, spec='.3g'):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 'n/a'
    return format(v, spec) if isinstance(v, float) else str(v)


def format_table(rows: List[dict], columns: List[str], title: str) -> str:
    """``rows`` as a text table under ``title``."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [
        max([len(c)] + [len(row[i]) for row in cells])
        for i, c in enumerate(columns)
    ]
    lines = [
        f'\n{title}', ' | '.join(c.ljust(w) for c, w in zip(columns, widths)),
        '-+-'.join('-' * w for w in widths)
    ]
    lines += [
        ' | '.join(v.ljust(w) for v, w in zip(row, widths)) for row in cells
    ]
    return '\n'.join(lines)


def write_csv(path: str, rows: List[dict], columns: List[str]):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        for r in rows:
            writer.writerow({
                c:
                ('' if r.get(c) is None or
                 (isinstance(r.get(c), float) and math.isnan(r[c])) else r[c])
                for c in columns
            })


# ---------------------------------------------------------------- op level
def _op_impls(device: torch.device,
              notes: List[str]) -> Dict[str, Optional[Callable]]:
    impls: Dict[str, Optional[Callable]] = {
        'reference': spectral_filter_reference,
        'triton': None,
        'published': conv1d_spectral_filter,
    }
    if device.type == 'cuda':
        try:
            from mmvheat.ops.triton_hco import spectral_filter_triton
            impls['triton'] = spectral_filter_triton
        except ImportError as e:
            notes.append(f'Triton kernel unavailable ({e}); skipped')
    else:
        notes.append('fused Triton kernel rows skipped on CPU (Triton needs '
                     'CUDA; its interpreter is not a benchmark)')
    return impls


def _max_rel_err(out: torch.Tensor, exact: torch.Tensor) -> float:
    """``max |out - exact| / max |exact|``."""
    return ((out.float() - exact).abs().max() / exact.abs().max()).item()


def _modes(mode: str) -> List[str]:
    return ['infer', 'train'] if mode == 'both' else [mode]


def benchmark_ops(device: torch.device,
                  resolutions: Sequence[int] = (224, 512, 1024),
                  stages: Sequence[int] = (0, 1, 2, 3),
                  batch_size: int = 64,
                  mode: str = 'both',
                  dtype: str = 'fp32',
                  repeats: int = 10,
                  warmup: int = 2) -> Tuple[List[dict], List[dict], List[str]]:
    """Time the HCO implementations at vHeat-T's stage shapes.

    Args:
        device (torch.device): Where to run.
        resolutions (Sequence[int]): Input resolutions of the network.
        stages (Sequence[int]): Stages of vHeat-T whose shapes are timed.
        batch_size (int): Images per call.
        mode (str): ``'infer'``, ``'train'`` (forward and backward) or
            ``'both'``.
        dtype (str): ``'fp32'``, ``'bf16'`` or ``'fp16'``.
        repeats (int): Timed calls per candidate.
        warmup (int): Untimed calls per candidate first.

    Returns:
        tuple: the rows (:data:`OP_COLUMNS`), the fitted exponents
        (:data:`EXP_COLUMNS`) and notes for the reader.
    """
    notes: List[str] = []
    half = _dtype(dtype)
    impls = _op_impls(device, notes)
    modes = _modes(mode)
    rows = []
    for mode in modes:
        for res in resolutions:
            for stage, c in enumerate(VHEAT_T_DIMS):
                if stage not in stages:
                    continue
                h = w = res // 4 // 2**stage
                b = batch_size
                x32 = torch.randn(b, h, w, c, device=device)
                x = x32 if half is None else x32.to(half)
                transfer = torch.rand(h, w, c, device=device)
                dct_basis(h, device, torch.float32)  # warm the basis cache
                # What each implementation loses against float32 arithmetic
                # on the unrounded input (for fp32: their disagreement).
                with torch.no_grad():
                    exact = spectral_filter_reference(x32, transfer)
                errors = {}
                cands = []
                for name, fn in impls.items():
                    if fn is None:
                        continue

                    def call(fn=fn, name=name, x=x, t=transfer):
                        if name == 'published':
                            # F.conv1d, in the autocast dtype as published
                            with _autocast(device, half):
                                return fn(x.float(), t)
                        return fn(x, t)

                    if mode == 'infer':
                        with torch.no_grad():
                            errors[name] = _max_rel_err(call(), exact)
                    if mode == 'train':
                        xg = x.detach().requires_grad_()

                        def step(call=call, xg=xg):
                            call(x=xg).float().sum().backward()
                            xg.grad = None
                    else:

                        def step(call=call):
                            with torch.no_grad():
                                call()

                    cands.append(_Candidate(name, step))
                run_round_robin(cands, repeats, warmup, device)
                times = {c.name: _median(c.times) for c in cands}
                ref = times.get('reference', float('nan'))
                macs = hco_macs(h, w, c, b) / 1e9
                shape = dict(
                    input_res=res,
                    stage=stage,
                    batch_size=b,
                    H=h,
                    W=w,
                    C=c,
                    N=h * w,
                    mode=mode,
                    dtype=dtype,
                    device=device.type,
                    gmacs=macs)
                for cand in cands:
                    t = times[cand.name]
                    rows.append(
                        dict(
                            shape,
                            impl=cand.name,
                            median_ms=t * 1e3,
                            speedup_vs_reference=ref / t,
                            gmacs_per_s=macs / t,
                            max_rel_err=errors.get(cand.name),
                            status=cand.status))
                if impls['triton'] is None:
                    rows.append(
                        dict(
                            shape, impl='triton',
                            status='skipped: needs CUDA'))
                del x, x32, exact, transfer
    exps = []
    for mode in modes:
        for impl in impls:
            sel = [
                r for r in rows if r['impl'] == impl and r['mode'] == mode
                and r['status'] == 'ok'
            ]
            for stage in sorted({r['stage'] for r in sel}):
                pts = [r for r in sel if r['stage'] == stage]
                exps.append(
                    dict(
                        impl=impl,
                        stage=stage,
                        C=VHEAT_T_DIMS[stage],
                        mode=mode,
                        exponent=fit_exponent([r['N'] for r in pts],
                                              [r['median_ms'] for r in pts]),
                        points=len(pts)))
            # all stages of a vHeat-T network (time summed over its blocks)
            by_res: Dict[int, float] = {}
            for r in sel:
                by_res[r['input_res']] = by_res.get(
                    r['input_res'],
                    0.) + r['median_ms'] * VHEAT_T_DEPTHS[r['stage']]
            if by_res:
                ns = [(res // 4)**2 for res in by_res]
                exps.append(
                    dict(
                        impl=impl,
                        stage='all (x depth)',
                        C='',
                        mode=mode,
                        exponent=fit_exponent(ns, list(by_res.values())),
                        points=len(by_res)))
    return rows, exps, notes


# ------------------------------------------------------------- model level
class _PublishedBackbone(nn.Module):
    """A VHeat run through :func:`published_forward`."""

    def __init__(self, vheat: nn.Module):
        super().__init__()
        self.vheat = vheat

    def forward(self, x):
        return published_forward(self.vheat, x)


def build_classifier(name: str, res: int) -> nn.Module:
    """``name`` (see :data:`MODEL_NAMES`) as an ImageNet classifier."""
    from mmpretrain.registry import MODELS
    published = name.endswith('-pub')
    family, arch, channels = _ARCHS[name[:-4] if published else name]
    if family == 'vheat':
        backbone = dict(
            type='mmvheat.VHeat', arch=arch, img_size=res, init_cfg=None)
    elif family == 'swin':
        backbone = dict(
            type='SwinTransformer',
            arch=arch,
            img_size=res,
            pad_small_map=True,
            init_cfg=None)
    else:
        backbone = dict(
            type='mmvheat.MPViT', arch=arch, out_indices=(3, ), init_cfg=None)
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=backbone,
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead', num_classes=1000, in_channels=channels)))
    if published:
        model.backbone = _PublishedBackbone(model.backbone)
    return model


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _flops(name: str, res: int, cache: dict):
    from mmvheat.apis import TensorModeWrapper
    key = (name[:-4] if name.endswith('-pub') else name, res)
    if key not in cache:
        model = build_classifier(key[0], res)
        info = model_complexity(
            TensorModeWrapper(model),
            torch.randn(1, 3, res, res),
            split_batch=True)
        cache[key] = (info['flops_per_image'] / 1e9,
                      info['flops_shared'] / 1e9, info['params'] / 1e6)
    return cache[key]


def benchmark_models(device: torch.device,
                     models: Sequence[str],
                     resolutions: Sequence[int] = (224, 384, 512, 768, 1024),
                     batch_size: int = 64,
                     mode: str = 'both',
                     dtype: str = 'fp32',
                     repeats: int = 10,
                     warmup: int = 2,
                     flops: bool = True) -> Tuple[List[dict], List[str]]:
    """Time ImageNet classifiers side by side; see the module doc.

    Args:
        device (torch.device): Where to run.
        models (Sequence[str]): Names from :data:`MODEL_NAMES`; the first
            one is the baseline of the ratios.
        resolutions (Sequence[int]): Input resolutions.
        batch_size (int): Images per call.
        mode (str): ``'infer'`` (eval, no gradients, deploy mode),
            ``'train'`` (a training step) or ``'both'``.
        dtype (str): ``'fp32'``, or ``'bf16'``/``'fp16'`` autocast.
        repeats (int): Timed calls per model.
        warmup (int): Untimed calls per model first.
        flops (bool): Count FLOPs (jit tracing, slow on a CPU).

    Returns:
        tuple: the rows (:data:`MODEL_COLUMNS`) and notes for the reader.
    """
    half = _dtype(dtype)
    notes: List[str] = []
    rows = []
    flop_cache: dict = {}
    modes = _modes(mode)
    for res in resolutions:
        for mode in modes:
            cands = []
            built = {}
            for name in models:
                torch.manual_seed(0)
                try:
                    model = build_classifier(name, res).to(device)
                except Exception as e:  # noqa: BLE001
                    notes.append(f'cannot build {name} at {res}: {e}')
                    continue
                built[name] = model
                x = torch.randn(batch_size, 3, res, res, device=device)
                extra = _nbytes(model.parameters()) + _nbytes(model.buffers())
                if mode == 'infer':
                    model.eval()
                    if not name.endswith('-pub'):
                        switch_to_deploy(model)

                    def step(model=model, x=x):
                        with torch.no_grad(), _autocast(device, half):
                            model(x, mode='tensor')
                else:
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                    labels = torch.randint(
                        0, 1000, (batch_size, ), device=device)
                    extra *= 3  # params + AdamW exp_avg / exp_avg_sq (fp32)
                    extra += _nbytes(model.parameters())  # grads

                    def step(model=model, x=x, opt=opt, labels=labels):
                        with _autocast(device, half):
                            logits = model(x, mode='tensor')
                        loss = F.cross_entropy(logits.float(), labels)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()

                cands.append(_Candidate(name, step, extra_bytes=extra))
            run_round_robin(cands, repeats, warmup, device)
            base = cands[0] if cands else None
            base_t = _median(base.times) if base else float('nan')
            for cand in cands:
                t = _median(cand.times)
                if flops:
                    gflops, shared, params = _flops(cand.name, res, flop_cache)
                else:
                    gflops = shared = float('nan')
                    params = sum(p.numel()
                                 for p in built[cand.name].parameters()) / 1e6
                peak = (
                    cand.peak /
                    2**20 if cand.peak is not None else float('nan'))
                base_peak = (
                    base.peak /
                    2**20 if base.peak is not None else float('nan'))
                rows.append(
                    dict(
                        model=cand.name,
                        resolution=res,
                        batch_size=batch_size,
                        mode=mode,
                        dtype=dtype,
                        device=device.type,
                        median_ms=t * 1e3,
                        images_per_s=batch_size / t,
                        speedup_vs_baseline=base_t / t,
                        peak_mem_mb=peak,
                        mem_vs_baseline=peak / base_peak,
                        gflops_per_image=gflops,
                        gflops_shared=shared,
                        params_m=params,
                        status=cand.status))
            del cands, built
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return rows, notes


def plot(rows: List[dict], path: str, title: str = ''):
    """Throughput, peak memory and FLOPs against resolution, one line per
    model and mode (matplotlib)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [('images_per_s', 'throughput (images/s)'),
              ('peak_mem_mb', 'peak memory (MiB)'),
              ('gflops_per_image', 'FLOPs per image (GMACs)')]
    keys = sorted({(r['model'], r['mode'])
                   for r in rows},
                  key=lambda k: (k[1], k[0]))
    for ax, (col, label) in zip(axes, panels):
        drawn = False
        for model, mode in keys:
            if col == 'gflops_per_image' and mode != keys[0][1]:
                continue  # FLOPs do not depend on the mode
            pts = sorted(
                (r['resolution'], r[col]) for r in rows
                if r['model'] == model and r['mode'] == mode and r['status'] ==
                'ok' and r[col] is not None and not math.isnan(r[col]))
            if not pts:
                continue
            style = '-' if mode == 'infer' else '--'
            lab = model if col == 'gflops_per_image' else f'{model} ({mode})'
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    style,
                    marker='o',
                    label=lab)
            drawn = True
        ax.set_xlabel('input resolution')
        ax.set_ylabel(label)
        ax.grid(alpha=.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(
                .5,
                .5,
                'n/a on this device',
                ha='center',
                transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
