# Copyright (c) mmvheat contributors. All rights reserved.
"""Choice of the implementation behind :func:`spectral_filter`.

The candidates are the reference (four float32 matmuls,
:func:`~mmvheat.ops.spectral.spectral_filter_reference`) and the Triton
kernel paths of :mod:`mmvheat.ops.triton_hco` (``fused`` for grids up to
32 x 32, ``tiled`` for any grid). The environment variable
``MMVHEAT_HCO_BACKEND``, read at every call, chooses among them:

* ``auto`` (the default; also empty): tensors off CUDA, and calls under
  TorchScript, tracing or ONNX export, take the reference, with no other
  work. On CUDA, eager or under ``torch.compile``, the call goes through
  the operator ``torch.ops.mmvheat.spectral_filter`` (below), which
  autotunes per shape bucket as cuDNN's benchmark mode does: the first
  forward of each bucket (``H`` and ``W`` rounded up to
  :data:`BUCKET_STEP`, ``C``, dtype) times every candidate's forward with
  CUDA events, the first backward of each bucket (per set of gradients)
  times every candidate's backward, and the fastest of each is kept. The
  forward and the backward are tuned apart, each in its own pass, on the
  tensors of that pass and without autograd, so that nothing of the tuning
  is recorded in the user's graph or seen by ``torch.utils.checkpoint``.
  The reference is always a candidate, so by the tuner's own timings no
  choice is slower than the reference. Each decision is logged once, at
  debug level, with its times.
* ``torch``: always the reference.
* ``triton``: always a kernel, the fused path where it applies (no
  timing); on CPU tensors only with Triton's interpreter, else a
  RuntimeError says so.

Inputs the kernels do not take -- float64 and empty maps -- go to the
reference whatever the setting.

The operator: ``torch.ops.mmvheat.spectral_filter(x, transfer, mode)`` is a
``torch.library.custom_op`` with a fake (meta) implementation and an
autograd formula, so ``torch.compile`` keeps it as one opaque node and the
choice is made when the compiled graph runs. Its backward is a second
operator, ``spectral_filter_backward``, tuned and checked the same way;
when the backward itself is differentiated (``create_graph=True``), the
gradients come from the differentiable reference instead.

Tuning memory: the candidates are timed on the first images of the batch,
as many as fit in :data:`TUNING_MAX_BYTES` of float32 (at least one), so
the tuner's extra memory does not grow with the batch.

Self-check: the first time a kernel path meets a combination of device,
dtype and direction (forward; backward, per set of gradients) in a process,
it runs on the first :data:`SELF_CHECK_IMAGES` images of the call and is
compared with the reference computed in float64 on the same images
(float64 matmuls: no TF32 setting applies, and no global setting is
changed), rounded to the kernel's output dtype. If the kernel raises, or
its error exceeds :data:`SELF_CHECK_RTOL`, one warning through ``MMLogger``
names the device, GPU, shape, dtype and error, the call returns the
reference's result, and that combination takes the reference from then on.
A check on a map whose reference is zero everywhere proves nothing, and a
check that runs out of memory is not a verdict: both are repeated on the
next call.

Out of memory: a candidate that runs out of memory while being tuned is
left out of that bucket's timing; a chosen kernel that runs out of memory
in a call leaves that call to the reference and its bucket to the next
fastest candidate. Neither marks the kernel failed.

Distributed runs: when ``torch.distributed`` is initialized with more than
one process, rank 0 alone tunes, and publishes each decision in the
process group's key-value store; the other ranks take rank 0's decisions
from there (the reference while a bucket is not decided yet), so every
rank runs the same paths. With ``torch.use_deterministic_algorithms(True)``
nothing is timed: each bucket takes the default kernel path (deterministic:
no atomics, reductions in a fixed order), or the reference where the
kernels do not apply or failed their check.

Persistence: with ``MMVHEAT_HCO_AUTOTUNE_CACHE=path`` the decisions are also
kept in that JSON file (:class:`~mmvheat.ops.autotune_cache.AutotuneCache`),
per GPU name and torch and Triton versions, and later processes reuse them
without timing.

:data:`hco_dispatcher` answers, for a report, which candidates apply to a
map, their times and the autotuned choice (:meth:`HCODispatcher.candidates`,
:meth:`HCODispatcher.measure`, :meth:`HCODispatcher.tune`). The CUDA-only
decisions go through ``device_is_cuda``, ``gpu_name`` and
``time_candidate``, which tests replace to reach them on CPU.
"""
import json
import logging
import math
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.utils.checkpoint as checkpoint
from mmengine.logging import print_log
from torch import Tensor

