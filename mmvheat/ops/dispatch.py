# Copyright (c) mmvheat contributors. All rights reserved.
"""Choice of the implementation behind :func:`spectral_filter`.

The candidates are the reference (four float32 matmuls,
:func:`~mmvheat.ops.spectral.spectral_filter_reference`) and the Triton
kernel paths of :mod:`mmvheat.ops.triton_hco` (``fused`` for grids up to
32 x 32, ``tiled`` for any grid). The environment variable
``MMVHEAT_HCO_BACKEND``, read at every call, chooses among them:

* ``auto`` (the default; also empty): tensors off CUDA, and calls under
  TorchScript, tracing, ONNX export or ``torch.compile``, take the
  reference, with no other work. On CUDA the choice is autotuned per shape
  bucket, as cuDNN's benchmark mode does: the first call of each bucket
  (``H`` and ``W`` rounded up to :data:`BUCKET_STEP`, ``C``, dtype, whether
  a gradient is needed) times every candidate with CUDA events on that
  call's tensors -- forward, and backward when a gradient is needed -- and
  the fastest is kept for the bucket. The reference is always a candidate,
  so by the tuner's own timings no choice is slower than the reference.
  Each decision is logged once, at debug level, with its times.
* ``torch``: always the reference.
* ``triton``: always a kernel, the fused path where it applies (no
  timing); on CPU tensors only with ``TRITON_INTERPRET=1`` (Triton's
  interpreter), else a RuntimeError says so.

Inputs the kernels do not take -- float64 and empty maps -- go to the
reference whatever the setting.

Self-check: on CUDA, the first time a kernel path meets a combination of
device, dtype and direction (forward; backward, per set of gradients) in a
process, its result on that call is compared with the reference computed on
the same tensors in float32 with full-precision matmuls. If the kernel
raises, or its error exceeds :data:`SELF_CHECK_RTOL`, one warning through
``MMLogger`` names the device, GPU, shape, dtype and error, the call returns
the reference's result, and that combination takes the reference from then
on. A check on a map whose reference is zero everywhere proves nothing and
is repeated on the next call.

Persistence: with ``MMVHEAT_HCO_AUTOTUNE_CACHE=path`` the decisions are also
kept in that JSON file (:class:`~mmvheat.ops.autotune_cache.AutotuneCache`),
per GPU name and torch and Triton versions, and later processes reuse them
without timing.

:data:`hco_dispatcher` answers, for a report, which candidates apply to a
map, their times and the autotuned choice (:meth:`HCODispatcher.candidates`,
:meth:`HCODispatcher.measure`, :meth:`HCODispatcher.tune`). The CUDA-only
decisions go through :func:`device_is_cuda`, :func:`gpu_name` and
:func:`time_candidate`, which tests replace to reach them on CPU.
"""
import contextlib
import logging
import math
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor

from mmvheat.utils.torch_modes import is_capturing_graph
from .autotune_cache import AutotuneCache
from .spectral import spectral_filter_reference

__all__ = [
    'HCO_BACKEND_ENV', 'HCO_BACKENDS', 'HCO_AUTOTUNE_CACHE_ENV', 'REFERENCE',
    'BUCKET_STEP', 'SELF_CHECK_RTOL', 'TUNING_REPEATS', 'Decision',
    'HCODispatcher', 'hco_dispatcher', 'hco_backend', 'triton_available',
    'dispatch_spectral_filter', 'device_is_cuda', 'gpu_name', 'time_candidate',
    'bucket_key'
]

#: The environment variable that chooses a backend.
HCO_BACKEND_ENV = 'MMVHEAT_HCO_BACKEND'
#: Its allowed values ('' means 'auto').
HCO_BACKENDS = ('auto', 'torch', 'triton')
#: The environment variable naming the autotuning cache file (opt-in).
HCO_AUTOTUNE_CACHE_ENV = 'MMVHEAT_HCO_AUTOTUNE_CACHE'
#: The name of the reference among the candidates.
REFERENCE = 'reference'
#: ``H`` and ``W`` are rounded up to a multiple of this for the choice.
BUCKET_STEP = 8
#: Timed runs per candidate when tuning a bucket (after one warm-up run).
TUNING_REPEATS = 3
#: Self-check tolerance on ``max |kernel - reference| / max |reference|``,
#: by the dtype of the checked output. The reference here is the float32
#: result before any rounding to the activation dtype. float32: both are
#: within ~1e-6 of the exact result on vHeat's grids (float32 round-off of
#: transforms of length <= a few hundred); 1e-4 leaves a wide margin for
#: longer transforms, while a wrong index, basis row or transfer gives errors
#: of 1e-2 and more. bfloat16 / float16: the kernel rounds its float32
#: result once, by at most an ulp (2^-7 / 2^-10 relative) whatever the
#: rounding mode; the tolerance is two ulps of the largest value.
SELF_CHECK_RTOL = {
    torch.float32: 1e-4,
    torch.bfloat16: 2.0**-6,
    torch.float16: 2.0**-9,
}

