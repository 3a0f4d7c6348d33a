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
* model level: ImageNet classifiers (backbone, global average pooling of
  its last output, linear head: :class:`Classifier`) of vHeat-T/S/B,
  mmpretrain's Swin-T/S/B and MPViT-T/XS/S/B at each resolution, inference
  (``torch.no_grad``, eval mode) and/or one training step (forward,
  cross-entropy, backward, AdamW step): images/s, throughput ratio to the
  baseline model (the first one) and to the published formulation of the
  same vHeat (like with like, below), peak memory, FLOPs per image (MACs,
  fvcore/mmengine convention like the papers, HCO counted right; see
  :mod:`mmvheat.analysis.flops`) and params.

  Each vHeat comes in four forms (:data:`VHEAT_VARIANTS`), all with the same
  weights: ``vheat-t`` is our model, switched to deploy mode for inference
  (:func:`mmvheat.models.switch_to_deploy`: filters folded once per input
  size, fused layers); ``vheat-t-plain`` is our model in plain eval mode;
  ``vheat-t-pub`` runs the published dataflow (NCHW, conv1d DCTs,
  ``decay ** k`` recomputed at every forward;
  :mod:`mmvheat.analysis.published`); ``vheat-t-pub-fold`` is the published
  inference mode, which folds ``decay ** k`` once at the pretraining size
  (``img_size``) and, at any other size, recomputes it at every forward as
  the published dense backbone does. Like with like, ``speedup_vs_published``
  compares the deployed model with ``-pub-fold`` and the plain one with
  ``-pub`` (training: ours with ``-pub``). ``-plain`` and ``-pub-fold`` are
  inference forms and are not timed in training.

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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from mmvheat.models import switch_to_deploy
from mmvheat.ops import dct_basis, spectral_filter_reference
from mmvheat.ops.dispatch import relative_error
from mmvheat.utils.io import atomic_write, first_line
from .flops import hco_macs, model_complexity
from .published import PublishedVHeat, conv1d_spectral_filter

__all__ = [
    'MODEL_NAMES', 'VHEAT_VARIANTS', 'INFER_ONLY_VARIANTS', 'MODEL_COLUMNS',
    'OP_COLUMNS', 'EXP_COLUMNS', 'Candidate', 'failure_status',
    'run_round_robin', 'fit_exponent', 'benchmark_ops', 'benchmark_models',
    'split_model_name', 'family_of', 'published_counterpart', 'Classifier',
    'build_classifier', 'format_table', 'csv_row', 'write_csv', 'PLOT_PANELS',
    'plot'
]

VHEAT_T_DIMS = (96, 192, 384, 768)
VHEAT_T_DEPTHS = (2, 2, 6, 2)

# model name -> (backbone family, arch)
_ARCHS = {
    'vheat-t': ('vheat', 'tiny'),
    'vheat-s': ('vheat', 'small'),
    'vheat-b': ('vheat', 'base'),
    'swin-t': ('swin', 'tiny'),
    'swin-s': ('swin', 'small'),
    'swin-b': ('swin', 'base'),
    'mpvit-t': ('mpvit', 'tiny'),
    'mpvit-xs': ('mpvit', 'xsmall'),
    'mpvit-s': ('mpvit', 'small'),
    'mpvit-b': ('mpvit', 'base'),
}
#: The forms of each vHeat model (see the module doc): ours (deployed for
#: inference), ours in plain eval mode, the published dataflow, and the
#: published inference mode.
VHEAT_VARIANTS = ('', '-plain', '-pub', '-pub-fold')
#: The forms that exist for inference only.
INFER_ONLY_VARIANTS = ('-plain', '-pub-fold')
MODEL_NAMES = sorted(_ARCHS) + [
    f'{n}{v}' for n in sorted(_ARCHS) if n.startswith('vheat')
    for v in VHEAT_VARIANTS[1:]
]

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


def failure_status(err: BaseException) -> str:
    """A row's ``status`` for a failed measurement: ``'OOM'`` or one line
    naming the error."""
    if _is_oom(err):
        return 'OOM'
    return f'error: {type(err).__name__}: {first_line(err)}'[:200]