from mmvheat.utils.torch_modes import is_capturing_graph, is_compiling
from .autotune_cache import AutotuneCache
from .spectral import (spectral_filter_reference,
                       spectral_filter_reference_grads)

__all__ = [
    'HCO_BACKEND_ENV', 'HCO_BACKENDS', 'HCO_AUTOTUNE_CACHE_ENV', 'REFERENCE',
    'DIRECTIONS', 'BUCKET_STEP', 'SELF_CHECK_RTOL', 'SELF_CHECK_IMAGES',
    'TUNING_REPEATS', 'TUNING_MAX_BYTES', 'Decision', 'HCODispatcher',
    'hco_dispatcher', 'hco_backend', 'triton_available', 'relative_error',
    'dispatch_spectral_filter', 'spectral_filter_kernel',
    'spectral_filter_autotuned', 'bucket_key'
]

#: The environment variable that chooses a backend.
HCO_BACKEND_ENV = 'MMVHEAT_HCO_BACKEND'
#: Its allowed values ('' means 'auto').
HCO_BACKENDS = ('auto', 'torch', 'triton')
#: The environment variable naming the autotuning cache file (opt-in).
HCO_AUTOTUNE_CACHE_ENV = 'MMVHEAT_HCO_AUTOTUNE_CACHE'
#: The name of the reference among the candidates.
REFERENCE = 'reference'
#: What is tuned and checked apart: the forward, and the backward per set
#: of gradients.
DIRECTIONS = ('forward', 'backward(x)', 'backward(transfer)',
              'backward(x,transfer)')
#: ``H`` and ``W`` are rounded up to a multiple of this for the choice.
BUCKET_STEP = 8
#: Timed runs per candidate when tuning a bucket (after one warm-up run).
TUNING_REPEATS = 3
#: The candidates are timed on the first images of the batch that fit in
#: this many bytes of float32 (at least one image).
TUNING_MAX_BYTES = 128 * 2**20
#: Images of a call that a self-check runs on.
SELF_CHECK_IMAGES = 2
#: Self-check tolerance on ``max |kernel - reference| / max |reference|``,
#: by the dtype of the checked output. The reference is the float64 result
#: rounded to that dtype. float32: the kernels are within ~1e-6 of the
#: exact result on vHeat's grids (float32 round-off of transforms of
#: length <= a few hundred); 1e-4 leaves a wide margin for longer
#: transforms, while a wrong index, basis row or transfer gives errors of
#: 1e-2 and more. bfloat16 / float16: the kernel rounds its float32 result
#: once, as the reference was rounded, so the two differ by at most one ulp
#: (2^-7 / 2^-10 relative) whatever the rounding mode; the tolerance is
#: two ulps of the largest value. Entries that overflow to infinity must
#: overflow alike.
SELF_CHECK_RTOL = {
    torch.float32: 1e-4,
    torch.bfloat16: 2.0**-6,
    torch.float16: 2.0**-9,
}

_PASSED, _FAILED, _DEFERRED = 'passed', 'failed', 'deferred'
#: Exceptions that belong to autograd's checkpointing: never a kernel fault.
_PASS_THROUGH = tuple(
    e for e in (getattr(checkpoint, 'CheckpointError', None),
                getattr(checkpoint, '_StopRecomputationError', None))
    if e is not None)