_PASSED, _FAILED = 'passed', 'failed'

_triton_module = None
_triton_error: Optional[BaseException] = None


def _load_triton_hco():
    """The kernel module, or None when Triton cannot be imported."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            from . import triton_hco
            _triton_module = triton_hco
        except ImportError as e:  # no (usable) triton
            _triton_error = e
    return _triton_module


def triton_available() -> bool:
    """Whether Triton can be imported (not whether a GPU is present)."""
    return _load_triton_hco() is not None


def device_is_cuda(x: Tensor) -> bool:
    """Whether ``x`` is on a CUDA device (where tuning and checks run)."""
    return x.is_cuda


def gpu_name(device: torch.device) -> str:
    """The name of the GPU ``device`` is on, for messages and the cache
    (the device type off CUDA)."""
    if device.type != 'cuda':
        return device.type
    return torch.cuda.get_device_name(device)


def time_candidate(candidate: str, step: Callable[[], None],
                   repeats: int) -> float:
    """Median time of ``step()`` in milliseconds, by CUDA events.

    ``step`` has run once before (a warm-up: compiling, caches).

    Args:
        candidate (str): What ``step`` runs (for timers that need it).
        step (callable): One forward, or forward and backward, call.
        repeats (int): Timed runs.
    """
    events = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def _requested_backend() -> str:
    value = os.environ.get(HCO_BACKEND_ENV, '').strip().lower() or 'auto'
    if value not in HCO_BACKENDS:
        raise ValueError(
            f'{HCO_BACKEND_ENV}={os.environ[HCO_BACKEND_ENV]!r} is not one of '
            f'{", ".join(HCO_BACKENDS)}')
    return value


def _backend(requested: str, x: Optional[Tensor]) -> str:
    """``'triton'`` or ``'torch'`` for ``x`` under the ``requested`` mode."""
    if requested == 'torch':
        return 'torch'
    if x is None:
        is_cuda = torch.cuda.is_available()
        device = 'cuda' if is_cuda else 'cpu'
    else:
        is_cuda, device = device_is_cuda(x), x.device
    if requested == 'auto' and (not is_cuda or is_capturing_graph()):
        return 'torch'
    module = _load_triton_hco()
    if module is None:
        if requested == 'auto':
            return 'torch'
        raise RuntimeError(
            f'{HCO_BACKEND_ENV}=triton but Triton cannot be imported '
            f'({_triton_error}); install it or unset {HCO_BACKEND_ENV}')
    if x is not None and not module.triton_supports(x):
        return 'torch'
    if not is_cuda and not module.triton_interpret_enabled():
        raise RuntimeError(
            f'{HCO_BACKEND_ENV}=triton on a tensor on {device}: Triton runs '
            'CPU tensors only in its interpreter; set TRITON_INTERPRET=1 as '
            f'well, or {HCO_BACKEND_ENV}=torch')
    return 'triton'


def hco_backend(x: Optional[Tensor] = None) -> str:
    """``'triton'`` or ``'torch'``: whether :func:`spectral_filter` may run
    a Triton kernel on ``x``.

    ``'torch'`` means the reference for sure. In ``auto`` mode on CUDA,
    ``'triton'`` means the kernels are candidates; the autotuner may still
    keep the reference for a shape (:meth:`HCODispatcher.tune` tells).

    Args:
        x (Tensor, optional): The map to filter. Defaults to None: the
            answer for a float32 map on the default device (CUDA when
            available).

    Raises:
        ValueError: ``MMVHEAT_HCO_BACKEND`` has a value not in
            :data:`HCO_BACKENDS`.
        RuntimeError: ``MMVHEAT_HCO_BACKEND=triton`` but Triton cannot run
            on ``x`` (not installed, or a CPU tensor without
            ``TRITON_INTERPRET=1``).
    """
    return _backend(_requested_backend(), x)


def bucket_key(x: Tensor, needs_grad: bool) -> Tuple:
    """The shape bucket of ``x``: ``(H, W)`` rounded up to
    :data:`BUCKET_STEP`, ``C``, dtype and whether a gradient is needed.

    Rounding to a multiple of 8 never crosses a power of two of 8 or more,
    so the fused path applies to every shape of a bucket or to none.
    """
    h, w, c = x.shape[-3:]
    return (BUCKET_STEP * math.ceil(h / BUCKET_STEP),
            BUCKET_STEP * math.ceil(w / BUCKET_STEP), int(c),
            str(x.dtype).replace('torch.', ''), bool(needs_grad))


def _bucket_name(key: Tuple) -> str:
    h, w, c, dtype, needs_grad = key
    return f'{h}x{w}x{c}/{dtype}/{"train" if needs_grad else "infer"}'


def _needs_grad(x: Tensor, transfer: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad
                                        or transfer.requires_grad)


def _cuda_graph_capturing(x: Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def _full_precision_matmul():
    """float32 matmuls without TF32, whatever the user set."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _relative_error(actual: Tensor, expected: Tensor) -> Optional[float]:
    """``max |actual - expected| / max |expected|`` over the finite entries
    of ``expected``; ``inf`` if the non-finite entries differ, None if the
    comparison proves nothing (``expected`` is zero where finite)."""
    actual, expected = actual.detach().float(), expected.detach().float()
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)):
        return math.inf
    scale = expected.abs().where(finite, 0).max().item()
    err = (actual - expected).abs().where(finite, 0).max().item()
    if scale == 0:
        return None if err == 0 else math.inf
    return err / scale


