# Copyright (c) mmvheat contributors. All rights reserved.
"""The spectral filter computed independently of the package (scipy's DCT
in float64), the inputs the operator tests feed it and the comparison they
make."""
import numpy as np
import scipy.fft
import torch

from mmvheat.ops.spectral import heat_transfer

#: Default tolerance of :func:`assert_close` (see the tests' docstrings).
FP32_RTOL = 1e-5


def exact_spectral_filter(x, transfer, grad=None):
    """float64 ``IDCTN(DCTN(x) * transfer)`` by ``scipy.fft``, and with
    ``grad`` also the gradients for ``x`` and ``transfer``.

    The filter is symmetric (orthonormal transforms around a diagonal), so
    ``grad_x`` is the same filter applied to ``grad`` and ``grad_transfer``
    is the batch sum of the product of the two spectra.

    Args:
        x (Tensor): ``(..., H, W, C)``, any dtype (used as float64).
        transfer (Tensor): ``(H, W, C)``.
        grad (Tensor, optional): The gradient of the output.

    Returns:
        Tensor or tuple: float64 output; with ``grad``, also ``grad_x`` and
        ``grad_transfer``.
    """
    lead = x.shape[:-3]
    x64 = x.detach().double().reshape(-1, *x.shape[-3:]).numpy()
    t64 = transfer.detach().double().numpy()
    axes = (1, 2)
    spec_x = scipy.fft.dctn(x64, type=2, norm='ortho', axes=axes)
    y = scipy.fft.idctn(spec_x * t64, type=2, norm='ortho', axes=axes)
    y = torch.from_numpy(y).reshape(*lead, *y.shape[1:])
    if grad is None:
        return y
    g64 = grad.detach().double().reshape(x64.shape).numpy()
    spec_g = scipy.fft.dctn(g64, type=2, norm='ortho', axes=axes)
    gx = scipy.fft.idctn(spec_g * t64, type=2, norm='ortho', axes=axes)
    gt = np.sum(spec_x * spec_g, axis=0)
    return (y, torch.from_numpy(gx).reshape(x.shape), torch.from_numpy(gt))


def random_inputs(shape, dtype=torch.float32, seed=0):
    """``x``, a realistic ``transfer`` (``decay ** k``, ``k`` in [0, 2)) and
    an output gradient for a ``(B, H, W, C)`` map."""
    b, h, w, c = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    transfer = heat_transfer(2 * torch.rand((h, w, c), generator=gen))
    grad = torch.randn(shape, generator=gen).to(dtype)
    return x, transfer, grad


def assert_close(actual, exact, what, rtol=FP32_RTOL):
    """``max |actual - exact| <= rtol * max |exact|``."""
    assert actual.shape == exact.shape, (what, actual.shape)
    scale = exact.abs().max().item()
    err = (actual.detach().double() - exact.double()).abs().max().item()
    assert err <= rtol * max(scale, 1e-30), \
        f'{what}: max abs error {err:.3g} > {rtol} * {scale:.3g}'


def output_and_grads(fn, x, transfer, grad):
    """``fn(x, transfer)`` and its gradients for ``x`` and ``transfer``."""
    x = x.detach().clone().requires_grad_()
    transfer = transfer.detach().clone().requires_grad_()
    y = fn(x, transfer)
    gx, gt = torch.autograd.grad(y, (x, transfer), grad)
    return y.detach(), gx, gt
