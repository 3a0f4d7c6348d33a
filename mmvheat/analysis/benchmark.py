# Copyright (c) mmvheat contributors. All rights reserved.
"""One measurement harness for the HCO and whole models, side by side.

Shaped like mmdet's ``utils/benchmark.py``: each measured thing is a
:class:`Candidate` (``run_once``: one call; ``run``: calls in a row, timed)
and :func:`run_round_robin` runs a group of them interleaved (``repeats``
rounds after ``warmup`` calls, median taken), so the *ratios* are the
result: each speed-up is the median of the rounds' ratios
(:func:`paired_speedup`). ``tools/analysis_tools/benchmark.py`` and its
preset ``gpu_report.py`` are the command lines.

Operator (:func:`measure_hco`): ``reference`` (four float32 matmuls), each
Triton kernel path that takes the shape (``fused`` for grids up to 32 x 32,
``tiled`` for any), ``autotuned`` (the dispatcher's choice), ``published``
(``F.conv1d`` transforms, ``decay ** k`` recomputed from ``k`` in every
call, half precision under autocast) and ``copy``; errors against float64
on the same rounded inputs and against float32 on the unrounded input,
bandwidth against the copy.

Models (:func:`benchmark_models`): classifiers (:class:`Classifier`) of
vHeat-T/S/B, Swin-T/S/B (mmpretrain) and MPViT-T/XS/S/B, inference and a
training step. Each vHeat in four forms with the same weights
(:data:`VHEAT_VARIANTS`): deployed for inference, ``-plain`` (eval mode),
``-pub`` (the published dataflow, :mod:`mmvheat.analysis.published`) and
``-pub-fold`` (the published inference mode, folded at ``img_size``). With
a checkout of the published repository, ``-published`` and
``-published-fold`` are its own classifier in the same two modes, with the
same weights (:mod:`mmvheat.analysis.published_repo`).

Peak memory is the most memory in use during a row's calls (a warm-up and
the measured ones) above what the built model (weights, input, optimizer)
held before them, so what the first call creates (AdamW moments, folded
filters) counts. On CUDA ``torch.cuda.max_memory_allocated`` around each
call gives it. On the CPU each row runs in a process of its own
(:func:`measure_memory`): the resident set's high-water mark (Linux's
``VmHWM``, reset once the model is built), with every allocation above
64 KiB mapped on its own (``MALLOC_MMAP_THRESHOLD_``) so that freed memory
leaves the resident set at once and the mark follows the memory in use.
"""
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from importlib import import_module
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmvheat.models import VHeat, switch_to_deploy
from mmvheat.ops import hco_dispatcher, spectral_filter_reference
from mmvheat.ops.dispatch import (REFERENCE, relative_error,
                                  spectral_filter_autotuned,
                                  spectral_filter_kernel)
from mmvheat.ops.spectral import spectral_filter_reference_grads
from mmvheat.utils.io import atomic_write, first_line
from .flops import model_complexity
from .published import (PublishedVHeat, conv1d_spectral_filter,
                        published_transfer)
from .published_repo import published_classifier

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
#: The forms of each vHeat: ours (deployed for inference), ours in plain
#: eval mode, the published dataflow, the published inference mode, and the
#: published classifier itself in those two modes (from a checkout).
VHEAT_VARIANTS = ('', '-plain', '-pub', '-pub-fold', '-published',
                  '-published-fold')
#: The forms that exist for inference only.
INFER_ONLY_VARIANTS = ('-plain', '-pub-fold', '-published-fold')
#: The forms built from a checkout of the published repository.
CHECKOUT_VARIANTS = ('-published', '-published-fold')
MODEL_NAMES = sorted(_ARCHS) + [
    f'{n}{v}' for n in sorted(_ARCHS) if n.startswith('vheat')
    for v in VHEAT_VARIANTS[1:]
]
#: The figure's panels: (column, axis label).
PLOT_PANELS = (('images_per_s', 'throughput (images/s)'),
               ('peak_mem_mb', 'peak memory (MiB)'))
_DTYPES = {
    'fp32': torch.float32,
    'bf16': torch.bfloat16,
    'fp16': torch.float16
}
_NAN = float('nan')
_CPU = torch.device('cpu')