#: The key prefix of the decisions rank 0 publishes in the process group's
#: store.
_STORE_PREFIX = 'mmvheat/hco-autotune/'

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
        step (callable): One forward or one backward call.
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


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|``, in float64, over the
    finite entries of ``expected``.

    ``inf`` where the non-finite entries differ (a NaN, or an infinity of
    another sign, on either side); NaN where ``expected`` has no non-zero
    finite entry and ``actual`` agrees (the ratio proves nothing then).
    """
    actual = actual.detach().double()
    expected = expected.detach().double()
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)):
        return math.inf
    # nan_to_num keeps each infinity's sign and turns NaN into 0.
    if not torch.equal(actual[~finite].nan_to_num(0.),
                       expected[~finite].nan_to_num(0.)):
        return math.inf
    scale = expected.where(finite, 0.).abs().max().item()
    err = (actual - expected).where(finite, 0.).abs().max().item()
    if scale == 0:
        return math.nan if err == 0 else math.inf
    return err / scale


def _requested_backend() -> str:
    value = os.environ.get(HCO_BACKEND_ENV, '').strip().lower() or 'auto'
    if value not in HCO_BACKENDS:
        raise ValueError(
            f'{HCO_BACKEND_ENV}={os.environ[HCO_BACKEND_ENV]!r} is not one of '
            f'{", ".join(HCO_BACKENDS)}')
    return value


def _exporting() -> bool:
    """TorchScript, tracing or ONNX export: graphs that must hold the
    reference's plain tensor ops (``torch.compile`` keeps the operator)."""
    return is_capturing_graph() and not is_compiling()


def _backend(requested: str, x: Optional[Tensor]) -> str:
    """``'triton'`` or ``'torch'`` for ``x`` under the ``requested`` mode."""
    if requested == 'torch':
        return 'torch'
    if x is None:
        is_cuda = torch.cuda.is_available()
        device = 'cuda' if is_cuda else 'cpu'
    else:
        is_cuda, device = device_is_cuda(x), x.device
    if requested == 'auto' and (not is_cuda or _exporting()):
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
            'CPU tensors only in its interpreter; set TRITON_INTERPRET=1 '
            'before mmvheat.ops.triton_hco is imported, or '
            f'{HCO_BACKEND_ENV}=torch')
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
            on ``x`` (not installed, or a CPU tensor without Triton's
            interpreter).
    """
    return _backend(_requested_backend(), x)


def _direction(need_x: bool, need_transfer: bool) -> str:
    """The backward's :data:`DIRECTIONS` entry for a set of gradients."""
    names = [n for n, on in (('x', need_x), ('transfer', need_transfer)) if on]
    return f'backward({",".join(names)})'


def bucket_key(x: Tensor, direction: str = 'forward') -> Tuple:
    """The shape bucket of ``x``: ``(H, W)`` rounded up to
    :data:`BUCKET_STEP`, ``C``, dtype and the direction
    (:data:`DIRECTIONS`).

    Rounding to a multiple of 8 never crosses a power of two of 8 or more,
    so the fused path applies to every shape of a bucket or to none.
    """
    h, w, c = x.shape[-3:]
    return (BUCKET_STEP * math.ceil(h / BUCKET_STEP),
            BUCKET_STEP * math.ceil(w / BUCKET_STEP), int(c),
            str(x.dtype).replace('torch.', ''), direction)


def _bucket_name(key: Tuple) -> str:
    h, w, c, dtype, direction = key
    return f'{h}x{w}x{c}/{dtype}/{direction}'


def _cuda_graph_capturing(x: Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError)


def _rank_and_world() -> Tuple[int, int]:
    """This process's rank and the number of processes of the default
    process group ((0, 1) without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _process_group_store():
    """The default process group's key-value store, or None."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store
        return _get_default_store()
    except (ImportError, RuntimeError, ValueError):
        return None


