# Copyright (c) mmvheat contributors. All rights reserved.
"""Params and FLOPs of the model of any config, with the HCO counted right.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H [W]]
        [--checkpoint FILE [--non-strict] [--trust-checkpoint]]
        [--cfg-options k=v ...] [--table [--depth 2]] [--backbone-only]

FLOPs follow the fvcore/mmengine convention of the vHeat and Swin papers: one
multiply-add is one FLOP (i.e. MACs), element-wise ops are not counted; the
HCO's cosine-basis matmuls are counted exactly (see
:mod:`mmvheat.analysis.flops`). "per image" is the part that scales with the
batch; "shared" is computed once per forward whatever the batch (vHeat: the
``decay ** k`` filters from the frequency embeddings). The paper's numbers
are the per-image ones. For VHeat and MPViT backbones a table splits them
per stage (stem, each stage's downsample and blocks, with the HCO's share,
the output norms) and per part of the model (neck, heads).
"""
import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from mmvheat.analysis import format_count, model_complexity
from mmvheat.apis import add_model_args
from mmvheat.utils.io import UsageError, positive_int, run_tool

#: Input size counted per library when none is given.
DEFAULT_SHAPES = {
    'mmpretrain': (224, 224),
    'mmseg': (512, 512),
    'mmdet': (800, 1344),
}


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Params and FLOPs (MACs) of a config\'s model')
    add_model_args(parser, checkpoint='option')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs='+',
        default=None,
        help='input H [W]; default per scope: 224 (mmpretrain), 512 (mmseg), '
        '800x1344 (mmdet)')
    parser.add_argument(
        '--backbone-only', action='store_true', help='count the backbone')
    parser.add_argument(
        '--table', action='store_true', help='print the per-module table')
    parser.add_argument(
        '--depth',
        type=positive_int,
        default=2,
        help='depth of the per-module table')
    return parser.parse_args(argv)


def stage_table(rows):
    """The per-stage rows of :func:`get_flops` as lines."""
    header = ('part', 'params', 'FLOPs/image', 'shared', 'of which HCO')
    cells = [header] + [(row['name'], format_count(
        row['params']), format_count(
            row['per_image']), format_count(row['shared']),
                         format_count(row['hco']) if row['hco'] else '-')
                        for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(5)]
    return [
        '  '.join(
            [line[0].ljust(widths[0])] +
            [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])])
        for line in cells
    ]


def count(args):
    """Count as ``args`` say; returns the lines to print."""
    if args.shape is not None and len(args.shape) > 2:
        raise UsageError(f'--shape takes H [W], got {len(args.shape)} '
                         'values')
    shape = (args.shape[0], args.shape[-1]) if args.shape else None
    res = get_flops(
        args.config,
        shape,
        args.cfg_options,
        checkpoint=args.checkpoint,
        strict=not args.non_strict,
        backbone_only=args.backbone_only,
        show_table=args.table,
        depth=args.depth,
        trust=args.trust_checkpoint)
    lines = [res['table']] if res['table'] else []
    line = '=' * 60
    lines += [
        line, f'Config:            {args.config} (scope {res["library"]})',
        f'Input shape:       1x3x{res["shape"][0]}x{res["shape"][1]}' +
        (' (backbone only)' if args.backbone_only else ''),
        f'FLOPs per image:   {format_count(res["flops_per_image"])} '
        '(MACs, fvcore/mmengine convention, like the paper)',
        f'FLOPs shared:      {format_count(res["flops_shared"])} '
        '(once per forward, batch-independent)',
        f'FLOPs at batch 1:  {format_count(res["flops"])}',
        f'Params:            {format_count(res["params"])}' +
        (f' (backbone {format_count(res["backbone_params"])})'
         if 'backbone_params' in res else '')
    ]
    if res['unsupported_ops']:
        ops = ', '.join(sorted(res['unsupported_ops']))
        lines.append('Not counted (element-wise by convention or '
                     f'unsupported): {ops}')
    lines.append(line)
    if res['stages']:
        lines += [
            'Per stage (a stage without its downsample; shared: the '
            'decay ** k prediction):'
        ] + stage_table(res['stages'])
        lines.append(line)
    return lines


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: count(args))


if __name__ == '__main__':
    sys.exit(main())