class Candidate:
    """A callable timed round-robin with the others of its group.

    Args:
        name (str): What it runs.
        fn (callable): One call.
        extra_bytes (int): Memory it holds outside the call (its weights),
            added to the peak. Defaults to 0.
    """

    def __init__(self,
                 name: str,
                 fn: Callable[[], None],
                 extra_bytes: int = 0):
        self.name = name
        self.fn = fn
        self.extra_bytes = extra_bytes
        #: Seconds per call, one entry per timed sample.
        self.times: List[float] = []
        #: Calls in a row per timed sample.
        self.inner = 1
        self.peak: Optional[int] = None
        self.status = 'ok'

    def fail(self, err: BaseException, device: torch.device):
        """Record ``err`` (in one line) and free what the failure held."""
        self.status = failure_status(err)
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def _time_calls(fn: Callable[[], None], calls: int,
                device: torch.device) -> float:
    """Seconds per call of ``calls`` calls in a row: CUDA events on a GPU,
    the wall clock around synchronisation elsewhere."""
    if device.type == 'cuda':
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / calls


def run_round_robin(cands: List[Candidate],
                    repeats: int,
                    warmup: int,
                    device: torch.device,
                    min_sample_s: float = 0.,
                    deadline: Optional[float] = None):
    """Warm each candidate up, then time ``repeats`` rounds interleaved.

    A failing candidate is marked (``status``) and the others go on.

    Args:
        cands (list[Candidate]): Timed in turn; their ``times``, ``peak``
            and ``status`` are filled in.
        repeats (int): Timed rounds.
        warmup (int): Untimed calls per candidate first.
        device (torch.device): Where they run (CUDA: events and peaks).
        min_sample_s (float): A sample is as many calls in a row (at most
            100) as make it last this long, so that short calls are not
            timed by the launch of one. Defaults to 0: one call.
        deadline (float, optional): A ``time.monotonic()`` after which no
            round starts once each candidate has a sample. Defaults to
            None.
    """
    for c in cands:
        try:
            for _ in range(warmup):
                c.fn()
            _sync(device)
            if min_sample_s > 0:
                once = _time_calls(c.fn, 1, device)
                c.inner = max(1, min(100, math.ceil(min_sample_s / once)))
        except Exception as e:  # noqa: BLE001 -- keep the others running
            c.fail(e, device)
    for round_ in range(repeats):
        if round_ and deadline is not None and time.monotonic() > deadline:
            break
        for c in cands:
            if c.status != 'ok':
                continue
            try:
                if device.type == 'cuda':
                    _sync(device)
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                c.times.append(_time_calls(c.fn, c.inner, device))
                if device.type == 'cuda':
                    peak = torch.cuda.max_memory_allocated(device) - base
                    c.peak = max(c.peak or 0, peak + c.extra_bytes)
            except Exception as e:  # noqa: BLE001
                c.fail(e, device)


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


def csv_row(row: dict, columns: Sequence[str]) -> dict:
    """``row`` restricted to ``columns``, missing and NaN values empty."""
    return {
        c: ('' if row.get(c) is None or
            (isinstance(row.get(c), float) and math.isnan(row[c])) else row[c])
        for c in columns
    }


def write_csv(path: str, rows: List[dict], columns: List[str]):
    """``rows`` as CSV with a header of ``columns`` (:func:`csv_row`),
    written atomically."""
    with atomic_write(path, 'w') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow(csv_row(r, columns))


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
            import mmvheat.ops.triton_hco  # noqa: F401
            from mmvheat.ops.dispatch import spectral_filter_kernel
            impls['triton'] = spectral_filter_kernel
        except ImportError as e:
            notes.append(f'Triton kernel unavailable ({e}); skipped')
    else:
        notes.append('fused Triton kernel rows skipped on CPU (Triton needs '
                     'CUDA; its interpreter is not a benchmark)')
    return impls


def _modes(mode: str) -> List[str]:
    return ['infer', 'train'] if mode == 'both' else [mode]