def _tuning_slice(*tensors: Optional[Tensor]):
    """The first images of each tensor, as many as fit in
    :data:`TUNING_MAX_BYTES` of float32 (views: nothing is copied)."""
    x = tensors[0]
    image_bytes = 4 * x[0].numel()
    images = max(1, min(x.shape[0], TUNING_MAX_BYTES // max(image_bytes, 1)))
    return tuple(None if t is None else t[:images] for t in tensors)


class Decision(NamedTuple):
    """An autotuning decision for one shape bucket and direction.

    Attributes:
        choice (str): :data:`REFERENCE` or a kernel path.
        times_ms (dict): Median milliseconds per candidate timed.
        source (str): ``'timed'``, ``'cache'`` (read from the file) or
            ``'rank 0'`` (published by rank 0 of a distributed run).
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
    def __call__(self,
                 x: Tensor,
                 transfer: Tensor,
                 overwrite: bool = False) -> Tensor:
        requested = _requested_backend()
        if _backend(requested, x) == 'torch':
            return spectral_filter_reference(x, transfer, overwrite)
        if transfer.shape != x.shape[-3:]:
            raise ValueError(
                f'transfer of shape {tuple(transfer.shape)} does not match '
                f'the map {tuple(x.shape[-3:])}')
        return _through_operator(x, transfer, requested)

    def forward(self, x: Tensor, transfer: Tensor, mode: str) -> Tensor:
        """The operator's forward on ``(B, H, W, C)`` ``x``: by the tuned
        choice (``mode='auto'``), the default kernel path (``'triton'``,
        self-checked on CUDA) or one kernel path, unchecked."""
        if mode not in ('auto', 'triton'):
            return _load_triton_hco().launch_forward(x, transfer, mode)
        if mode == 'triton':
            path = _load_triton_hco().default_path(*x.shape[1:3])
            if not device_is_cuda(x):
                return _load_triton_hco().launch_forward(x, transfer, path)
        else:
            path = self._choice(x, transfer, 'forward')
        return self._run(path, x, transfer, None, 'forward')

    def backward(self, x: Tensor, transfer: Tensor, grad: Tensor, mode: str,
                 need_x: bool, need_transfer: bool):
        """The operator's backward: ``(grad_x or None, grad_transfer or
        None)``, chosen as :meth:`forward` chooses."""
        if mode not in ('auto', 'triton'):
            return _load_triton_hco().launch_backward(x, transfer, grad,
                                                      need_x, need_transfer,
                                                      mode)
        direction = _direction(need_x, need_transfer)
        if mode == 'triton':
            path = _load_triton_hco().default_path(*x.shape[1:3])
            if not device_is_cuda(x):
                return _load_triton_hco().launch_backward(
                    x, transfer, grad, need_x, need_transfer, path)
        else:
            path = self._choice(x, transfer, direction, grad)
        return self._run(path, x, transfer, grad, direction)

    def run(self, candidate: str, x: Tensor, transfer: Tensor) -> Tensor:
        """One forward call of ``x`` ``(B, H, W, C)`` by ``candidate``, a
        kernel self-checked first (the reference where it fails)."""
        return self._run(candidate, x, transfer, None, 'forward')

    def candidates(self, x: Tensor) -> Tuple[str, ...]:
        """The implementations that take ``x``: the reference first, then
        the kernel paths (when Triton is importable and takes ``x``)."""
        module = _load_triton_hco()
        if module is None or not module.triton_supports(x):
            return (REFERENCE, )
        return (REFERENCE, ) + module.kernel_paths(*x.shape[-3:-1])

    # ------------------------------------------------------ running paths
    @staticmethod
    def _reference(x, transfer, grad, direction):
        """The reference's output (forward) or gradients (backward), as the
        reference path returns them."""
        if direction == 'forward':
            return spectral_filter_reference(x, transfer)
        return spectral_filter_reference_grads(x, transfer, grad, 'x'
                                               in direction[8:], 'transfer'
                                               in direction)

    @staticmethod
    def _launch(path, x, transfer, grad, direction):
        """The kernels of ``path``, unguarded."""
        module = _load_triton_hco()
        if direction == 'forward':
            return module.launch_forward(x, transfer, path)
        return module.launch_backward(x, transfer, grad, 'x' in direction[8:],
                                      'transfer' in direction, path)

    def _run(self, path, x, transfer, grad, direction):
        """One call by ``path``, self-checked first; the reference where
        the kernel failed, fails now or runs out of memory."""
        if path == REFERENCE:
            return self._reference(x, transfer, grad, direction)
        key = self._check_key(x, path, direction)
        state = self._checks.get(key)
        if state is None and _cuda_graph_capturing(x):
            # Nothing may synchronise while a CUDA graph is captured.
            state = _FAILED
        elif state is None:
            state = self._self_check(path, x, transfer, grad, direction)
        if state == _FAILED:
            return self._reference(x, transfer, grad, direction)
        try:
            return self._launch(path, x, transfer, grad, direction)
        except _PASS_THROUGH:
            raise
        except Exception as e:  # noqa: BLE001 -- a kernel fault: never crash
            if _out_of_memory(e):
                self._drop_from_bucket(x, direction, path)
            else:
                self._fail(key, x, f'{type(e).__name__}: {e}')
        return self._reference(x, transfer, grad, direction)

    # --------------------------------------------------------- self-check
    def _check_key(self, x: Tensor, path: str, direction: str) -> Tuple:
        return (x.device, x.dtype, path, direction)

    def _usable(self, x: Tensor, path: str, direction: str) -> bool:
        """Whether no self-check of ``path`` for ``x``'s combination in
        ``direction`` has failed."""
        if path == REFERENCE:
            return True
        return self._checks.get(self._check_key(x, path, direction)) != _FAILED

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

    def _self_check(self, path, x, transfer, grad, direction) -> str:
        """Check ``path`` on the first images of the call against the
        float64 reference; record and return the verdict (``_DEFERRED``:
        none yet)."""
        key = self._check_key(x, path, direction)
        xs = x[:SELF_CHECK_IMAGES]
        gs = None if grad is None else grad[:SELF_CHECK_IMAGES]
        try:
            actual = self._launch(path, xs, transfer, gs, direction)
        except _PASS_THROUGH:
            raise
        except Exception as e:  # noqa: BLE001 -- a kernel fault: never crash
            if _out_of_memory(e):
                return _DEFERRED
            self._fail(key, x, f'{type(e).__name__}: {e}')
            return _FAILED
        try:
            exact = self._reference(xs.double(), transfer.double(),
                                    None if gs is None else gs.double(),
                                    direction)
        except torch.OutOfMemoryError:
            return _DEFERRED
        if direction == 'forward':
            actual, exact = (actual, ), (exact, )
        verdict = self._judge(key, x, zip(actual, exact))
        if verdict != _DEFERRED:
            self._checks[key] = verdict
        return verdict

    def _judge(self, key: Tuple, x: Tensor, pairs) -> str:
        """The verdict on ``(kernel output, float64 reference)`` pairs."""
        proved = True
        for actual, exact in pairs:
            if actual is None:
                continue
            tol = SELF_CHECK_RTOL[actual.dtype]
            # Rounded as the kernel rounds its output: an entry that
            # overflows in a half dtype is infinite on both sides.
            err = relative_error(actual, exact.to(actual.dtype))
            if math.isnan(err):
                proved = False
            elif not err <= tol:
                self._fail(
                    key, x, f'max error {err:.3g} of the largest reference '
                    f'value (tolerance {tol:.3g})')
                return _FAILED
        return _PASSED if proved else _DEFERRED

    # --------------------------------------------------------- autotuning
    def decision(self,
                 x: Tensor,
                 direction: str = 'forward') -> Optional[Decision]:
        """The decision for ``x``'s bucket in ``direction``, if one was
        made here, is in the cache file or was published by rank 0."""
        key = bucket_key(x, direction)
        decision = self._decisions.get((x.device, key))
        if decision is None:
            decision = self._cached_decision(x.device, key)
        if decision is None and _rank_and_world()[0] != 0:
            decision = self._published_decision(x.device, key)
        if decision is not None and decision.choice in self.candidates(x):
            return decision
        return None

    def tune(self,
             x: Tensor,
             transfer: Tensor,
             direction: str = 'forward',
             grad: Optional[Tensor] = None) -> Decision:
        """The decision for ``x``'s bucket in ``direction``, timing the
        candidates on the first images of ``x`` (and ``grad``) if there is
        none yet (or if its choice has since failed a self-check).

        Args:
            x (Tensor): A map ``(B, H, W, C)``.
            transfer (Tensor): Its filter ``(H, W, C)``.
            direction (str): One of :data:`DIRECTIONS`. Defaults to
                ``'forward'``.
            grad (Tensor, optional): The output gradient of a backward.
                Defaults to None: random values from the dispatcher's own
                generator.

        Raises:
            torch.OutOfMemoryError: No candidate fits in memory.
        """
        decision = self.decision(x, direction)
        if decision is None or not self._usable(x, decision.choice, direction):
            times = self.measure(x, transfer, direction, grad)
            if not times:
                raise torch.OutOfMemoryError(
                    f'HCO autotune: no implementation fits in memory for a '
                    f'{x.dtype} map of shape {tuple(x.shape)} ({direction})')
            decision = Decision(min(times, key=times.get), times, 'timed')
            self._record(x, direction, decision)
        return decision

    def measure(self,
                x: Tensor,
                transfer: Tensor,
                direction: str = 'forward',
                grad: Optional[Tensor] = None) -> Dict[str, float]:
        """Milliseconds per call of each usable candidate in ``direction``,
        by ``time_candidate`` after a warm-up run, on the first images of
        ``x`` that fit in :data:`TUNING_MAX_BYTES`. Kernels are
        self-checked first; a candidate that fails or runs out of memory is
        left out."""
        if direction != 'forward' and grad is None:
            grad = torch.randn(
                x.shape, generator=self._generator(x.device),
                device=x.device).to(x.dtype)
        xs, gs = _tuning_slice(x, grad)
        times = {}
        for name in self.candidates(x):
            if name != REFERENCE:
                state = self._checks.get(self._check_key(x, name, direction))
                if state is None:
                    state = self._self_check(name, xs, transfer, gs, direction)
                if state == _FAILED:
                    continue

            def step(name=name):
                if name == REFERENCE:
                    self._reference(xs, transfer, gs, direction)
                else:
                    self._launch(name, xs, transfer, gs, direction)

            try:
                step()
                times[name] = time_candidate(name, step, TUNING_REPEATS)
            except _PASS_THROUGH:
                raise
            except Exception as e:  # noqa: BLE001 -- a fault: not a choice
                if _out_of_memory(e):
                    continue  # does not fit here: not timed, not failed
                if name == REFERENCE:
                    raise
                self._fail(
                    self._check_key(x, name, direction), x,
                    f'{type(e).__name__}: {e}')
        return times

    def _choice(self,
                x: Tensor,
                transfer: Tensor,
                direction: str,
                grad: Optional[Tensor] = None) -> str:
        """The implementation a call in ``direction`` takes."""
        decision = self.decision(x, direction)
        if decision is not None and self._usable(x, decision.choice,
                                                 direction):
            return decision.choice
        if torch.are_deterministic_algorithms_enabled():
            path = _load_triton_hco().default_path(*x.shape[1:3])
            return path if self._usable(x, path, direction) else REFERENCE
        if _cuda_graph_capturing(x) or _rank_and_world()[0] != 0:
            # Nothing may synchronise while a CUDA graph is captured; other
            # ranks wait for rank 0's decision.
            return REFERENCE
        try:
            return self.tune(x, transfer, direction, grad).choice
        except torch.OutOfMemoryError:
            return REFERENCE

    def _drop_from_bucket(self, x: Tensor, direction: str, path: str):
        """``path`` ran out of memory on ``x``: its bucket takes the next
        fastest candidate (the kernel is not marked failed)."""
        key = (x.device, bucket_key(x, direction))
        decision = self._decisions.get(key)
        if decision is None or decision.choice != path:
            return
        times = {n: t for n, t in decision.times_ms.items() if n != path}
        times.setdefault(REFERENCE, math.inf)
        self._decisions[key] = Decision(
            min(times, key=times.get), times, decision.source)
        print_log(
            f'HCO: the {path} path ran out of memory on a {x.dtype} map of '
            f'shape {tuple(x.shape)}; bucket {_bucket_name(key[1])} takes '
            f'{self._decisions[key].choice} from now on.',
            logger='current',
            level=logging.INFO)

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
        return self._adopt(device, key, entry, 'cache')

    def _published_decision(self, device: torch.device,
                            key: Tuple) -> Optional[Decision]:
        """Rank 0's decision for ``key`` from the process group's store."""
        store = _process_group_store()
        name = _STORE_PREFIX + _bucket_name(key)
        if store is None or not store.check([name]):
            return None
        entry = json.loads(store.get(name).decode('utf-8'))
        return self._adopt(device, key, entry, 'rank 0')

    def _adopt(self, device, key, entry, source) -> Decision:
        decision = Decision(entry['choice'], dict(entry['times_ms']), source)
        self._decisions[(device, key)] = decision
        self._log_decision(device, key, decision)
        return decision

    def _record(self, x: Tensor, direction: str, decision: Decision):
        key = bucket_key(x, direction)
        self._decisions[(x.device, key)] = decision
        self._log_decision(x.device, key, decision)
        entry = {'choice': decision.choice, 'times_ms': decision.times_ms}
        cache = self._cache_file()
        if cache is not None:
            cache.store(self._table_name(x.device), _bucket_name(key), entry)
        if _rank_and_world()[1] > 1:
            store = _process_group_store()
            if store is not None:
                store.set(_STORE_PREFIX + _bucket_name(key), json.dumps(entry))

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


# ---------------------------------------------------------------------------
# The operator
# ---------------------------------------------------------------------------
@torch.library.custom_op('mmvheat::spectral_filter', mutates_args=())
def _spectral_filter_op(x: Tensor, transfer: Tensor, mode: str) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` on ``(B, H, W, C)`` ``x``, by
    :data:`hco_dispatcher` in ``mode`` (``'auto'``, ``'triton'``, or a
    kernel path)."""
    return hco_dispatcher.forward(x, transfer, mode)


@_spectral_filter_op.register_fake
def _(x: Tensor, transfer: Tensor, mode: str) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op('mmvheat::spectral_filter_backward', mutates_args=())
def _spectral_filter_backward_op(x: Tensor, transfer: Tensor, grad: Tensor,
                                 mode: str, need_x: bool,
                                 need_transfer: bool) -> Tuple[Tensor, Tensor]:
    """The gradients of ``spectral_filter``; an empty tensor stands for a
    gradient not asked for."""
    gx, gt = hco_dispatcher.backward(x, transfer, grad, mode, need_x,
                                     need_transfer)
    return (x.new_empty(0) if gx is None else gx,
            transfer.new_empty(0, dtype=torch.float32) if gt is None else gt)


@_spectral_filter_backward_op.register_fake
def _(x, transfer, grad, mode, need_x, need_transfer):
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) \
        if need_x else x.new_empty(0)
    gt = transfer.new_empty(
        transfer.shape if need_transfer else (0, ), dtype=torch.float32)
    return gx, gt