# ---------------------------------------------------------------- harness
def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _free(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(
        device.type, dtype=_DTYPES[dtype], enabled=dtype != 'fp32')


def _median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else _NAN


def _ratio(a: float, b: float) -> float:
    return a / b if b else _NAN


def paired_speedup(baseline: List[float], times: List[float]) -> float:
    """How many times faster ``times`` ran than ``baseline``: the median
    over the rounds of each round's ratio (round ``i`` timed both one
    after the other), so that a machine whose speed drifts between rounds
    moves both sides of each ratio alike. NaN without a common round."""
    return _median([a / b for a, b in zip(baseline, times) if b])


def failure_status(err: BaseException) -> str:
    """A row's ``status`` for a failed measurement: ``'OOM'`` or one line
    naming the error."""
    if isinstance(err, torch.cuda.OutOfMemoryError) or \
            'out of memory' in str(err).lower():
        return 'OOM'
    return f'error: {type(err).__name__}: {first_line(err)}'[:200]


def _time_calls(fn: Callable, calls: int, device: torch.device) -> float:
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


class Candidate:
    """One measured thing, timed round-robin with the others of its group.

    Args:
        name (str): What it runs.
        fn (callable, optional): One call. Defaults to None: a subclass
            overrides :meth:`run_once`.
    """

    def __init__(self, name: str, fn: Optional[Callable] = None):
        self.name, self.fn, self.status = name, fn, 'ok'
        self.times: List[float] = []  # seconds per call, one per sample
        self.inner = 1  # calls in a row per sample
        self.peak: Optional[int] = None  # bytes, on CUDA
        self._held = 0  # bytes its calls left allocated (CUDA)

    def run_once(self):
        """One call."""
        return self.fn()

    def run(self, calls: int, device: torch.device) -> float:
        """Seconds per call of ``calls`` calls in a row; on CUDA also the
        peak memory (:attr:`peak`, see the module doc)."""
        if device.type != 'cuda':
            return _time_calls(self.run_once, calls, device)
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        seconds = _time_calls(self.run_once, calls, device)
        peak = torch.cuda.max_memory_allocated(device) - before
        self.peak = max(self.peak or 0, self._held + peak)
        self._held += torch.cuda.memory_allocated(device) - before
        return seconds

    def fail(self, err: BaseException, device: torch.device):
        """Record ``err`` (in one line) and free what the failure held."""
        self.status = failure_status(err)
        _free(device)


def run_round_robin(cands: List[Candidate],
                    repeats: int,
                    warmup: int,
                    device: torch.device,
                    min_sample_s: float = 0.,
                    deadline: Optional[float] = None):
    """Warm each candidate up, then time ``repeats`` rounds interleaved; a
    failing candidate is marked (``status``) and the others go on.

    Args:
        cands (list[Candidate]): Their ``times``, ``peak`` and ``status``
            are filled in.
        repeats (int): Timed rounds.
        warmup (int): Untimed calls per candidate first.
        device (torch.device): Where they run.
        min_sample_s (float): A sample is as many calls in a row (at most
            100) as make it last this long. Defaults to 0: one call.
        deadline (float, optional): A ``time.monotonic()`` after which no
            round starts once each candidate has a sample. Defaults to None.
    """
    for c in cands:
        try:
            if warmup:
                c.run(warmup, device)
            if min_sample_s > 0:
                once = c.run(1, device)
                c.inner = max(1, min(100, math.ceil(min_sample_s / once)))
        except Exception as e:  # noqa: BLE001 -- keep the others running
            c.fail(e, device)
    for round_ in range(repeats):
        if round_ and deadline is not None and time.monotonic() > deadline:
            break
        for c in [c for c in cands if c.status == 'ok']:
            try:
                c.times.append(c.run(c.inner, device))
            except Exception as e:  # noqa: BLE001
                c.fail(e, device)


def times_line(rows: List[dict], key: str, column: str, unit: str) -> str:
    """``'name value unit | ...'`` of measured rows (or their status)."""
    return ' | '.join(f'{r[key]} {r[column]:.4g} {unit}' if r.get('status') ==
                      'ok' else f'{r[key]} {r.get("status")}' for r in rows)


# ---------------------------------------------------------------- operator
def kernels_run_on(device: torch.device) -> bool:
    """Whether the Triton kernels run on ``device`` in this process: on CUDA
    compiled, on the CPU in Triton's interpreter (chosen at their import)."""
    try:
        from mmvheat.ops.triton_hco import triton_interpret_enabled
    except ImportError:
        return False
    return (device.type == 'cuda') != triton_interpret_enabled()


def kernel_paths() -> Tuple[str, ...]:
    """The Triton kernel paths (none without Triton)."""
    try:
        from mmvheat.ops.triton_hco import KERNEL_PATHS
    except ImportError:
        return ()
    return KERNEL_PATHS


def stage_grid(size: Tuple[int, int], stage: int) -> Tuple[int, int]:
    """``(H, W)`` of stage ``stage``'s map for an input of ``size``: the stem
    halves twice, each later stage once more (3x3 convolutions of stride 2
    and padding 1 give ``ceil(n / 2)``)."""
    h, w = size
    for _ in range(2 + stage):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _ideal_bytes(x: Tensor, transfer: Tensor, mode: str) -> int:
    """Bytes an ideal implementation moves: read ``x`` and the filter, write
    ``y``; in training also read ``x`` and the output gradient, write
    ``x``'s gradient, read the filter and write its gradient."""
    xb = x.numel() * x.element_size()
    tb = transfer.numel() * transfer.element_size()
    return 2 * xb + tb if mode == 'infer' else 5 * xb + 3 * tb


def _filters(names: Sequence[str], device: torch.device,
             half: Optional[torch.dtype]) -> Dict[str, Callable]:
    """``name -> f(x, transfer)`` for each implementation in ``names`` and
    the published formulation."""

    def kernel(path):
        return lambda x, t: spectral_filter_kernel(x, t, path)

    def published(x, t):
        with torch.autocast(
                device.type, dtype=half or torch.float32, enabled=bool(half)):
            return conv1d_spectral_filter(x, t)

    fns = {name: kernel(name) for name in names if name in kernel_paths()}
    fns.update(
        reference=spectral_filter_reference,
        autotuned=spectral_filter_autotuned,
        published=published)
    return {name: fns[name] for name in list(names) + ['published']}


def _exact(x: Tensor, transfer: Tensor, grad: Optional[Tensor]):
    """The float64 reference: output, and with ``grad`` the gradients."""
    x64, t64 = x.detach().double(), transfer.detach().double()
    with torch.no_grad():
        y64 = spectral_filter_reference(x64, t64)
        if grad is None:
            return y64, None, None
        return (y64, *spectral_filter_reference_grads(x64, t64, grad.double()))


def _errors(fn: Callable, x: Tensor, transfer: Tensor, grad: Optional[Tensor],
            exact) -> Dict[str, float]:
    """One call of ``fn`` compared with the float64 ``exact`` results
    (``max |y - y64| / max |y64|``)."""
    if grad is None:
        with torch.no_grad():
            return dict(err_out=relative_error(fn(x, transfer), exact[0]))
    xg = x.detach().requires_grad_()
    tg = transfer.detach().requires_grad_()
    y = fn(xg, tg)
    got = (y, ) + torch.autograd.grad(y, (xg, tg), grad)
    return {
        name: relative_error(a, b)
        for name, a, b in zip(('err_out', 'err_grad_x',
                               'err_grad_t'), got, exact)
    }


def _step(name: str, fn: Callable, x: Tensor, transfer: Tensor, k: Tensor,
          grad: Optional[Tensor]) -> Callable[[], None]:
    """One timed call: forward (and backward to ``x`` and the filter with
    ``grad``). The published formulation computes ``decay ** k`` in it."""
    xg = x.detach().requires_grad_(grad is not None)
    tg = (k if name == 'published' else transfer).detach().requires_grad_(
        grad is not None)

    def step():
        t = published_transfer(tg) if name == 'published' else tg
        if grad is None:
            with torch.no_grad():
                fn(xg, t)
        else:
            torch.autograd.grad(fn(xg, t), (xg, tg), grad)

    return step


def measure_hco(shape: Tuple[int, int, int, int],
                dtype: str,
                mode: str,
                device: torch.device,
                repeats: int = 10,
                warmup: int = 2,
                min_sample_s: float = 0.,
                deadline: Optional[float] = None,
                kernels: bool = True,
                copy: bool = True,
                tune: Optional[Callable] = None) -> List[dict]:
    """Time and check every implementation of the operator on one map.

    Rows: ``impl``, ``median_ms``, ``samples``, ``status``; ``err_out``
    (and ``err_grad_x``, ``err_grad_t``) against float64 on the same
    rounded inputs, ``max_rel_err`` (inference) against float32 on the
    unrounded input; ``speedup_vs_reference`` and ``_vs_published``;
    ``gb_per_s`` (:func:`_ideal_bytes` over the time); with ``copy``,
    ``vs_copy`` (the time over those bytes' time at the copy's bandwidth)
    and for kernel paths ``bytes_per_elem`` (their own, by
    :func:`mmvheat.ops.triton_hco.bytes_moved`) and ``vs_own_bytes``; the
    tuning's ``autotuned``, ``tuner_ms`` and ``tuner_source``.

    Args:
        shape (tuple): ``(B, H, W, C)``.
        dtype (str): ``'fp32'``, ``'bf16'`` or ``'fp16'``.
        mode (str): ``'infer'`` (forward) or ``'train'`` (forward and
            backward to ``x`` and the filter).
        device (torch.device): Where to run.
        repeats, warmup, min_sample_s, deadline: See
            :func:`run_round_robin`.
        kernels (bool): Time the kernel paths where they run
            (:func:`kernels_run_on`). Defaults to True.
        copy (bool): Time ``dst.copy_(x)`` too. Defaults to True.
        tune (callable, optional): ``(x, transfer, grad)`` -> ``choice``,
            ``times_ms`` and ``source`` of the dispatcher's choice, which is
            then timed as ``autotuned``. Defaults to None.
    """
    torch.manual_seed(0)
    b, h, w, c = shape
    half = None if dtype == 'fp32' else _DTYPES[dtype]
    x32 = torch.randn(shape, device=device)
    x = x32.to(_DTYPES[dtype])
    # Exponents as the ReLU of a linear layer gives them; every
    # implementation filters with the same float32 decay ** k.
    k = 2 * torch.rand(h, w, c, device=device)
    transfer = published_transfer(k)
    grad = (
        torch.randn(shape, device=device).to(x.dtype)
        if mode == 'train' else None)
    exact = _exact(x, transfer, grad)
    names = [REFERENCE]
    tuned = dict(choice=REFERENCE, times_ms={}, source='')
    if kernels and kernels_run_on(device):
        names = list(hco_dispatcher.candidates(x))
        if tune is not None and len(names) > 1:
            tuned = tune(x, transfer, grad)
            names.append('autotuned')
    rows, cands = {}, []
    for name, fn in _filters(names, device, half).items():
        rows[name] = dict(impl=name)
        try:
            rows[name].update(_errors(fn, x, transfer, grad, exact))
            if grad is None:
                with torch.no_grad():
                    rows[name]['max_rel_err'] = relative_error(
                        fn(x, transfer),
                        spectral_filter_reference(x32, transfer))
        except Exception as e:  # noqa: BLE001 -- the others go on
            rows[name]['status'] = failure_status(e)
            _free(device)
            continue
        cands.append(Candidate(name, _step(name, fn, x, transfer, k, grad)))
    del exact
    if copy:
        dst = torch.empty_like(x)
        cands.append(Candidate('copy', lambda: dst.copy_(x)))
        rows['copy'] = dict(impl='copy')
    run_round_robin(cands, repeats, warmup, device, min_sample_s, deadline)
    times = {c.name: _median(c.times) for c in cands}
    samples = {c.name: c.times for c in cands}
    for cand in cands:
        rows[cand.name].update(
            median_ms=times[cand.name] * 1e3,
            samples=len(cand.times),
            status=cand.status)
    x_bytes = x.numel() * x.element_size()
    bandwidth = 2 * x_bytes / times.get('copy', _NAN)
    ideal = _ideal_bytes(x, transfer, mode)
    for name, row in rows.items():
        t = times.get(name, _NAN)
        row.update(
            gb_per_s=(2 * x_bytes if name == 'copy' else ideal) / t / 1e9,
            autotuned=tuned['choice'],
            tuner_ms=tuned['times_ms'].get(name),
            tuner_source=tuned['source'])
        if name == 'copy':
            row['bytes_per_elem'] = 2 * x.element_size()
            continue
        for column, baseline in (('speedup_vs_published', 'published'),
                                 ('speedup_vs_reference', REFERENCE)):
            row[column] = paired_speedup(
                samples.get(baseline, []), samples.get(name, []))
        if copy:
            row['vs_copy'] = t / (ideal / bandwidth)
        if copy and name in kernel_paths():
            from mmvheat.ops.triton_hco import bytes_moved
            moved = bytes_moved(name, x.shape, x.element_size(),
                                mode == 'train')
            # The filter's bytes as the ideal counts them.
            own = moved + _ideal_bytes(x[:0], transfer, mode)
            row.update(
                bytes_per_elem=moved / x.numel(),
                vs_own_bytes=t / (own / bandwidth))
    return list(rows.values())


# ---------------------------------------------------------------- models
def split_model_name(name: str) -> Tuple[str, str]:
    """``'vheat-t-pub-fold'`` -> ``('vheat-t', '-pub-fold')``."""
    for variant in sorted(VHEAT_VARIANTS[1:], key=len, reverse=True):
        base = name[:-len(variant)]
        if name.endswith(variant) and _ARCHS.get(base, ('', ))[0] == 'vheat':
            return base, variant
    if name not in _ARCHS:
        raise ValueError(f'unknown model {name!r}; choose from {MODEL_NAMES}')
    return name, ''


def family_of(name: str) -> str:
    """``'vheat'``, ``'swin'`` or ``'mpvit'``."""
    return _ARCHS[split_model_name(name)[0]][0]


def published_counterpart(name: str,
                          mode: str,
                          checkout: bool = False) -> Optional[str]:
    """The published form to compare ``name`` with, like with like: deployed
    with ``-pub-fold``, plain (and training) with ``-pub``; with ``checkout``
    the published classifier's ``-published-fold`` and ``-published`` in
    their place, and also for the replays (``-pub-fold``, ``-pub``); else
    None."""
    base, variant = split_model_name(name)
    if _ARCHS[base][0] != 'vheat':
        return None
    published = base + ('-published' if checkout else '-pub')
    if variant == '-plain' or (variant == '' and mode == 'train'):
        return published
    if variant == '':
        return published + '-fold'
    if checkout and variant in ('-pub', '-pub-fold'):
        return published + variant[len('-pub'):]
    return None


class Classifier(nn.Module):
    """An ImageNet classifier: ``backbone``, global average pooling of its
    last output, a linear head (what mmpretrain's ``ImageClassifier`` with
    ``GlobalAveragePooling`` and ``LinearClsHead`` computes).

    Args:
        backbone (nn.Module): Returns a tuple of NCHW maps.
        channels (int): Channels of its last output.
        num_classes (int): Classes. Defaults to 1000.
    """

    def __init__(self, backbone: nn.Module, channels: int, num_classes=1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def _check_checkout(name: str, published_repo: Optional[str]):
    """Refuse a ``-published`` form of ``name`` without a checkout (and
    an unknown name)."""
    if split_model_name(name)[1] in CHECKOUT_VARIANTS and \
            published_repo is None:
        raise ValueError(f'{name} needs a checkout of the published '
                         'repository (published_repo)')


def build_classifier(name: str,
                     res: int,
                     img_size: Optional[int] = None,
                     arch: Optional[Union[str, dict]] = None,
                     published_repo: Optional[str] = None) -> nn.Module:
    """``name`` (:data:`MODEL_NAMES`) as a :class:`Classifier`.

    Args:
        name (str): The model (Swin needs mmpretrain, imported here).
        res (int): Input resolution (Swin's ``img_size``).
        img_size (int, optional): vHeat's pretraining size (that of its
            frequency embeddings). Defaults to None: ``res``.
        arch (str | dict, optional): The backbone's ``arch`` in place of the
            one ``name`` says. Defaults to None.
        published_repo (str, optional): The checkout the ``-published``
            forms come from, with the weights of ``name``'s own form built
            here. Defaults to None.
    """
    from mmvheat.models import MPViT
    base, variant = split_model_name(name)
    family, named_arch = _ARCHS[base]
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
    if variant in CHECKOUT_VARIANTS:
        _check_checkout(name, published_repo)
        ours = Classifier(backbone, channels).state_dict()
        return published_classifier(
            published_repo,
            arch,
            img_size or res, {
                k.replace('head.', 'head.fc.', 1): v
                for k, v in ours.items()
            },
            infer_mode=variant == '-published-fold')
    if variant.startswith('-pub'):
        backbone = PublishedVHeat(backbone, infer_mode=variant == '-pub-fold')
    return Classifier(backbone, channels)


class ModelCandidate(Candidate):
    """A classifier's inference (eval, no gradients) or training step
    (forward, cross-entropy, backward, AdamW step) on random images.

    Args:
        name (str): What it is.
        model (nn.Module): Returns ``(B, 1000)`` logits.
        mode (str): ``'infer'`` or ``'train'``.
        batch_size (int): Images per call.
        res (int): Their side.
        device (torch.device): Where to run.
        dtype (str): ``'fp32'``, or ``'bf16'``/``'fp16'`` autocast.
            Defaults to ``'fp32'``.
        deploy (bool): Inference in deploy mode
            (:func:`~mmvheat.models.switch_to_deploy`). Defaults to False.
    """

    def __init__(self,
                 name: str,
                 model: nn.Module,
                 mode: str,
                 batch_size: int,
                 res: int,
                 device: torch.device,
                 dtype: str = 'fp32',
                 deploy: bool = False):
        super().__init__(name)
        self.model = model.to(device).train(mode == 'train')
        self.mode, self.device, self.dtype = mode, device, dtype
        self.x = torch.randn(batch_size, 3, res, res, device=device)
        if mode == 'train':
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            self.labels = torch.randint(1000, (batch_size, ), device=device)
        elif deploy:
            switch_to_deploy(model)

    def run_once(self):
        with torch.set_grad_enabled(self.mode == 'train'), \
                _autocast(self.device, self.dtype):
            logits = self.model(self.x)
        if self.mode == 'train':
            loss = F.cross_entropy(logits.float(), self.labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def _resident(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (Linux)."""
    with open('/proc/self/status', encoding='ascii') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(f'no {field} in /proc/self/status')


def cpu_allocated_peak(fn: Callable[[], object]) -> int:
    """The most bytes torch's CPU allocator held at once during ``fn()``
    above what it held before: its tensors, not the libraries' own buffers
    (the CPU's counterpart of ``torch.cuda.max_memory_allocated``), from
    the profiler's allocation events. Blocks allocated before the call and
    freed in it are not subtracted (the profiler does not know their
    sizes), so a call that frees its inputs is counted high."""
    # Imported here: the private event tree is only needed for this.
    from torch._C._profiler import _EventType

    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            profile_memory=True) as prof:
        fn()
    events = list(prof.profiler.kineto_results.experimental_event_tree())
    peak = 0
    while events:
        event = events.pop()
        events.extend(event.children)
        if event.tag == _EventType.Allocation and \
                event.extra_fields.device.type == 'cpu':
            peak = max(peak, event.extra_fields.total_allocated)
    return peak


def _memory_process():
    """The CPU memory process: a spec on stdin, the peak on stdout."""
    spec = json.loads(sys.stdin.read())
    module, _, builder = spec['builder'].partition(':')
    torch.manual_seed(0)
    model = getattr(import_module(module), builder)(**spec.pop('kwargs'))
    cand = ModelCandidate(model=model, device=_CPU, **spec.pop('candidate'))
    with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
        f.write('5')  # the high-water mark := the resident set now
    base = _resident('VmRSS')
    # The first call creates the state (moments, filters); in the second a
    # training step's forward runs beside the last step's gradients.
    cand.run(2, _CPU)
    print(json.dumps(dict(peak=_resident('VmHWM') - base)))


def measure_memory(builder: str, kwargs: dict, **candidate) -> int:
    """The CPU peak memory in bytes (see the module doc) of a
    :class:`ModelCandidate`, measured in a process of its own.

    Args:
        builder (str): ``'module:function'`` that returns the model for
            ``kwargs`` (importable there from this process's ``sys.path``).
        kwargs (dict): JSON-serialisable arguments of ``builder``.
        **candidate: ``name``, ``mode``, ``batch_size``, ``res`` (and
            ``dtype``, ``deploy``) of :class:`ModelCandidate`.

    Raises:
        RuntimeError: When that process fails (its last line of error).
    """
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_=str(64 * 1024),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, '-c', f'import {__name__} as m; m._memory_process()'],
        input=json.dumps(
            dict(builder=builder, kwargs=kwargs, candidate=candidate)),
        capture_output=True,
        text=True,
        env=env)
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines() or [f'exit {proc.returncode}']
        raise RuntimeError(why[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])['peak']


def _flops(name: str, res: int, img_size: Optional[int], arch,
           cache: dict) -> Tuple[float, float, float]:
    key = (split_model_name(name)[0], res, img_size)
    if key not in cache:
        info = model_complexity(
            build_classifier(key[0], res, img_size, arch),
            torch.randn(1, 3, res, res),
            split_batch=True)
        cache[key] = (info['flops_per_image'] / 1e9,
                      info['flops_shared'] / 1e9, info['params'] / 1e6)
    return cache[key]


def _folds_at(name: str, res: int, img_size: Optional[int]) -> bool:
    """Whether ``name`` in inference keeps its filters ``decay ** k`` across
    forwards at ``res`` (so that none of its FLOPs are shared per call)."""
    variant = split_model_name(name)[1]
    return variant == '' or (variant in ('-pub-fold', '-published-fold') and
                             (img_size or res) == res)


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
        archs: Optional[Dict[str, Union[str, dict]]] = None,
        cpu_memory: bool = True,
        timed: bool = True,
        published_repo: Optional[str] = None) -> Tuple[List[dict], List[str]]:
    """Time classifiers side by side and measure their peak memory, one
    group per resolution and mode; see the module doc.

    Args:
        device (torch.device): Where to run.
        models (Sequence[str]): Names from :data:`MODEL_NAMES`; the first
            is the baseline of ``speedup_vs_baseline`` and
            ``mem_vs_baseline``.
        resolutions (Sequence[int]): Input resolutions.
        batch_size (int): Images per call.
        mode (str): ``'infer'``, ``'train'`` or ``'both'``.
        dtype (str): ``'fp32'``, or ``'bf16'``/``'fp16'`` autocast.
        repeats, warmup, deadline: See :func:`run_round_robin`.
        flops (bool): Count FLOPs (jit tracing, slow on a CPU).
        img_size (int, optional): vHeat's pretraining size. Defaults to
            None: each resolution.
        progress (callable, optional): Called with one line per group.
        archs (dict, optional): ``family -> arch`` (``'vheat'``, ``'swin'``,
            ``'mpvit'``) in place of the ones the names say.
        cpu_memory (bool): On the CPU, measure each row's memory in a
            process of its own. Defaults to True.
        timed (bool): False measures the memory only. Defaults to True.
        published_repo (str, optional): The checkout of the published
            repository the ``-published`` forms come from; given, they are
            the ``speedup_vs_published`` counterparts
            (:func:`published_counterpart`). Defaults to None.

    Returns:
        tuple: the rows and notes for the reader.
    """
    notes, rows, flop_cache, archs = [], [], {}, archs or {}
    modes = ['infer', 'train'] if mode == 'both' else [mode]
    for name in models:  # unknown names fail before any work
        _check_checkout(name, published_repo)
    infer_only = [
        n for n in models if split_model_name(n)[1] in INFER_ONLY_VARIANTS
    ]
    if infer_only and 'train' in modes:
        notes.append(f'{", ".join(infer_only)}: inference forms, not timed '
                     'in training')
    groups = [(res, m) for res in resolutions for m in modes]
    for done, (res, m) in enumerate(groups, 1):
        cands = []
        for name in models:
            if m == 'train' and name in infer_only:
                continue
            torch.manual_seed(0)
            kwargs = dict(
                name=name,
                res=res,
                img_size=img_size,
                arch=archs.get(family_of(name)),
                published_repo=published_repo)
            spec = dict(
                name=name,
                mode=m,
                batch_size=batch_size,
                res=res,
                dtype=dtype,
                deploy=split_model_name(name)[1] == '')
            try:
                cand = ModelCandidate(
                    model=build_classifier(**kwargs), device=device, **spec)
            except Exception as e:  # noqa: BLE001
                notes.append(f'cannot build {name} at {res}: '
                             f'{type(e).__name__}: {first_line(e)}')
                _free(device)
                continue
            cands.append(cand)
            cand.spec = (kwargs, spec)
        if timed or device.type == 'cuda':  # CUDA: memory in the calls
            run_round_robin(
                cands,
                repeats if timed else 0,
                warmup if timed else 2,
                device,
                deadline=deadline)
        for cand in cands:
            if device.type != 'cuda' and cpu_memory:
                try:
                    cand.peak = measure_memory(f'{__name__}:build_classifier',
                                               cand.spec[0], **cand.spec[1])
                except Exception as e:  # noqa: BLE001 -- e.g. killed
                    notes.append(f'memory of {cand.name} at {res} {m} not '
                                 f'measured: {first_line(e)}')
        times = {c.name: _median(c.times) for c in cands}
        samples = {c.name: c.times for c in cands}
        peaks = {
            c.name: _NAN if c.peak is None else c.peak / 2**20
            for c in cands
        }
        base = cands[0].name if cands else None
        for cand in cands:
            t = times[cand.name]
            if flops:
                gflops, shared, params = _flops(cand.name, res, img_size,
                                                cand.spec[0]['arch'],
                                                flop_cache)
                if m == 'infer' and _folds_at(cand.name, res, img_size):
                    shared = 0.
            else:
                gflops = shared = _NAN
                params = sum(p.numel() for p in cand.model.parameters()) / 1e6
            rows.append(
                dict(
                    model=cand.name,
                    resolution=res,
                    batch_size=batch_size,
                    mode=m,
                    dtype=dtype,
                    device=device.type,
                    median_ms=t * 1e3,
                    images_per_s=batch_size / t,
                    speedup_vs_baseline=paired_speedup(samples[base],
                                                       cand.times),
                    speedup_vs_published=paired_speedup(
                        samples.get(
                            published_counterpart(cand.name, m, published_repo
                                                  is not None), []),
                        cand.times),
                    peak_mem_mb=peaks[cand.name],
                    mem_vs_baseline=_ratio(peaks[cand.name], peaks[base]),
                    gflops_per_image=gflops,
                    gflops_shared=shared,
                    params_m=params,
                    samples=len(cand.times),
                    status=cand.status))
        if progress is not None:
            what = ('median_ms', 'ms') if timed else ('peak_mem_mb', 'MiB')
            progress(f'[{done}/{len(groups)}] models {res} {m}: ' +
                     times_line(rows[len(rows) - len(cands):], 'model', *what))
        del cands
        _free(device)
    return rows, notes


def swin_unavailable() -> Optional[str]:
    """Why Swin-T cannot be built here (mmpretrain cannot be imported), or
    None."""
    try:
        import mmpretrain.models  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any failure: no Swin baseline
        return (f'Swin-T skipped: mmpretrain cannot be imported '
                f'({type(e).__name__}: {first_line(e)})')
    return None


# ---------------------------------------------------------------- output
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 'n/a'
    return format(v, '.3g') if isinstance(v, float) else str(v)


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
    return '\n'.join(
        lines +
        [' | '.join(v.ljust(w) for v, w in zip(row, widths)) for row in cells])


def csv_row(row: dict, columns: Sequence[str]) -> dict:
    """``row`` restricted to ``columns``, missing and NaN values empty."""
    return {
        c:
        '' if row.get(c) is None or
        (isinstance(row[c], float) and math.isnan(row[c])) else row[c]
        for c in columns
    }


def write_csv(path: str, rows: List[dict], columns: List[str]):
    """``rows`` as CSV under a header of ``columns``, written atomically."""
    with atomic_write(path, 'w') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(csv_row(r, columns) for r in rows)


def write_figure(
        rows: List[dict],
        path: str,
        title: str = '',
        panels: Sequence[Tuple[str, str]] = PLOT_PANELS) -> Optional[str]:
    """Model rows against resolution as the paper's Figure 1 draws them: a
    panel per ``(column, label)``, a line per model and mode (solid:
    inference, dashed: training). Without matplotlib, a note saying so is
    returned instead."""
    try:
        import matplotlib
    except ImportError as e:
        return f'figure skipped: matplotlib cannot be imported ({e})'
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    keys = sorted({(r['model'], r['mode'])
                   for r in rows},
                  key=lambda k: (k[1], k[0]))
    for ax, (col, label) in zip(axes[0], panels):
        for model, mode in keys:
            if col == 'gflops_per_image' and mode != keys[0][1]:
                continue  # FLOPs do not depend on the mode
            pts = sorted((r['resolution'], r[col]) for r in rows
                         if (r['model'], r['mode']) == (model, mode)
                         and r['status'] == 'ok' and _fmt(r.get(col)) != 'n/a')
            if pts:
                ax.plot(
                    *zip(*pts),
                    '-' if mode == 'infer' else '--',
                    marker='o',
                    label=model
                    if col == 'gflops_per_image' else f'{model} ({mode})')
        ax.set(xlabel='input resolution', ylabel=label)
        ax.grid(alpha=.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(
                .5, .5, 'not measured', ha='center', transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=120)
    plt.close(fig)
    return None