def benchmark_ops(
    device: torch.device,
    resolutions: Sequence[int] = (224, 512, 1024),
    stages: Sequence[int] = (0, 1, 2, 3),
    batch_size: int = 64,
    mode: str = 'both',
    dtype: str = 'fp32',
    repeats: int = 10,
    warmup: int = 2,
    progress: Optional[Callable[[str], None]] = None
) -> Tuple[List[dict], List[dict], List[str]]:
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
        progress (callable, optional): Called with one line per measured
            shape. Defaults to None.

    Returns:
        tuple: the rows (:data:`OP_COLUMNS`), the fitted exponents
        (:data:`EXP_COLUMNS`) and notes for the reader.
    """
    notes: List[str] = []
    half = _dtype(dtype)
    impls = _op_impls(device, notes)
    modes = _modes(mode)
    rows = []
    shapes = [(mode, res, stage) for mode in modes for res in resolutions
              for stage in range(len(VHEAT_T_DIMS)) if stage in stages]
    for done, (mode, res, stage) in enumerate(shapes, 1):
        c = VHEAT_T_DIMS[stage]
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
                    errors[name] = relative_error(call(), exact)
            if mode == 'train':
                xg = x.detach().requires_grad_()

                def step(call=call, xg=xg):
                    call(x=xg).float().sum().backward()
                    xg.grad = None
            else:

                def step(call=call):
                    with torch.no_grad():
                        call()

            cands.append(Candidate(name, step))
        run_round_robin(cands, repeats, warmup, device)
        if progress is not None:
            progress(f'[{done}/{len(shapes)}] op {res} stage {stage} '
                     f'{mode}: {_fmt_times(cands)}')
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
                dict(shape, impl='triton', status='skipped: needs CUDA'))
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
def split_model_name(name: str) -> Tuple[str, str]:
    """``'vheat-t-pub-fold'`` -> ``('vheat-t', '-pub-fold')``."""
    for variant in sorted(VHEAT_VARIANTS, key=len, reverse=True):
        base = name[:-len(variant)] if variant else name
        if variant and name.endswith(variant) and \
                _ARCHS.get(base, ('', ))[0] == 'vheat':
            return base, variant
    if name not in _ARCHS:
        raise ValueError(f'unknown model {name!r}; choose from {MODEL_NAMES}')
    return name, ''


def family_of(name: str) -> str:
    """``'vheat'``, ``'swin'`` or ``'mpvit'``."""
    return _ARCHS[split_model_name(name)[0]][0]


def published_counterpart(name: str, mode: str) -> Optional[str]:
    """The published formulation to compare ``name`` with, like with like:
    deployed with folded, plain with recomputed (training: ours with
    ``-pub``); None for the other models."""
    base, variant = split_model_name(name)
    if _ARCHS[base][0] != 'vheat':
        return None
    if variant == '-plain' or (variant == '' and mode == 'train'):
        return base + '-pub'
    if variant == '':
        return base + '-pub-fold'
    return None


class Classifier(nn.Module):
    """An ImageNet classifier: ``backbone``, global average pooling of its
    last output, a linear head (what mmpretrain's ``ImageClassifier`` with
    ``GlobalAveragePooling`` and ``LinearClsHead`` computes, without
    mmpretrain).

    Args:
        backbone (nn.Module): Returns a tuple of NCHW maps.
        channels (int): Channels of its last output.
        num_classes (int): Classes. Defaults to 1000.
    """

    def __init__(self,
                 backbone: nn.Module,
                 channels: int,
                 num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def build_classifier(name: str,
                     res: int,
                     img_size: Optional[int] = None,
                     arch: Optional[Union[str, dict]] = None) -> nn.Module:
    """``name`` (see :data:`MODEL_NAMES`) as a :class:`Classifier`.

    Swin needs mmpretrain (imported here); vHeat and MPViT need nothing
    beyond mmvheat.

    Args:
        name (str): The model.
        res (int): Input resolution (Swin's ``img_size``).
        img_size (int, optional): vHeat's pretraining size (the size of its
            frequency embeddings). Defaults to None: ``res``.
        arch (str | dict, optional): The backbone's ``arch`` instead of the
            one ``name`` says (a small custom one for quick checks).
            Defaults to None.
    """
    from mmvheat.models import MPViT, VHeat
    base, variant = split_model_name(name)
    family, named_arch = _ARCHS[base][:2]
    arch = arch or named_arch
    if family == 'swin':
        from mmpretrain.models import SwinTransformer
        backbone = SwinTransformer(
            arch=arch, img_size=res, pad_small_map=True, init_cfg=None)
        return Classifier(backbone, backbone.num_features[-1])
    if family == 'mpvit':
        backbone = MPViT(arch=arch, out_indices=(3, ), init_cfg=None)
        return Classifier(backbone, backbone.stage_channels[-1])
    backbone = VHeat(arch=arch, img_size=img_size or res, init_cfg=None)
    channels = backbone.stage_channels[-1]
    if variant.startswith('-pub'):
        backbone = PublishedVHeat(backbone, infer_mode=variant == '-pub-fold')
    return Classifier(backbone, channels)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _flops(name: str, res: int, img_size: Optional[int],
           arch: Optional[Union[str, dict]], cache: dict):
    key = (split_model_name(name)[0], res, img_size)
    if key not in cache:
        model = build_classifier(key[0], res, img_size, arch)
        info = model_complexity(
            model, torch.randn(1, 3, res, res), split_batch=True)
        cache[key] = (info['flops_per_image'] / 1e9,
                      info['flops_shared'] / 1e9, info['params'] / 1e6)
    return cache[key]


def _folds_at(name: str, res: int, img_size: Optional[int]) -> bool:
    """Whether ``name`` in inference keeps its filters ``decay ** k`` across
    forwards at ``res`` (so that none of its FLOPs are shared per call)."""
    variant = split_model_name(name)[1]
    return variant == '' or (variant == '-pub-fold' and
                             (img_size or res) == res)


def _fmt_times(cands) -> str:
    return ' | '.join(
        f'{c.name} {_median(c.times) * 1e3:.4g} ms' if c.status ==
        'ok' else f'{c.name} {c.status}' for c in cands)


def benchmark_models(
    device: torch.device,
    models: Sequence[str],
    resolutions: Sequence[int] = (224, 384, 512, 768, 1024),
    batch_size: int = 64,
    mode: str = 'both',
    dtype: str = 'fp32',
    repeats: int = 10,
    warmup: int = 2,
    flops: bool = True,
    img_size: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
    deadline: Optional[float] = None,
    archs: Optional[Dict[str, Union[str, dict]]] = None
) -> Tuple[List[dict], List[str]]:
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
        img_size (int, optional): vHeat's pretraining size. Defaults to
            None: each resolution (so the published inference mode folds
            at every resolution).
        progress (callable, optional): Called with one line per measured
            configuration. Defaults to None.
        deadline (float, optional): A ``time.monotonic()`` after which each
            configuration stops at its first complete round of samples.
            Defaults to None.
        archs (dict, optional): ``family -> arch`` (``'vheat'``,
            ``'swin'``, ``'mpvit'``) in place of the ones the names say,
            e.g. small custom archs for quick checks. Defaults to None.

    Returns:
        tuple: the rows (:data:`MODEL_COLUMNS`) and notes for the reader.
    """
    half = _dtype(dtype)
    notes: List[str] = []
    rows = []
    flop_cache: dict = {}
    archs = archs or {}
    modes = _modes(mode)
    for name in models:
        split_model_name(name)  # unknown names fail before any work
    infer_only = [
        n for n in models if split_model_name(n)[1] in INFER_ONLY_VARIANTS
    ]
    if infer_only and 'train' in modes:
        notes.append(f'{", ".join(infer_only)}: inference forms, not timed '
                     'in training')
    groups = [(res, mode) for res in resolutions for mode in modes]
    for done, (res, mode) in enumerate(groups, 1):
        cands = []
        built = {}
        for name in models:
            if mode == 'train' and name in infer_only:
                continue
            torch.manual_seed(0)
            try:
                model = build_classifier(name, res, img_size,
                                         archs.get(family_of(name))).to(device)
            except Exception as e:  # noqa: BLE001
                notes.append(f'cannot build {name} at {res}: '
                             f'{type(e).__name__}: {first_line(e)}')
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                continue
            built[name] = model
            x = torch.randn(batch_size, 3, res, res, device=device)
            extra = _nbytes(model.parameters()) + _nbytes(model.buffers())
            if mode == 'infer':
                model.eval()
                if split_model_name(name)[1] == '':
                    switch_to_deploy(model)

                def step(model=model, x=x):
                    with torch.no_grad(), _autocast(device, half):
                        model(x)
            else:
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                labels = torch.randint(0, 1000, (batch_size, ), device=device)
                extra *= 3  # params + AdamW exp_avg / exp_avg_sq (fp32)
                extra += _nbytes(model.parameters())  # grads

                def step(model=model, x=x, opt=opt, labels=labels):
                    with _autocast(device, half):
                        logits = model(x)
                    loss = F.cross_entropy(logits.float(), labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            cands.append(Candidate(name, step, extra_bytes=extra))
        run_round_robin(cands, repeats, warmup, device, deadline=deadline)
        if progress is not None:
            progress(f'[{done}/{len(groups)}] models {res} {mode}: '
                     f'{_fmt_times(cands)}')
        times = {c.name: _median(c.times) for c in cands}
        base = cands[0] if cands else None
        base_t = _median(base.times) if base else float('nan')
        for cand in cands:
            t = times[cand.name]
            if flops:
                gflops, shared, params = _flops(
                    cand.name, res, img_size, archs.get(family_of(cand.name)),
                    flop_cache)
                if mode == 'infer' and _folds_at(cand.name, res, img_size):
                    shared = 0.
            else:
                gflops = shared = float('nan')
                params = sum(p.numel()
                             for p in built[cand.name].parameters()) / 1e6
            peak = (
                cand.peak / 2**20 if cand.peak is not None else float('nan'))
            base_peak = (
                base.peak / 2**20 if base.peak is not None else float('nan'))
            counterpart = published_counterpart(cand.name, mode)
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
                    speedup_vs_published=times.get(counterpart, float('nan')) /
                    t,
                    peak_mem_mb=peak,
                    mem_vs_baseline=peak / base_peak,
                    gflops_per_image=gflops,
                    gflops_shared=shared,
                    params_m=params,
                    samples=len(cand.times),
                    status=cand.status))
        del cands, built
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return rows, notes


