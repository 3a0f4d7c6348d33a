# Copyright (c) mmvheat contributors. All rights reserved.
"""The dispatcher's CUDA branch under what a real training run brings:
gradient checkpointing, the TF32 settings, lack of memory, several
processes, deterministic algorithms, ``torch.compile``, double backward and
float16 overflow.

The branch is reached on CPU tensors through the stand-ins of
``conftest.py`` (``on_cuda``: the device check, the GPU name and the timer
replaced; the kernels in Triton's interpreter). Results are compared with
the exact filter (scipy's DCT in float64, ``exact_reference.py``) or with
the same computation in float64 on the reference path; tolerances are
stated where they are used.
"""
import copy
import json
import logging
import os
import weakref

import pytest
import torch
import torch.utils.checkpoint as checkpoint
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mmvheat.models.backbones.vheat import HeatBlock
from mmvheat.ops import dct_basis, dispatch, spectral_filter
from .conftest import GPU, FakeTimer
from .exact_reference import (assert_close, exact_spectral_filter,
                              output_and_grads, random_inputs)

triton_hco = pytest.importorskip('mmvheat.ops.triton_hco')

ENV = dispatch.HCO_BACKEND_ENV
BOTH = 'backward(x,transfer)'


def _failed_checks():
    return [
        key for key, state in dispatch.hco_dispatcher._checks.items()
        if state == 'failed'
    ]


# ---------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------
def _block_run(block, x, transfer, weight):
    """Output and the gradients of ``sum(weight * block(x, transfer))`` for
    the input, the filter and every parameter."""
    x = x.detach().clone().requires_grad_()
    transfer = transfer.detach().clone().requires_grad_()
    y = block(x, transfer)
    # The block's filter is given: to_k (which makes it from the
    # embedding) takes no part.
    params = [p for n, p in block.named_parameters() if 'to_k' not in n]
    grads = torch.autograd.grad((y * weight).sum(), [x, transfer] + params)
    return [y.detach()] + list(grads)


def test_checkpointed_block_trains_on_the_kernels(on_cuda, calls, log):
    """``HeatBlock(with_cp=True)``: forward and backward through the
    kernels, the forward and the backward each tuned once, in their own
    pass; the results those of the same block in float64 on the reference
    path, and bit for bit those of the block without checkpointing."""
    torch.manual_seed(0)
    block = HeatBlock(8, with_cp=True)
    x, transfer, _ = random_inputs((2, 5, 6, 8))
    weight = torch.randn(2, 5, 6, 8)
    ours = _block_run(block, x, transfer, weight)
    assert calls['forward'] and calls['backward']
    assert on_cuda.calls == ['reference', 'fused', 'tiled'] * 2
    assert not log.messages(logging.WARNING)
    assert not _failed_checks()

    plain = copy.deepcopy(block)
    plain.with_cp = False
    for a, b in zip(ours, _block_run(plain, x, transfer, weight)):
        assert torch.equal(a, b)

    # float32 kernels through LayerNorms, linear layers and the gate,
    # against float64: ~1e-6 of the largest value here; 1e-5 still catches
    # a wrong gradient of the filter (errors of 1e-2 and more).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, 'torch')
        exact = _block_run(
            copy.deepcopy(block).double(), x.double(), transfer.double(),
            weight.double())
    names = ['output', 'grad x', 'grad transfer'] + [
        f'grad {n}' for n, _ in block.named_parameters() if 'to_k' not in n
    ]
    for name, a, b in zip(names, ours, exact):
        assert_close(a, b, name)


@pytest.mark.parametrize('error', [
    checkpoint.CheckpointError('torch.utils.checkpoint: recomputed tensors '
                               'differ'),
    getattr(checkpoint, '_StopRecomputationError', RuntimeError)()
])
def test_checkpoint_exceptions_pass_through(on_cuda, monkeypatch, log, error):
    """An exception of ``torch.utils.checkpoint`` raised under a kernel is
    not a kernel fault: it reaches the caller, no warning, no failure."""
    monkeypatch.setenv(ENV, 'triton')

    def raising(x, transfer, path):
        raise error

    monkeypatch.setattr(triton_hco, 'launch_forward', raising)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    with pytest.raises(type(error)):
        spectral_filter(x, transfer)
    assert not _failed_checks()
    assert not log.messages(logging.WARNING)


