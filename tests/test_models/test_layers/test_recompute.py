# Copyright (c) mmvheat contributors. All rights reserved.
"""The recomputing MLP and gate: their gradients, and what a block keeps."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmvheat.analysis.saved_tensors import saved_bytes
from mmvheat.models.layers import HeatBlock, heat_block, recompute


@pytest.fixture
def small_chunks(monkeypatch):
    """MLP chunks of 5 rows of 12 float32 or 2 of float64 hidden values
    (the maps here have 14 to 24 rows), none kept: fc1 is redone."""
    monkeypatch.setattr(recompute, 'MLP_CHUNK_BYTES', 5 * 12 * 4)
    monkeypatch.setattr(recompute, 'MLP_KEEP_BYTES', 0)


@pytest.fixture(params=['recomputed', 'kept'])
def mlp_path(request, monkeypatch, small_chunks):
    """The MLP redoing fc1 in small chunks, or keeping its pre-activation."""
    if request.param == 'kept':
        monkeypatch.setattr(recompute, 'MLP_KEEP_BYTES', 1 << 30)
    return request.param


def _float64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_mlp_gradcheck(mlp_path):
    args = (_float64(2, 3, 4,
                     6), _float64(12,
                                  6), _float64(12), _float64(6,
                                                             12), _float64(6))
    assert torch.autograd.gradcheck(recompute.mlp_recomputed, args)


def test_gated_linear_gradcheck():
    norm, linear = nn.LayerNorm(6).double(), nn.Linear(6, 5).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    u, z = _float64(2, 3, 4, 6), _float64(2, 3, 4, 6)
    params = (norm.weight, norm.bias, linear.weight, linear.bias)

    def gated(u, z, *params):
        return recompute._RecomputedGatedLinear.apply(u, z, *params[:2],
                                                      norm.eps, *params[2:])

    assert torch.autograd.gradcheck(gated, (u, z) + params)


def _gate_modules(c=6, out=5):
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(c), nn.Linear(c, out)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return norm, linear


def _gate_grads(gated, u, z, norm, linear, wanted):
    """The output of ``gated(u, z, norm, linear)`` and the gradients of the
    inputs named in ``wanted``, the others requiring none."""
    named = dict(
        u=u,
        z=z,
        norm_weight=norm.weight,
        norm_bias=norm.bias,
        weight=linear.weight,
        bias=linear.bias)
    for name, t in named.items():
        t.requires_grad_(name in wanted)
    out = gated(u, z, norm, linear)
    grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    grads = torch.autograd.grad(out, [named[k] for k in wanted],
                                grad.to(out.dtype))
    return out.detach(), dict(zip(wanted, grads))


def _plain_gate(u, z, norm, linear):
    return linear(norm(u) * F.silu(z))


@pytest.mark.parametrize('wanted', [
    ('u', 'z', 'norm_weight', 'norm_bias', 'weight', 'bias'),
    ('u', ),
    ('z', ),
    ('norm_weight', 'norm_bias'),
    ('weight', 'bias'),
    ('u', 'weight'),
    ('z', 'norm_bias', 'bias'),
])
def test_gated_linear_some_grads(wanted):
    """With any subset of the inputs requiring gradients, the gate's
    gradients are plain autograd's, in float64 to 1e-12 (relative): the
    same formulas, differing only in the order of rounding."""
    norm, linear = (m.double() for m in _gate_modules())
    u = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    z = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    out, grads = _gate_grads(recompute.gated_linear_recomputed, u, z, norm,
                             linear, wanted)
    expected_out, expected = _gate_grads(_plain_gate, u, z, norm, linear,
                                         wanted)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    for name in wanted:
        torch.testing.assert_close(
            grads[name], expected[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize('dtype,bias_rtol', [(torch.bfloat16, 2**-7),
                                             (torch.float16, 2**-10)])
def test_gated_linear_under_autocast(dtype, bias_rtol):
    """Under CPU autocast (``u`` and ``z`` from linear layers, so in
    ``dtype``) the output and gradients are plain autograd's, in the same
    dtypes. The same kernels run on the same values, so they agree to 1e-6
    (relative), far below a ``dtype`` rounding step, which a rounding done
    in the wrong dtype would show. The exception is the linear layer's
    bias: the gate sums its gradient in float32, plain autograd rounds the
    sum to ``dtype``, so they agree to a ``dtype`` step (``bias_rtol``)."""
    norm, linear = _gate_modules(c=24, out=20)
    proj = nn.Linear(24, 24)
    u0, z0 = torch.randn(2, 5, 7, 24), torch.randn(2, 5, 7, 24)
    wanted = ('u', 'z', 'norm_weight', 'norm_bias', 'weight', 'bias')

    def autocast(gated):

        def run(u, z, norm, linear):
            with torch.autocast('cpu', dtype):
                return gated(proj(u), proj(z), norm, linear)

        return _gate_grads(run, u0.clone(), z0.clone(), norm, linear, wanted)

    out, grads = autocast(recompute.gated_linear_recomputed)
    expected_out, expected = autocast(_plain_gate)
    assert out.dtype == expected_out.dtype == dtype
    torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=0)
    for name in wanted:
        assert grads[name].dtype == expected[name].dtype == torch.float32
        rtol = bias_rtol if name == 'bias' else 1e-6
        torch.testing.assert_close(
            grads[name], expected[name], rtol=rtol, atol=1e-6, msg=name)


def _plain_paths(monkeypatch):
    """The block's modules without the recomputing functions: the plain
    ops autograd records one by one."""
    monkeypatch.setattr(heat_block, 'recording_gradients', lambda *t: False)


def _grads(block, x, transfer):
    block.zero_grad()
    x.grad = transfer.grad = None
    out = block(x, transfer)
    out.backward(
        torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape))
    named = dict(block.named_parameters(), x=x, transfer=transfer)
    # op.to_k predicts the filter outside the block: it gets no gradient.
    return out.detach(), {
        k: v.grad.clone()
        for k, v in named.items() if v.grad is not None
    }


@pytest.mark.parametrize('post_norm,layer_scale', [(False, None), (True, 0.5)])
def test_block_gradients_unchanged(monkeypatch, mlp_path, post_norm,
                                   layer_scale):
    """The block's output and every gradient, with the recomputing functions
    and with the plain ops, agree in float64 to 1e-12 (relative)."""
    torch.manual_seed(0)
    block = HeatBlock(6, post_norm=post_norm, layer_scale=layer_scale)
    block = block.double()
    for param in block.parameters():
        nn.init.normal_(param, std=0.5)
    x, transfer = _float64(2, 5, 4, 6), torch.rand(
        5, 4, 6, dtype=torch.float64, requires_grad=True)
    out, grads = _grads(block, x, transfer)
    _plain_paths(monkeypatch)
    expected_out, expected = _grads(block, x, transfer)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    assert grads.keys() == expected.keys()
    assert len(grads) == len(list(block.parameters())) - 2 + 2
    for name in grads:
        torch.testing.assert_close(
            grads[name], expected[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize('post_norm', [False, True])
@pytest.mark.parametrize('kept', [False, True])
def test_block_saves_eight_maps(monkeypatch, post_norm, kept):
    """A block keeps eight ``C``-channel maps for its backward pass:

    its input, ``norm1``'s output (the depth-wise conv's input), the conv's
    output (the projections' input), the spectrum (for the filter's
    gradient), ``u`` and ``z`` (the gate's inputs), the MLP branch's input
    and the MLP's input; besides them three LayerNorms' mean and inverse
    deviation per pixel, the filter (saved as an input), and the DCT bases
    (cached). No gate intermediates, and a hidden ``4C`` map only where the
    MLP keeps its pre-activation (one, within ``MLP_KEEP_BYTES``). The
    plain ops keep nineteen maps.
    """
    b, h, w, c = 2, 8, 6, 16
    monkeypatch.setattr(recompute, 'MLP_KEEP_BYTES',
                        b * h * w * 4 * c * 4 if kept else 0)
    block = HeatBlock(c, post_norm=post_norm)
    x = torch.randn(b, h, w, c, requires_grad=True)
    transfer = torch.rand(h, w, c, requires_grad=True)
    maps, stats = (8 + 4 * kept) * b * h * w * c, 3 * 2 * b * h * w
    budget = 4 * (maps + stats + h * w * c + h * h + w * w)
    saved = saved_bytes(block, x, transfer, exclude=block.parameters())
    assert budget - 4 * 4 * b * h * w * c < saved <= budget


def _mlp_run(mlp, x):
    out = mlp(x)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    grads = [x.grad] + [p.grad for p in mlp.parameters()]
    x.grad = None
    mlp.zero_grad(set_to_none=True)
    return [out.detach()] + grads


@pytest.mark.parametrize('rows,dim', [(64, 768), (200, 16)])
@pytest.mark.parametrize('autocast', [None, torch.bfloat16])
def test_kept_and_recomputed_mlp_agree_to_the_bit(monkeypatch, rows, dim,
                                                  autocast):
    """In one chunk, the MLP that keeps its pre-activation and the one that
    redoes fc1 give the same output and gradients, bit for bit, in float32
    and under autocast: fc1 is redone as the forward pass ran it. (With 64
    rows, ``F.linear`` and the fused forward's fc1 differ in their last
    bits on oneDNN CPUs.)
    """
    monkeypatch.setattr(recompute, 'MLP_CHUNK_BYTES', 1 << 30)
    torch.manual_seed(0)
    mlp = heat_block.Mlp(dim, 4 * dim)
    x = torch.randn(rows, dim, requires_grad=True)
    runs, enabled = {}, autocast is not None
    for keep in (0, 1 << 30):
        monkeypatch.setattr(recompute, 'MLP_KEEP_BYTES', keep)
        with torch.autocast('cpu', autocast or torch.bfloat16, enabled):
            runs[keep] = _mlp_run(mlp, x)
        assert runs[keep][0].dtype == (autocast or torch.float32)
    for kept, redone in zip(runs[1 << 30], runs[0]):
        assert torch.equal(kept, redone)


def test_mlp_keeps_what_fits(monkeypatch):
    """The pre-activation is kept up to ``MLP_KEEP_BYTES`` of hidden map,
    and not one row more."""
    mlp = heat_block.Mlp(6, 24)
    x = torch.randn(10, 6, requires_grad=True)
    hidden = 10 * 24 * 4

    def saved(keep):
        monkeypatch.setattr(recompute, 'MLP_KEEP_BYTES', keep)
        return saved_bytes(mlp, x, exclude=mlp.parameters())

    assert saved(hidden) - saved(hidden - 1) == hidden
    assert saved(hidden - 1) == 10 * 6 * 4


def test_mlp_chunks_agree_with_whole(small_chunks):
    """Chunked rows give the unchunked MLP's output and gradients."""
    mlp = heat_block.Mlp(6, 12).double()
    x = _float64(3, 7, 6)
    out = mlp(x)
    grads = torch.autograd.grad(out.sum(), [x, *mlp.parameters()])
    expected = mlp.fc2(F.gelu(mlp.fc1(x)))
    expected_grads = torch.autograd.grad(expected.sum(),
                                         [x, *mlp.parameters()])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('with_norm', [False, True])
def test_deployed_mlp_in_chunks(small_chunks, with_norm):
    """The inference form's chunks (each normalised on its own, with a
    norm) give the whole MLP plus the residual, to float32 rounding
    (oneDNN may fuse the GELU and the add)."""
    from mmvheat.models.backbones.deploy import FusedMlp
    torch.manual_seed(0)
    mlp, norm = heat_block.Mlp(6, 12), nn.LayerNorm(6)
    nn.init.normal_(norm.weight)
    x, residual = torch.randn(2, 7, 6), torch.randn(2, 7, 6)
    with torch.no_grad():
        out = FusedMlp.from_trained(mlp)(
            x, residual=residual, norm=norm if with_norm else None)
        expected = mlp(norm(x) if with_norm else x) + residual
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_filter_prediction_keeps_a_mask():
    """Predicting ``decay ** ReLU(to_k(embed))`` keeps the embedding (for
    ``to_k``), a one-byte mask (for the ReLU), the filter (for the
    exponential) and the squared wave numbers, not a float copy of ``k``."""
    h, w, c = 8, 6, 16
    op = heat_block.HeatConduction2d(c)
    embed = torch.randn(h, w, c, requires_grad=True)
    budget = 4 * h * w * c + h * w * c + 4 * h * w * c + 4 * h * w
    assert saved_bytes(
        op.heat_transfer, embed, exclude=op.parameters()) <= budget