#: The plot's default panels: (column, axis label).
PLOT_PANELS = (('images_per_s',
                'throughput (images/s)'), ('peak_mem_mb', 'peak memory (MiB)'),
               ('gflops_per_image', 'FLOPs per image (GMACs)'))


def plot(rows: List[dict],
         path: str,
         title: str = '',
         panels: Sequence[Tuple[str, str]] = PLOT_PANELS):
    """Model rows against resolution, one line per model and mode (solid:
    inference, dashed: training), one panel per ``(column, label)`` of
    ``panels``, as the paper's Figure 1 draws them (matplotlib).

    Args:
        rows (list[dict]): Rows with ``model``, ``mode``, ``resolution``,
            ``status`` and the panels' columns.
        path (str): The image to write.
        title (str): Above the panels. Defaults to ``''``.
        panels (Sequence[tuple]): Defaults to :data:`PLOT_PANELS`.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    keys = sorted({(r['model'], r['mode'])
                   for r in rows},
                  key=lambda k: (k[1], k[0]))
    for ax, (col, label) in zip(axes[0], panels):
        drawn = False
        for model, mode in keys:
            if col == 'gflops_per_image' and mode != keys[0][1]:
                continue  # FLOPs do not depend on the mode
            pts = sorted(
                (r['resolution'], r[col]) for r in rows
                if r['model'] == model and r['mode'] == mode and r['status'] ==
                'ok' and r.get(col) is not None and not math.isnan(r[col]))
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
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=120)
    plt.close(fig)