# ---------------------------------------------------------------------------
# TF32 settings
# ---------------------------------------------------------------------------
@pytest.fixture
def matmul_settings():
    """Restores the float32 matmul settings the test changes."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    precision = torch.backends.cuda.matmul.fp32_precision
    legacy = torch.get_float32_matmul_precision()
    set_legacy = torch.set_float32_matmul_precision  # the test replaces it
    yield
    torch.backends.cuda.matmul.fp32_precision = precision
    set_legacy(legacy)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32


@pytest.mark.parametrize('setting', ['allow_tf32', 'high', 'fp32_precision'])
def test_tf32_settings(on_cuda, monkeypatch, calls, matmul_settings, setting):
    """TF32 allowed the old ways (``allow_tf32``,
    ``set_float32_matmul_precision('high')``) or the new one
    (``torch.backends.cuda.matmul.fp32_precision = 'tf32'``, after which
    reading the old setting raises): the self-checked call works, its
    reference runs in float64 (which no TF32 setting touches), and no
    process-wide setting is switched on the way."""
    if setting == 'allow_tf32':
        torch.backends.cuda.matmul.allow_tf32 = True
    elif setting == 'high':
        torch.set_float32_matmul_precision('high')
    else:
        torch.backends.cuda.matmul.fp32_precision = 'tf32'

    def switched(*args):
        raise AssertionError('a process-wide matmul setting was switched')

    monkeypatch.setattr(torch, 'set_float32_matmul_precision', switched)
    reference = dispatch.spectral_filter_reference
    dtypes = []

    def spy(x, transfer):
        dtypes.append(x.dtype)
        return reference(x, transfer)

    monkeypatch.setattr(dispatch, 'spectral_filter_reference', spy)
    monkeypatch.setenv(ENV, 'triton')
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    y, gx, gt = output_and_grads(spectral_filter, x, transfer, grad)
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    assert_close(y, ey, 'forward')
    assert_close(gx, egx, 'grad x')
    assert_close(gt, egt, 'grad transfer')
    assert dtypes == [torch.float64]  # the forward's check
    assert calls['forward'] and calls['backward']


# ---------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------
def _oom():
    return torch.OutOfMemoryError(
        'CUDA out of memory. Tried to allocate 2.00 GiB')


def test_out_of_memory_skips_a_candidate_for_its_bucket_only(
        on_cuda, monkeypatch, log):
    """One out-of-memory error of the tiled kernel on a 40 x 40 map (only
    the tiled path takes it): that call is the reference's, the tiled
    kernel is not marked failed, and 48 x 48 and 56 x 56 maps still run
    it."""
    forward = triton_hco.launch_forward
    launched = []

    def short_of_memory(x, transfer, path):
        if tuple(x.shape[1:3]) == (40, 40):
            raise _oom()
        launched.append(tuple(x.shape[1:3]))
        return forward(x, transfer, path)

    monkeypatch.setattr(triton_hco, 'launch_forward', short_of_memory)
    for n in (40, 48, 56):
        x, transfer, _ = random_inputs((1, n, n, 2))
        with torch.no_grad():
            assert_close(
                spectral_filter(x, transfer),
                exact_spectral_filter(x, transfer), f'{n} x {n}')
    assert (48, 48) in launched and (56, 56) in launched
    assert not _failed_checks()
    assert not log.messages(logging.WARNING)
    x40 = torch.zeros(1, 40, 40, 2)
    assert dispatch.hco_dispatcher.decision(x40).choice == 'reference'
    assert 'tiled' not in dispatch.hco_dispatcher.decision(x40).times_ms


def test_out_of_memory_of_a_chosen_kernel(on_cuda, monkeypatch, log):
    """A kernel chosen for a bucket that later runs out of memory (a larger
    batch of the same bucket): the call is the reference's, the bucket
    takes the next fastest candidate, nothing is marked failed."""
    forward = triton_hco.launch_forward
    launched = []

    def short_of_memory(x, transfer, path):
        if x.shape[0] > 2:
            raise _oom()
        launched.append(path)
        return forward(x, transfer, path)

    monkeypatch.setattr(triton_hco, 'launch_forward', short_of_memory)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    big, _, _ = random_inputs((6, 5, 6, 3))
    with torch.no_grad():
        spectral_filter(x, transfer)
        assert launched[-1] == 'tiled'  # the fastest by the timer
        assert_close(
            spectral_filter(big, transfer),
            exact_spectral_filter(big, transfer), 'the reference')
        del launched[:]
        spectral_filter(x, transfer)
    assert launched == ['fused']  # the next fastest
    assert on_cuda.calls == ['reference', 'fused', 'tiled']  # timed once
    assert not _failed_checks()
    assert not log.messages(logging.WARNING)


def test_out_of_memory_in_the_reference_while_tuning(on_cuda, monkeypatch,
                                                     log):
    """A batch that fits with the kernels but not with the reference: the
    reference is left out of the timing, the call runs the kernel."""
    reference = dispatch.spectral_filter_reference

    def short_of_memory(x, transfer):
        if x.dtype != torch.float64:  # the self-check's reference fits
            raise _oom()
        return reference(x, transfer)

    monkeypatch.setattr(dispatch, 'spectral_filter_reference', short_of_memory)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    with torch.no_grad():
        assert_close(
            spectral_filter(x, transfer), exact_spectral_filter(x, transfer),
            'kernel')
    decision = dispatch.hco_dispatcher.decision(x)
    assert decision.choice == 'tiled'
    assert set(decision.times_ms) == {'fused', 'tiled'}
    assert not log.messages(logging.WARNING)


def test_out_of_memory_in_the_self_check_defers_it(on_cuda, monkeypatch, calls,
                                                   log):
    """The self-check's reference runs out of memory once: no verdict, the
    call goes on, the next call checks."""
    monkeypatch.setenv(ENV, 'triton')
    reference = dispatch.spectral_filter_reference
    attempts = []

    def once_short_of_memory(x, transfer):
        attempts.append(x.dtype)
        if len(attempts) == 1:
            raise _oom()
        return reference(x, transfer)

    monkeypatch.setattr(dispatch, 'spectral_filter_reference',
                        once_short_of_memory)
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    exact = exact_spectral_filter(x, transfer)
    with torch.no_grad():
        assert_close(spectral_filter(x, transfer), exact, 'first call')
        assert dispatch.hco_dispatcher._checks == {}
        assert_close(spectral_filter(x, transfer), exact, 'second call')
    assert list(dispatch.hco_dispatcher._checks.values()) == ['passed']
    assert len(attempts) == 2 and not log.messages(logging.WARNING)


def test_self_check_runs_on_the_first_images(on_cuda, monkeypatch, calls):
    """The float64 reference of a check sees two images of a batch of 8,
    forward and backward."""
    monkeypatch.setenv(ENV, 'triton')
    batches = []
    reference = dispatch.spectral_filter_reference
    grads = dispatch.spectral_filter_reference_grads

    def spy(x, transfer):
        batches.append(x.shape[0])
        return reference(x, transfer)

    def spy_grads(x, transfer, grad, *need):
        batches.append(x.shape[0])
        return grads(x, transfer, grad, *need)

    monkeypatch.setattr(dispatch, 'spectral_filter_reference', spy)
    monkeypatch.setattr(dispatch, 'spectral_filter_reference_grads', spy_grads)
    x, transfer, grad = random_inputs((8, 5, 6, 3))
    y, gx, gt = output_and_grads(spectral_filter, x, transfer, grad)
    assert batches == [2, 2]  # dispatch.SELF_CHECK_IMAGES
    ey, egx, egt = exact_spectral_filter(x, transfer, grad)
    assert_close(y, ey, 'forward')
    assert_close(gx, egx, 'grad x')
    assert_close(gt, egt, 'grad transfer')


def test_tuning_runs_on_a_bounded_slice(on_cuda, monkeypatch):
    """The candidates are timed on as many first images as fit in
    ``TUNING_MAX_BYTES`` of float32 (here three), forward and backward."""
    image = 5 * 6 * 3 * 4
    monkeypatch.setattr(dispatch, 'TUNING_MAX_BYTES', 3 * image + image // 2)
    timed = []

    class Spy(FakeTimer):

        def __call__(self, candidate, step, repeats):
            sizes = []
            forward, backward = (triton_hco.launch_forward,
                                 triton_hco.launch_backward)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(
                    triton_hco, 'launch_forward', lambda x, *a:
                    (sizes.append(x.shape[0]), forward(x, *a))[1])
                mp.setattr(
                    triton_hco, 'launch_backward', lambda x, *a:
                    (sizes.append(x.shape[0]), backward(x, *a))[1])
                result = super().__call__(candidate, step, repeats)
            timed.append((candidate, sizes))
            return result

    monkeypatch.setattr(dispatch, 'time_candidate', Spy(on_cuda.times))
    x, transfer, grad = random_inputs((8, 5, 6, 3))
    output_and_grads(spectral_filter, x, transfer, grad)
    assert [c for c, _ in timed] == ['reference', 'fused', 'tiled'] * 2
    assert all(sizes == [3] for c, sizes in timed if c != 'reference')


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by the storages that ops create inside
    the mode (views of existing storages are not new memory)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._held = set()

    def _freed(self, key, nbytes):
        self.live -= nbytes
        self._held.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes and key not in inputs and key not in self._held:
                self._held.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, nbytes)
        return out


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('direction', ['forward', BOTH])
def test_tuner_memory_does_not_grow_with_the_batch(on_cuda, monkeypatch, dtype,
                                                   direction):
    """Timing the candidates of a bucket holds at most 6 float32 copies of
    the ``TUNING_MAX_BYTES`` slice at once (5.5 measured, bfloat16
    backward), for a batch of 8 as for one of 32. Measured on every
    storage the ops create (``LiveBytes``); the kernels' launchers run with
    their launches left out (``recorded_launches``), so what is counted is
    what they allocate on a GPU; the checks are taken as passed."""
    h, w, c = 40, 40, 16
    image = 4 * h * w * c
    monkeypatch.setattr(dispatch, 'TUNING_MAX_BYTES', 4 * image)
    dct_basis(h), dct_basis(w)  # cached before: not the tuner's memory
    peaks = []
    for batch in (8, 32):
        x, transfer, grad = random_inputs((batch, h, w, c), dtype)
        dispatcher = dispatch.HCODispatcher()
        for path in ('fused', 'tiled'):
            dispatcher._checks[(x.device, dtype, path, direction)] = 'passed'
        live = LiveBytes()
        with triton_hco.recorded_launches(), live:
            dispatcher.measure(x, transfer, direction,
                               None if direction == 'forward' else grad)
        peaks.append(live.peak)
    assert peaks[0] == peaks[1] <= 6 * dispatch.TUNING_MAX_BYTES, \
        [p / dispatch.TUNING_MAX_BYTES for p in peaks]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('direction', ['forward', BOTH])
def test_self_check_memory_does_not_grow_with_the_batch(
        on_cuda, monkeypatch, dtype, direction):
    """A self-check holds at most 8 float64 copies of two images at once
    (7.25 measured, float32 backward: the kernel's output on the images,
    the reference's intermediates, the comparison), for a batch of 8 as
    for one of 32; measured as above, the launches left out (their outputs
    zeroed, so that the comparison sees the same values each time)."""
    forward, backward = triton_hco.launch_forward, triton_hco.launch_backward
    monkeypatch.setattr(triton_hco, 'launch_forward',
                        lambda *args: forward(*args).zero_())
    monkeypatch.setattr(
        triton_hco, 'launch_backward',
        lambda *args: tuple(None if t is None else t.zero_()
                            for t in backward(*args)))
    h, w, c = 40, 40, 16
    two_images = 2 * h * w * c * 8
    for n in (h, w):
        dct_basis(n), dct_basis(n, dtype=torch.float64)
    peaks = []
    for batch in (8, 32):
        x, transfer, grad = random_inputs((batch, h, w, c), dtype)
        live = LiveBytes()
        with triton_hco.recorded_launches(), live:
            dispatch.HCODispatcher()._self_check(
                'tiled', x, transfer, None if direction == 'forward' else grad,
                direction)
        peaks.append(live.peak)
    assert peaks[0] == peaks[1] <= 8 * two_images, \
        [p / two_images for p in peaks]


# ---------------------------------------------------------------------------
# Several processes
# ---------------------------------------------------------------------------
def _rank(rank, world, init_file, out_dir, times):
    """One process of a two-rank gloo group: the same map on each rank,
    timers that would choose differently."""
    import torch.distributed as dist
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    timer = FakeTimer(times[rank])
    dispatch.device_is_cuda = lambda x: True
    dispatch.gpu_name = lambda device: GPU
    dispatch.time_candidate = timer
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    results = []
    for _ in range(2):
        # Rank 1 meets the bucket while rank 0 may still be tuning it: it
        # takes the reference until rank 0 has published its decision.
        y, gx, gt = output_and_grads(spectral_filter, x, transfer, grad)
        results.append([t.tolist() for t in (y, gx, gt)])
        dist.barrier()
    decisions = {
        d: dispatch.hco_dispatcher.decision(x, d)
        for d in ('forward', BOTH)
    }
    with open(os.path.join(out_dir, f'{rank}.json'), 'w') as f:
        json.dump(
            dict(
                timed=timer.calls,
                decisions={
                    d: [v.choice, v.source]
                    for d, v in decisions.items()
                },
                results=results), f)
    dist.destroy_process_group()


def test_ranks_take_rank_0_s_decisions(tmp_path):
    """Two gloo processes whose timers would choose differently (tiled on
    rank 0, fused on rank 1): rank 0 times and decides, rank 1 times
    nothing and runs rank 0's choices; both compute the exact filter."""
    mp = pytest.importorskip('torch.multiprocessing')
    if not torch.distributed.is_available():
        pytest.skip('torch.distributed is not available')
    times = [{
        'reference': 3.0,
        'fused': 2.0,
        'tiled': 1.0
    }, {
        'reference': 3.0,
        'fused': 1.0,
        'tiled': 2.0
    }]
    mp.start_processes(
        _rank,
        args=(2, str(tmp_path / 'init'), str(tmp_path), times),
        nprocs=2,
        start_method='spawn')
    ranks = [json.loads((tmp_path / f'{r}.json').read_text()) for r in (0, 1)]
    assert ranks[0]['timed'] == ['reference', 'fused', 'tiled'] * 2
    assert ranks[0]['decisions'] == {
        'forward': ['tiled', 'timed'],
        BOTH: ['tiled', 'timed']
    }
    assert ranks[1]['timed'] == []
    assert ranks[1]['decisions'] == {
        'forward': ['tiled', 'rank 0'],
        BOTH: ['tiled', 'rank 0']
    }
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    exact = exact_spectral_filter(x, transfer, grad)
    for rank in ranks:
        for result in rank['results']:
            for name, got, want in zip(('y', 'gx', 'gt'), result, exact):
                assert_close(torch.tensor(got), want, name)


def test_deterministic_algorithms_time_nothing(on_cuda, calls):
    """``torch.use_deterministic_algorithms(True)``: no timing, the default
    kernel path of each grid (fused up to 32 x 32, tiled above), and
    repeated calls equal bit for bit."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for shape, path in (((2, 5, 6, 3), 'fused'), ((2, 40, 6, 3), 'tiled')):
            x, transfer, grad = random_inputs(shape)
            first = output_and_grads(spectral_filter, x, transfer, grad)
            second = output_and_grads(spectral_filter, x, transfer, grad)
            for a, b in zip(first, second):
                assert torch.equal(a, b)
            assert calls['forward'][-1] == calls['backward'][-1] == path
            for got, want in zip(first,
                                 exact_spectral_filter(x, transfer, grad)):
                assert_close(got, want, str(shape))
    finally:
        torch.use_deterministic_algorithms(before)
    assert on_cuda.calls == []


# ---------------------------------------------------------------------------
# torch.compile and double backward
# ---------------------------------------------------------------------------
def test_compiled_model_keeps_the_kernel(on_cuda, calls):
    """Under ``torch.compile`` the operator stays one node of the forward
    graph, its backward one node of the backward graph, and the compiled
    function runs the kernels and matches eager and the exact filter.

    Compiled with AOTAutograd and no code generation (``aot_eager``'s
    graphs, captured here): inductor's C++ compile on a CPU would take
    minutes and runs the same graphs.
    """
    from torch._dynamo.backends.common import aot_autograd
    torch._dynamo.reset()
    graphs = {'forward': [], 'backward': []}

    def capture(kind):

        def compiler(gm, example_inputs):
            graphs[kind].append(gm)
            return gm

        return compiler

    backend = aot_autograd(
        fw_compiler=capture('forward'), bw_compiler=capture('backward'))

    def model(x, transfer):
        return spectral_filter(x * 2, transfer).tanh()

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x, transfer, grad = random_inputs((2, 5, 6, 3))
    got = output_and_grads(compiled, x, transfer, grad)
    assert calls['forward'] and calls['backward']
    eager = output_and_grads(model, x, transfer, grad)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def targets(kind):
        return {
            node.target
            for gm in graphs[kind]
            for node in gm.graph.nodes if node.op == 'call_function'
        }

    assert torch.ops.mmvheat.spectral_filter.default in targets('forward')
    assert torch.ops.mmvheat.spectral_filter_backward.default in \
        targets('backward')
    # The exact result of the same function: tanh(filter(2x)).
    y64 = exact_spectral_filter(2 * x, transfer).tanh()
    assert_close(got[0], y64, 'output')
    torch._dynamo.reset()


def test_operator_registration_is_consistent(interpret):
    """torch.library's own checks of the operator: schema, fake (meta)
    implementation, autograd registration, on each kernel path."""
    x, transfer, _ = random_inputs((2, 5, 6, 3))
    for path in ('fused', 'tiled'):
        torch.library.opcheck(
            torch.ops.mmvheat.spectral_filter.default,
            (x.requires_grad_(), transfer.requires_grad_(), path))


def test_double_backward_on_the_kernels(on_cuda, calls):
    """``create_graph=True`` through a kernel: the gradient is
    differentiable again (the reference's formula), and its own gradient
    is exact. For ``L = <v, d/dx <w, f(x, T)>>`` the gradient for ``T`` is
    ``sum_b DCT(v) * DCT(w)``, which ``exact_spectral_filter(v, T, w)``
    computes."""
    x, transfer, w = random_inputs((2, 5, 6, 3))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    xr = x.clone().requires_grad_()
    tr = transfer.clone().requires_grad_()
    y = spectral_filter(xr, tr)
    assert calls['forward']
    (gx, ) = torch.autograd.grad(y, xr, w, create_graph=True)
    (gt, ) = torch.autograd.grad((gx * v).sum(), tr)
    assert_close(gx, exact_spectral_filter(x, transfer, w)[1], 'grad x')
    assert_close(gt, exact_spectral_filter(v, transfer, w)[2], 'second order')


# ---------------------------------------------------------------------------
# float16 overflow
# ---------------------------------------------------------------------------
def test_float16_overflow_is_checked_in_float16(on_cuda, monkeypatch, calls,
                                                log):
    """A float16 map whose filtered values exceed float16's range in some
    entries: the kernel's infinities are the reference's rounded to
    float16, so the check passes and the kernel's result is kept."""
    monkeypatch.setenv(ENV, 'triton')
    x, _, _ = random_inputs((2, 5, 6, 3))
    x[..., 0] = 4e4  # doubled below: 8e4 > 65504, the largest float16
    x = x.half()
    transfer = torch.full((5, 6, 3), 2.)
    y = spectral_filter(x, transfer)
    assert torch.isinf(y[..., 0]).all() and torch.isfinite(y[..., 1:]).all()
    assert not log.messages(logging.WARNING)
    assert calls['reference'] == 1  # the check's only
    exact = exact_spectral_filter(x, transfer)[..., 1:]
    err = (y[..., 1:].double() - exact).abs() / exact.abs().max()
    # float16 rounding of a float32 result: half an ulp, 2^-11.
    assert err.max() <= 2.0**-11 + 1e-5, err.max()