class Decision(NamedTuple):
    """An autotuning decision for one shape bucket.

    Attributes:
        choice (str): :data:`REFERENCE` or a kernel path.
        times_ms (dict): Median milliseconds per candidate timed.
        source (str): ``'timed'`` or ``'cache'`` (read from the file).
    """
    choice: str
    times_ms: Dict[str, float]
    source: str


class HCODispatcher:
    """Runs :func:`spectral_filter` calls by the implementation chosen for
    them, and keeps the self-check results and autotuning decisions of the
    process (see the module doc)."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Forget all self-checks and decisions (not the cache file)."""
        self._checks: Dict[Tuple, str] = {}
        self._decisions: Dict[Tuple, Decision] = {}
        self._cache: Optional[AutotuneCache] = None
        self._generators: Dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------- calls
    def __call__(self, x: Tensor, transfer: Tensor) -> Tensor:
        requested = _requested_backend()
        if _backend(requested, x) == 'torch':
            return spectral_filter_reference(x, transfer)
        if transfer.shape != x.shape[-3:]:
            raise ValueError(
                f'transfer of shape {tuple(transfer.shape)} does not match '
                f'the map {tuple(x.shape[-3:])}')
        if requested == 'triton':
            path = _triton_module.default_path(*x.shape[-3:-1])
        else:
            path = self._tuned_path(x, transfer)
        return self.run(path, x, transfer)

    def run(self, candidate: str, x: Tensor, transfer: Tensor) -> Tensor:
        """``spectral_filter(x, transfer)`` by one candidate; kernels are
        self-checked on CUDA."""
        if candidate == REFERENCE:
            return spectral_filter_reference(x, transfer)
        if not device_is_cuda(x):
            return _load_triton_hco().spectral_filter_triton(
                x, transfer, candidate)
        return self._run_checked(candidate, x, transfer)

    def candidates(self, x: Tensor) -> Tuple[str, ...]:
        """The implementations that take ``x``: the reference first, then
        the kernel paths (when Triton is importable and takes ``x``)."""
        module = _load_triton_hco()
        if module is None or not module.triton_supports(x):
            return (REFERENCE, )
        return (REFERENCE, ) + module.kernel_paths(*x.shape[-3:-1])

    # --------------------------------------------------------- self-check
    def _check_key(self, x: Tensor, path: str, direction: str) -> Tuple:
        return (x.device, x.dtype, path, direction)

    def _usable(self, x: Tensor, path: str, needs_grad: bool) -> bool:
        """Whether no self-check of ``path`` for ``x``'s combination has
        failed (forward; backward too when a gradient is needed)."""
        keys = [self._check_key(x, path, 'forward')]
        if needs_grad:
            keys += [
                key for key in self._checks
                if key[:3] == keys[0][:3] and key[3].startswith('backward')
            ]
        return all(self._checks.get(key) != _FAILED for key in keys)

    def _fail(self, key: Tuple, x: Tensor, error: str):
        device, dtype, path, direction = key
        self._checks[key] = _FAILED
        print_log(
            f'HCO self-check: the Triton kernel ({path} path, {direction}) '
            f'failed on {device} ({gpu_name(device)}) for a {dtype} map of '
            f'shape {tuple(x.shape)}: {error}. This call and all later '
            f'{dtype} {direction} calls of the {path} path on {device} take '
            'the reference path.',
            logger='current',
            level=logging.WARNING)

    def _judge(self, key: Tuple, x: Tensor, pairs) -> bool:
        """Record the self-check of ``key`` from ``(actual, exact)`` pairs;
        True if it failed."""
        errors = []
        for actual, exact in pairs:
            if actual is None:
                continue
            tol = SELF_CHECK_RTOL[actual.dtype]
            err = _relative_error(actual, exact)
            errors.append(err)
            if err is not None and not err <= tol:
                self._fail(
                    key, x, f'max error {err:.3g} of the largest reference '
                    f'value (tolerance {tol:.3g})')
                return True
        if errors and all(err is not None for err in errors):
            self._checks[key] = _PASSED
        return False

    def _run_checked(self, path: str, x: Tensor, transfer: Tensor) -> Tensor:
        key = self._check_key(x, path, 'forward')
        state = self._checks.get(key)
        if state == _FAILED or (state is None and _cuda_graph_capturing(x)):
            return spectral_filter_reference(x, transfer)
        try:
            y = _load_triton_hco().spectral_filter_triton(
                x, transfer, path, self._checked_backward)
        except Exception as e:  # any failure of the kernel: never crash
            self._fail(key, x, f'{type(e).__name__}: {e}')
            return spectral_filter_reference(x, transfer)
        if state == _PASSED:
            return y
        with torch.no_grad(), _full_precision_matmul():
            exact = spectral_filter_reference(x.detach().float(),
                                              transfer.detach())
        if self._judge(key, x, [(y, exact)]):
            return spectral_filter_reference(x, transfer)
        return y

    def _checked_backward(self, run_kernel, x, transfer, grad, need_gx,
                          need_gt, path):
        """The kernels' gradients, or the reference's where they fail."""
        grads = ('grad x' if need_gx else '',
                 'grad transfer' if need_gt else '')
        key = self._check_key(x, path,
                              f'backward ({", ".join(filter(None, grads))})')
        state = self._checks.get(key)

        def reference():
            gx, gt = self._float32_reference_grads(x, transfer, grad, need_gx,
                                                   need_gt)
            # Rounded as the reference path's backward rounds.
            return (None if gx is None else gx.to(x.dtype)), gt

        if state == _FAILED or (state is None and _cuda_graph_capturing(x)):
            return reference()
        try:
            gx, gt = run_kernel()
        except Exception as e:  # any failure of the kernel: never crash
            self._fail(key, x, f'{type(e).__name__}: {e}')
            return reference()
        if state == _PASSED:
            return gx, gt
        exact = self._float32_reference_grads(x, transfer, grad, need_gx,
                                              need_gt)
        if self._judge(key, x, [(gx, exact[0]), (gt, exact[1])]):
            return reference()
        return gx, gt

    @staticmethod
    def _float32_reference_grads(x, transfer, grad, need_gx, need_gt):
        """The reference's gradients before any rounding to x's dtype."""
        with torch.enable_grad(), _full_precision_matmul():
            x32 = x.detach().float().requires_grad_(need_gx)
            t32 = transfer.detach().requires_grad_(need_gt)
            y = spectral_filter_reference(x32, t32)
            inputs = [t for t in (x32, t32) if t.requires_grad]
            grads = iter(torch.autograd.grad(y, inputs, grad.float()))
        gx = next(grads) if need_gx else None
        gt = next(grads) if need_gt else None
        return gx, gt

    # --------------------------------------------------------- autotuning
    def decision(self, x: Tensor, needs_grad: bool) -> Optional[Decision]:
        """The decision for ``x``'s bucket, if one was made or cached."""
        key = bucket_key(x, needs_grad)
        decision = self._decisions.get((x.device, key))
        if decision is None:
            decision = self._cached_decision(x.device, key)
        if decision is not None and decision.choice in self.candidates(x):
            return decision
        return None

    def tune(self,
             x: Tensor,
             transfer: Tensor,
             needs_grad: Optional[bool] = None) -> Decision:
        """The decision for ``x``'s bucket, timing the candidates on ``x``
        and ``transfer`` if there is none yet (or if its choice has since
        failed a self-check).

        Args:
            x (Tensor): A CUDA map ``(..., H, W, C)``.
            transfer (Tensor): Its filter ``(H, W, C)``.
            needs_grad (bool, optional): Tune forward and backward. Defaults
                to None: as the call would (grad mode and ``requires_grad``).
        """
        if needs_grad is None:
            needs_grad = _needs_grad(x, transfer)
        decision = self.decision(x, needs_grad)
        if decision is None or not self._usable(x, decision.choice,
                                                needs_grad):
            times = self.measure(x, transfer, needs_grad)
            decision = Decision(min(times, key=times.get), times, 'timed')
            self._record(x, needs_grad, decision)
        return decision

    def measure(self, x: Tensor, transfer: Tensor,
                needs_grad: bool) -> Dict[str, float]:
        """Milliseconds per call of each usable candidate on ``x`` (forward,
        plus backward if ``needs_grad``), by :func:`time_candidate` after a
        warm-up run, which also self-checks the kernels."""
        if needs_grad:
            x = x.detach().requires_grad_(x.requires_grad
                                          or not transfer.requires_grad)
            transfer = transfer.detach().requires_grad_(transfer.requires_grad)
            grad_out = torch.randn(
                x.shape, generator=self._generator(x.device),
                device=x.device).to(x.dtype)
        times = {}
        for name in self.candidates(x):

            def step(name=name):
                if not needs_grad:
                    with torch.no_grad():
                        self.run(name, x, transfer)
                    return
                with torch.enable_grad():
                    y = self.run(name, x, transfer)
                inputs = [t for t in (x, transfer) if t.requires_grad]
                torch.autograd.grad(y, inputs, grad_out)

            step()
            if name == REFERENCE or self._usable(x, name, needs_grad):
                times[name] = time_candidate(name, step, TUNING_REPEATS)
        return times

    def _tuned_path(self, x: Tensor, transfer: Tensor) -> str:
        needs_grad = _needs_grad(x, transfer)
        decision = self.decision(x, needs_grad)
        if decision is not None and self._usable(x, decision.choice,
                                                 needs_grad):
            return decision.choice
        if _cuda_graph_capturing(x):
            # Nothing may synchronise while a CUDA graph is captured.
            return REFERENCE
        return self.tune(x, transfer, needs_grad).choice

    def _generator(self, device: torch.device) -> torch.Generator:
        """A private generator: tuning leaves the global RNG alone."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(
                device=device).manual_seed(0)
        return self._generators[device]

    # ------------------------------------------------------------- cache
    def _table_name(self, device: torch.device) -> str:
        import triton
        return (f'{gpu_name(device)} | torch {torch.__version__} | '
                f'triton {triton.__version__}')

    def _cache_file(self) -> Optional[AutotuneCache]:
        path = os.environ.get(HCO_AUTOTUNE_CACHE_ENV, '').strip()
        if not path:
            return None
        if self._cache is None or self._cache.path != path:
            self._cache = AutotuneCache(path)
        return self._cache

    def _cached_decision(self, device: torch.device,
                         key: Tuple) -> Optional[Decision]:
        cache = self._cache_file()
        if cache is None:
            return None
        entry = cache.lookup(self._table_name(device), _bucket_name(key))
        if entry is None:
            return None
        decision = Decision(entry['choice'], dict(entry['times_ms']), 'cache')
        self._decisions[(device, key)] = decision
        self._log_decision(device, key, decision)
        return decision

    def _record(self, x: Tensor, needs_grad: bool, decision: Decision):
        key = bucket_key(x, needs_grad)
        self._decisions[(x.device, key)] = decision
        self._log_decision(x.device, key, decision)
        cache = self._cache_file()
        if cache is not None:
            cache.store(
                self._table_name(x.device), _bucket_name(key), {
                    'choice': decision.choice,
                    'times_ms': decision.times_ms
                })

    def _log_decision(self, device: torch.device, key: Tuple,
                      decision: Decision):
        times = ', '.join(f'{name} {ms:.4g} ms'
                          for name, ms in decision.times_ms.items())
        print_log(
            f'HCO autotune on {device}: {_bucket_name(key)} -> '
            f'{decision.choice} ({times}; {decision.source})',
            logger='current',
            level=logging.DEBUG)


#: The dispatcher :func:`spectral_filter` uses.
hco_dispatcher = HCODispatcher()


def dispatch_spectral_filter(x: Tensor, transfer: Tensor) -> Tensor:
    """:func:`spectral_filter` by :data:`hco_dispatcher`."""
    return hco_dispatcher(x, transfer)
