# Copyright (c) mmvheat contributors. All rights reserved.
"""CPU fast paths: ``fused_linear``'s oneDNN post-op fusion (with a packed
weight or not) agrees with its eager fallback and is only taken where it
computes the same thing; ``cpu_sub_batch_size`` splits batches by bytes."""
import pytest
import torch
import torch.nn.functional as F

from mmvheat.models.layers import (cpu_sub_batch_size, fused_linear,
                                   pack_linear_weight)


def eager(x, weight, bias, activation, residual):
    y = F.linear(x, weight, bias)
    if activation == 'gelu':
        y = F.gelu(y)
    elif activation == 'silu':
        y = F.silu(y)
    return y if residual is None else y + residual


def make_inputs(shape=(2, 5, 7, 12), out=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    weight = torch.randn(out, shape[-1], generator=g) / shape[-1]**0.5
    bias = torch.randn(out, generator=g)
    residual = torch.randn(*shape[:-1], out, generator=g)
    return x, weight, bias, residual


@pytest.mark.parametrize('activation', [None, 'gelu', 'silu'])
@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('packed', [False, True])
def test_fused_matches_eager(activation, with_residual, with_bias, packed,
                             onednn_spy):
    x, weight, bias, residual = make_inputs()
    bias = bias if with_bias else None
    residual = residual if with_residual else None
    with torch.no_grad():
        out = fused_linear(x, weight, bias, activation, residual,
                           pack_linear_weight(weight) if packed else None)
    expected = eager(x, weight, bias, activation, residual)
    # oneDNN's GELU/SiLU and blocking round differently from ATen's.
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert onednn_spy.packed == [packed]
    # One oneDNN call: the activation, or else the residual add, is fused.
    if activation is None and residual is not None:
        assert onednn_spy.calls == ['add']
    else:
        assert onednn_spy.calls == [{
            None: 'none',
            'gelu': 'gelu',
            'silu': 'swish'
        }[activation]]


def test_residual_that_broadcasts_is_added_eagerly(onednn_spy):
    x, weight, bias, _ = make_inputs()
    residual = torch.randn(20)
    with torch.no_grad():
        out = fused_linear(x, weight, bias, residual=residual)
    torch.testing.assert_close(out, eager(x, weight, bias, None, residual))
    assert onednn_spy.calls == ['none']


@pytest.mark.filterwarnings('ignore:TF32 acceleration')
@pytest.mark.parametrize(
    'case', ['grad', 'float64', 'autocast', 'disabled', 'strided', 'tracing'])
def test_falls_back_where_fusion_does_not_apply(case, onednn_spy):
    x, weight, bias, residual = make_inputs()
    context = torch.no_grad()
    if case == 'grad':
        weight.requires_grad_()
        context = torch.enable_grad()
    elif case == 'float64':
        x, weight, bias, residual = (
            t.double() for t in (x, weight, bias, residual))
    elif case == 'autocast':
        context = torch.autocast('cpu', dtype=torch.bfloat16)
    elif case == 'disabled':
        context = torch.backends.mkldnn.flags(enabled=False)
    elif case == 'strided':
        x = x.transpose(1, 2)
        residual = residual.transpose(1, 2)
    # A packed weight, where one is given, is not used either: a weight
    # that is not the weight would show in the output.
    packed = pack_linear_weight(torch.randn(20, 12))
    with context:
        if case == 'tracing':

            def fn(x):
                return fused_linear(x, weight, bias, 'gelu', residual, packed)

            with torch.no_grad():
                out = torch.jit.trace(fn, x, check_trace=False)(x)
        else:
            out = fused_linear(x, weight, bias, 'gelu', residual, packed)
        expected = eager(x, weight, bias, 'gelu', residual)
    assert onednn_spy.calls == []
    torch.testing.assert_close(out, expected)
    if case == 'grad':
        out.sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_packed_weight_is_a_copy_in_onednn_layout():
    x, weight, bias, _ = make_inputs()
    packed = pack_linear_weight(weight)
    assert packed.is_mkldnn and packed.shape == weight.shape
    with torch.no_grad():
        before = fused_linear(x, weight, bias, packed=packed)
        weight.mul_(2)  # the packed copy does not follow
        after = fused_linear(x, weight, bias, packed=packed)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


@pytest.mark.parametrize('case', ['float64', 'disabled'])
def test_no_packed_weight_where_fusion_cannot_use_it(case):
    weight = torch.randn(20, 12)
    if case == 'float64':
        assert pack_linear_weight(weight.double()) is None
    else:
        with torch.backends.mkldnn.flags(enabled=False):
            assert pack_linear_weight(weight) is None


def test_empty_input():
    x, weight, bias, _ = make_inputs(shape=(0, 12))
    with torch.no_grad():
        out = fused_linear(x, weight, bias, 'silu')
    assert out.shape == (0, 20)


def test_unknown_activation():
    x, weight, bias, _ = make_inputs()
    with pytest.raises(ValueError, match='relu'):
        fused_linear(x, weight, bias, activation='relu')


@pytest.mark.parametrize(
    'max_bytes, expected',
    [
        (4 * 6 * 5 * 3 * 4, 4),  # exactly four images
        (4 * 6 * 5 * 3 * 4 + 7, 4),
        (6 * 5 * 3 * 4 - 1, 1),  # less than one image: still one
        (10**9, 7),  # never more than the batch
        (0, 7),
        (-1, 7)
    ])  # off
def test_cpu_sub_batch_size(max_bytes, expected):
    x = torch.zeros(7, 6, 5, 3)
    assert cpu_sub_batch_size(x, max_bytes) == expected
    assert cpu_sub_batch_size(x[:1], max_bytes) == 1


def test_cpu_sub_batch_size_keeps_the_batch_while_tracing():
    x = torch.zeros(7, 6, 5, 3)
    sizes = []

    def fn(x):
        sizes.append(cpu_sub_batch_size(x, 1))
        return x + 1

    torch.jit.trace(fn, x, check_trace=False)
    assert sizes == [7]
    assert cpu_sub_batch_size(x, 1) == 1
