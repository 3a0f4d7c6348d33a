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

from mmvheat.analysis import format_count, get_flops
from mmvheat.apis import add_model_args
from mmvheat.utils.io import UsageError, positive_int, run_tool


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
    """The per-stage rows of :func:`mmvheat.analysis.get_flops` as lines."""
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
