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

:func:`stage_complexity` splits the counts of an mmvheat backbone per stage
(the stem, each stage's downsample or patch embedding and its blocks, the
output norms), with the HCO's share of each stage, and the rest of a model
per part (neck, heads).
"""
import contextlib
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = [
    'DEFAULT_SHAPES', 'matmul_flop_jit', 'hco_macs', 'flop_analyzer',
    'model_complexity', 'stage_complexity', 'reference_hco_backend',
    'format_count', 'get_flops'
]

#: Input size counted per library when none is given.
DEFAULT_SHAPES = {
    'mmpretrain': (224, 224),
    'mmseg': (512, 512),
    'mmdet': (800, 1344),
}


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


def _stage_rows(
        backbone: nn.Module) -> List[Tuple[str, List[str], Optional[str]]]:
    """The rows of an mmvheat backbone's table: a label, the module names
    (relative to the backbone) it adds up, and a submodule left out (the
    downsample of a stage, which has a row of its own)."""
    rows = [(f'stem ({backbone.stem_name})', [backbone.stem_name], None)]
    for i, stage in enumerate(backbone.stages):
        # vHeat stages start with a downsample (from the second one), MPViT
        # stages with a multi-scale patch embedding.
        first = None
        for part in ('downsample', 'patch_embed'):
            if getattr(stage, part, None) is not None:
                first = f'stages.{i}.{part}'
                rows.append(
                    (f'stage {i + 1} {part.replace("_", " ")}', [first], None))
                break
        rows.append((f'stage {i + 1}', [f'stages.{i}'], first))
    norms = [
        name for name, _ in backbone.named_children()
        if name.startswith('norm') and name[len('norm'):].isdigit()
    ]
    if norms:
        rows.append((f'output norms ({", ".join(norms)})', norms, None))
    return rows


def stage_complexity(model: nn.Module,
                     result: Dict[str, Any],
                     prefix: str = '') -> List[Dict[str, Any]]:
    """Per-stage params and FLOPs of an mmvheat backbone, and per part of
    the model around it.

    Args:
        model (nn.Module): What :func:`model_complexity` counted: an mmvheat
            backbone, or a model holding one at ``prefix + 'backbone'``.
        result (dict): :func:`model_complexity`'s result for it, counted
            with ``split_batch``.
        prefix (str): Where the model sits in ``model`` (e.g. ``'model.'``
            in a :class:`~mmvheat.apis.TensorModeWrapper`). Defaults to
            ``''``.

    Returns:
        list[dict]: One row per part: ``name``, ``params``, ``per_image``
        and ``shared`` FLOPs and ``hco`` (the HCO's DCT and inverse DCT
        MACs, per image; 0 where there is none). A stage's row leaves out
        its downsample (or patch embedding), which has a row of its own;
        the stages of vHeat hold the ``decay ** k`` prediction, the shared
        part. Then ``backbone`` (the sum) and, for a whole model, a row per
        other top-level part (neck, heads).
    """
    from mmengine.analysis import parameter_count

    from mmvheat.models.backbones.base import BaseBackbone
    from mmvheat.models.backbones.vheat import HeatConduction2d
    inner = model.get_submodule(prefix[:-1]) if prefix else model
    whole = not isinstance(inner, BaseBackbone)
    backbone_prefix = f'{prefix}backbone.' if whole else prefix
    backbone = getattr(inner, 'backbone', None) if whole else inner
    if not isinstance(backbone, BaseBackbone):
        raise ValueError(f'{type(inner).__name__} has no mmvheat backbone: '
                         'the per-stage table needs VHeat or MPViT')
    params = parameter_count(model)
    columns = dict(
        params=params,
        per_image=result['per_image_by_module'],
        shared=result['shared_by_module'])
    by_operator = result['flops_by_module_and_operator']
    hco_modules = [
        name for name, module in model.named_modules()
        if isinstance(module, HeatConduction2d)
    ]

    def count(name: str, less: Optional[str] = None) -> Dict[str, int]:
        """The counts of module ``name`` (full name), less those of its
        submodule ``less``."""
        row = {
            column: values.get(name, 0) - (values.get(less, 0) if less else 0)
            for column, values in columns.items()
        }
        inside = name + '.' if name else ''
        row['hco'] = sum(
            by_operator.get(module, {}).get('matmul', 0)
            for module in hco_modules if module.startswith(inside)
            and not (less and module.startswith(less + '.')))
        return row

    rows = []
    for label, names, less in _stage_rows(backbone):
        row = dict(name=label, params=0, per_image=0, shared=0, hco=0)
        for name in names:
            counts = count(backbone_prefix + name, less
                           and backbone_prefix + less)
            for column, value in counts.items():
                row[column] += value
        rows.append(row)
    rows.append(dict(name='backbone', **count(backbone_prefix[:-1])))
    if whole:
        for part, _ in inner.named_children():
            if part in ('backbone', 'data_preprocessor'):
                continue
            row = count(prefix + part)
            if row['params'] or row['per_image'] or row['shared']:
                rows.append(dict(name=part, **row))
    return rows


def format_count(n: float, unit: str = '') -> str:
    """``4.6G``-style formatting."""
    for div, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.3g}{suffix}{unit}'
    return f'{n:.3g}{unit}'


def get_flops(config: str,
              shape: Optional[Tuple[int, int]] = None,
              cfg_options: Optional[dict] = None,
              checkpoint: Optional[str] = None,
              strict: bool = True,
              backbone_only: bool = False,
              show_table: bool = False,
              depth: int = 2,
              trust: bool = False) -> Dict[str, Any]:
    """Params and FLOPs (MACs) of a config's model, split per image.

    The model is built by :func:`mmvheat.apis.build_model` (no pretrained
    weights unless ``checkpoint``); detectors and segmentors are counted on
    their ``mode='tensor'`` forward (backbone, neck and heads, no
    post-processing), like mmdet's and mmseg's own tools.

    Args:
        config (str): The config file.
        shape (tuple[int, int], optional): Input ``(H, W)``; defaults to
            :data:`DEFAULT_SHAPES` of the config's library.
        cfg_options (dict, optional): Merged into the config.
        checkpoint (str, optional): Weights to load (they do not change the
            counts, but a checkpoint that does not fit is an error).
        strict (bool): See :func:`mmvheat.apis.load_weights`.
        backbone_only (bool): Count the backbone alone.
        show_table (bool): Also return the per-module table.
        depth (int): Depth of that table.
        trust (bool): Unpickle objects other than tensors in the checkpoint.
            Defaults to False.

    Returns:
        dict: :func:`model_complexity`'s result with ``library``, ``shape``,
        ``config``, for models with a backbone ``backbone_params``, and for
        mmvheat backbones ``stages`` (:func:`stage_complexity`), else None.
    """
    from mmvheat.apis import TensorModeWrapper, build_model
    from mmvheat.models.backbones.base import BaseBackbone
    model = build_model(
        config, checkpoint, cfg_options, strict=strict, trust=trust)
    library = model.cfg.default_scope
    h, w = shape or DEFAULT_SHAPES[library]
    target = model.backbone if backbone_only else TensorModeWrapper(model)
    result = model_complexity(
        target,
        torch.randn(1, 3, h, w),
        show_table=show_table,
        max_depth=depth,
        split_batch=True)
    result.update(library=library, shape=(h, w), config=config, stages=None)
    if hasattr(model, 'backbone'):
        result['backbone_params'] = sum(p.numel()
                                        for p in model.backbone.parameters())
        if isinstance(model.backbone, BaseBackbone):
            result['stages'] = stage_complexity(
                target, result, prefix='' if backbone_only else 'model.')
    return result