def _setup_context(ctx, inputs, output):
    x, transfer, mode = inputs
    ctx.save_for_backward(x, transfer)
    ctx.mode = mode


def _op_backward(ctx, grad):
    x, transfer = ctx.saved_tensors
    need_x, need_transfer = ctx.needs_input_grad[:2]
    if torch.is_grad_enabled():
        # The backward is differentiated (create_graph=True): gradients
        # from the reference's plain tensor ops, which autograd records.
        gx, gt = spectral_filter_reference_grads(x, transfer, grad, need_x,
                                                 need_transfer)
    else:
        gx, gt = _spectral_filter_backward_op(x, transfer, grad.contiguous(),
                                              ctx.mode, need_x, need_transfer)
    return (gx.to(x.dtype) if need_x else None,
            gt.to(transfer.dtype) if need_transfer else None, None)


_spectral_filter_op.register_autograd(
    _op_backward, setup_context=_setup_context)


def _through_operator(x: Tensor, transfer: Tensor, mode: str) -> Tensor:
    """``x`` ``(..., H, W, C)`` through the operator (on ``(B, H, W, C)``)."""
    y = _spectral_filter_op(x.reshape(-1, *x.shape[-3:]), transfer, mode)
    return y.reshape(x.shape)


def _kernel_module(x: Tensor, transfer: Tensor):
    """The kernel module, after checking that the kernels take ``x``."""
    module = _load_triton_hco()
    if module is None:
        raise ImportError(f'the HCO kernels need Triton ({_triton_error})')
    if x.dim() < 3:
        raise ValueError('expected a channels-last map (..., H, W, C), got '
                         f'shape {tuple(x.shape)}')
    if transfer.shape != x.shape[-3:]:
        raise ValueError(f'transfer of shape {tuple(transfer.shape)} does not '
                         f'match the map {tuple(x.shape[-3:])}')
    if not module.triton_supports(x):
        raise ValueError(
            f'the Triton HCO kernel takes non-empty '
            f'{[str(d) for d in module.SUPPORTED_DTYPES]} maps, got '
            f'{x.dtype} {tuple(x.shape)}')
    if transfer.device != x.device:
        raise ValueError(f'transfer is on {transfer.device}, x on {x.device}')
    module._check_launchable(x)
    return module


