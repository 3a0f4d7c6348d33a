# Copyright (c) mmvheat contributors. All rights reserved.
"""What the operator tests share: the kernels in Triton's interpreter, the
dispatcher's CUDA branch on CPU tensors, and counters of what ran.

The self-check and the autotuner run on CUDA only. They are reached on CPU
tensors by replacing the dispatcher's device check (``device_is_cuda``), GPU
name (``gpu_name``) and timer (``time_candidate``, by one that returns set
times); the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``,
set for the session by ``tests/conftest.py`` on machines without CUDA), or
are replaced by ones that raise or return wrong values.
"""
import logging

import pytest
from mmengine.logging import MMLogger

from mmvheat.ops import dispatch

GPU = 'Fake GPU 80GB'


@pytest.fixture
def interpret(monkeypatch):
    """Kernels in Triton's interpreter (skip where they are compiled), with
    the default backend."""
    triton_hco = pytest.importorskip('mmvheat.ops.triton_hco')
    if not triton_hco.triton_interpret_enabled():
        pytest.skip('the HCO kernels were compiled for CUDA in this session '
                    '(TRITON_INTERPRET was not set when they were imported)')
    monkeypatch.delenv(dispatch.HCO_BACKEND_ENV, raising=False)


class Log(logging.Handler):
    """Records what reaches the current MMLogger at debug level and up."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level):
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def log():
    logger = MMLogger.get_current_instance()
    handler, level = Log(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def dispatcher():
    dispatch.hco_dispatcher.reset()
    yield dispatch.hco_dispatcher
    dispatch.hco_dispatcher.reset()


class FakeTimer:
    """``time_candidate`` with set times; runs each step once and counts."""

    def __init__(self, times):
        self.times = times
        self.calls = []

    def __call__(self, candidate, step, repeats):
        self.calls.append(candidate)
        step()
        return self.times[candidate]


@pytest.fixture
def on_cuda(interpret, monkeypatch, dispatcher, log):
    """The CUDA decisions on CPU tensors, kernels in the interpreter."""
    monkeypatch.delenv(dispatch.HCO_AUTOTUNE_CACHE_ENV, raising=False)
    monkeypatch.setattr(dispatch, 'device_is_cuda', lambda x: True)
    monkeypatch.setattr(dispatch, 'gpu_name', lambda device: GPU)
    timer = FakeTimer({'reference': 3.0, 'fused': 2.0, 'tiled': 1.0})
    monkeypatch.setattr(dispatch, 'time_candidate', timer)
    return timer


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernel forward and backward launches (their paths) and
    the reference runs (forward or gradients) of the dispatcher."""
    triton_hco = pytest.importorskip('mmvheat.ops.triton_hco')
    counts = {'forward': [], 'backward': [], 'reference': 0}
    forward, backward = triton_hco.launch_forward, triton_hco.launch_backward

    def counted_forward(x, transfer, path):
        counts['forward'].append(path)
        return forward(x, transfer, path)

    def counted_backward(x, transfer, grad, need_gx, need_gt, path):
        counts['backward'].append(path)
        return backward(x, transfer, grad, need_gx, need_gt, path)

    def counted_reference(reference):

        def counted(*args):
            counts['reference'] += 1
            return reference(*args)

        return counted

    monkeypatch.setattr(triton_hco, 'launch_forward', counted_forward)
    monkeypatch.setattr(triton_hco, 'launch_backward', counted_backward)
    for name in ('spectral_filter_reference',
                 'spectral_filter_reference_grads'):
        monkeypatch.setattr(dispatch, name,
                            counted_reference(getattr(dispatch, name)))
    return counts
