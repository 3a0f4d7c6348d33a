# Copyright (c) mmvheat contributors. All rights reserved.
"""FLOP and parameter counts with the Heat Conduction Operator counted right.

Convention (the one of fvcore, mmengine's ``FlopAnalyzer`` and the vHeat and
Swin papers): one fused multiply-add is one "FLOP", i.e. the numbers are
MACs; element-wise ops (activations, the residual adds, the ``* transfer``
of the HCO) are not counted.

mmengine's stock ``aten::matmul`` handler computes ``prod(a.shape) *
b.shape[-1]``, which drops the broadcast batch dimensions of the *second*
operand. The HCO applies the cosine basis as ``basis (H, H) @ x (B, H, W*C)``
and ``basis (W, W) @ x (B*H, W, C)``, so the stock handler undercounts it by
``B`` and ``B*H`` respectively. :func:`matmul_flop_jit` counts
``prod(out.shape) * k`` instead, which is exact under broadcasting.

The fused Triton kernel is an autograd ``Function`` that ``torch.jit.trace``
sees as an opaque ``prim::PythonOp``; :func:`model_complexity` therefore
traces with ``MMVHEAT_HCO_BACKEND=torch`` (same function, the four matmuls).

``tools/analysis_tools/get_flops.py`` counts a config's model with it, per
stage of an mmvheat backbone too.
"""
import contextlib
import os
from collections import Counter
from typing import Any, Dict, List

import torch
from torch import nn

__all__ = [
    'matmul_flop_jit', 'hco_macs', 'flop_analyzer', 'model_complexity',
    'reference_hco_backend', 'format_count'
]


def _shape(v) -> List[int]:
    return list(v.type().sizes())


def matmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``aten::matmul``/``mm``/``bmm`` with broadcasting."""
    a = _shape(inputs[0])
    out = _shape(outputs[0])
    k = a[-1]
    n = 1
    for d in out:
        n *= d
    return int(n * k)


def hco_macs(h: int,
             w: int,
             c: int,
             batch: int = 1,
             include_multiply: bool = False) -> int:
    """Analytic MACs of one HCO ``IDCT2D(DCT2D(x) * transfer)``.

    The DCT along H then W and the inverse: ``2 * C*H*W*(H+W)`` per image;
    the spectral multiply adds ``C*H*W`` (not counted by the convention).
    """
    macs = 2 * c * h * w * (h + w)
    if include_multiply:
        macs += c * h * w
    return batch * macs


@contextlib.contextmanager
def reference_hco_backend():
    """Route :func:`mmvheat.ops.spectral_filter` to the matmul reference."""
    from mmvheat.ops import HCO_BACKEND_ENV
    old = os.environ.get(HCO_BACKEND_ENV)
    os.environ[HCO_BACKEND_ENV] = 'torch'
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(HCO_BACKEND_ENV, None)
        else:
            os.environ[HCO_BACKEND_ENV] = old


def flop_analyzer(model: nn.Module, inputs):
    """An mmengine ``FlopAnalyzer`` with the corrected matmul handlers."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(
        **{
            'aten::matmul': matmul_flop_jit,
            'aten::mm': matmul_flop_jit,
            'aten::bmm': matmul_flop_jit,
        })
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer


def _count(model, inputs, show_table, max_depth):
    from mmengine.analysis.print_helper import complexity_stats_table
    model.eval()
    with reference_hco_backend(), torch.no_grad():
        analyzer = flop_analyzer(model, inputs)
        flops = analyzer.total()
        unsupported = dict(analyzer.unsupported_ops())
        table = (
            complexity_stats_table(
                analyzer, max_depth=max_depth, show_param_shapes=False)
            if show_table else None)
        by_module = dict(analyzer.by_module())
        by_operator = {
            name: Counter(ops)
            for name, ops in analyzer.by_module_and_operator().items()
        }
    return int(flops), unsupported, table, by_module, by_operator


def model_complexity(model: nn.Module,
                     inputs,
                     show_table: bool = False,
                     max_depth: int = 3,
                     split_batch: bool = False) -> Dict[str, Any]:
    """FLOPs (MACs, see module doc), params and unsupported ops of a model.

    ``model`` is put in eval mode. ``inputs`` is a tensor or a tuple of
    positional arguments of ``model.forward`` whose batch is 1.

    Returns a dict with ``flops`` (one forward of ``inputs``), ``params``,
    ``unsupported_ops``, ``table`` (or None) and, per module name,
    ``flops_by_module`` and ``flops_by_module_and_operator``. With
    ``split_batch`` the forward is also counted at batch 2 (the first
    input repeated along dim 0) and ``flops_per_image`` = F(2) - F(1) and
    ``flops_shared`` = 2F(1) - F(2) are added (and per module,
    ``per_image_by_module`` and ``shared_by_module``): the part of the
    forward that does not scale with the batch. In vHeat that is the
    prediction of the filters ``decay ** k`` from the frequency embeddings
    (``to_k``, sum over blocks of ``H*W*C*C``), which a deployed model
    computes once per input size and keeps; the published FLOPs (4.6G for
    vHeat-T) are the per-image part.
    """
    from mmengine.analysis import parameter_count
    if not isinstance(inputs, tuple):
        inputs = (inputs, )
    flops, unsupported, table, by_module, by_operator = _count(
        model, inputs, show_table, max_depth)
    result = dict(
        flops=flops,
        params=int(parameter_count(model)['']),
        unsupported_ops=unsupported,
        table=table,
        flops_by_module=by_module,
        flops_by_module_and_operator=by_operator)
    if split_batch:
        doubled = (torch.cat([inputs[0], inputs[0]]), ) + inputs[1:]
        flops2, _, _, by_module2, _ = _count(model, doubled, False, max_depth)
        result['flops_per_image'] = flops2 - flops
        result['flops_shared'] = 2 * flops - flops2
        result['per_image_by_module'] = {
            name: by_module2.get(name, 0) - count
            for name, count in by_module.items()
        }
        result['shared_by_module'] = {
            name: 2 * count - by_module2.get(name, 0)
            for name, count in by_module.items()
        }
    return result


def format_count(n: float, unit: str = '') -> str:
    """``4.6G``-style formatting."""
    for div, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.3g}{suffix}{unit}'
    return f'{n:.3g}{unit}'