def spectral_filter_kernel(x: Tensor,
                           transfer: Tensor,
                           path: Optional[str] = None) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` by one Triton kernel path, with its
    gradients: no choice, no self-check, no fallback (for tests, benchmarks
    and reports).

    Args:
        x (Tensor): A channels-last map ``(..., H, W, C)``, float32, float16
            or bfloat16, on CUDA (on CPU in Triton's interpreter).
        transfer (Tensor): The filter ``(H, W, C)``, used in float32.
        path (str, optional): ``'fused'`` or ``'tiled'``. Defaults to None:
            the fused path where it applies.

    Returns:
        Tensor: The filtered map, shape and dtype of ``x``.

    Raises:
        ImportError: Triton cannot be imported.
        ValueError: Inputs the kernels do not take.
        RuntimeError: A CPU tensor, and kernels compiled for CUDA.
    """
    module = _kernel_module(x, transfer)
    h, w = x.shape[-3:-1]
    if path is None:
        path = module.default_path(h, w)
    elif path not in module.kernel_paths(h, w):
        raise ValueError(f'path must be one of {module.kernel_paths(h, w)} '
                         f'for a {h} x {w} grid, got {path!r}')
    return _through_operator(x, transfer, path)


def spectral_filter_autotuned(x: Tensor, transfer: Tensor) -> Tensor:
    """``IDCT2D(DCT2D(x) * transfer)`` as :func:`spectral_filter` runs it on
    CUDA in ``auto`` mode -- the autotuned choice, self-checked kernels,
    with gradients -- on any device and whatever ``MMVHEAT_HCO_BACKEND``
    says (for reports; CPU tensors need Triton's interpreter).

    Raises:
        ImportError: Triton cannot be imported.
        ValueError: Inputs the kernels do not take.
        RuntimeError: A CPU tensor, and kernels compiled for CUDA.
    """
    _kernel_module(x, transfer)
    return _through_operator(x, transfer, 'auto')


def dispatch_spectral_filter(x: Tensor,
                             transfer: Tensor,
                             overwrite: bool = False) -> Tensor:
    """:func:`spectral_filter` by :data:`hco_dispatcher`."""
    return hco_dispatcher(x, transfer, overwrite)
