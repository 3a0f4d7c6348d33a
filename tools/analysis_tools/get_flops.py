# Copyright (c) mmvheat contributors. All rights reserved.
"""Params and FLOPs of the model of any config, with the HCO counted right.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H [W]]
        [--checkpoint FILE [--non-strict]] [--cfg-options k=v ...]
        [--table [--depth 2]] [--backbone-only]

FLOPs follow the fvcore/mmengine convention of the vHeat and Swin papers: one
multiply-add is one FLOP (i.e. MACs), element-wise ops are not counted; the
HCO's cosine-basis matmuls are counted exactly (see
:mod:`mmvheat.analysis.flops`). "per image" is the part that scales with the
batch; "shared" is computed once per forward whatever the batch (vHeat: the
``decay ** k`` filters from the frequency embeddings). The paper's numbers
are the per-image ones.
"""
import argparse

from mmvheat.analysis import format_count, get_flops
from mmvheat.apis import add_model_args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Params and FLOPs (MACs) of a config\'s model')
    add_model_args(parser, checkpoint_required=False)
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=None,
        help='input H [W]; default per scope: 224 (mmpretrain), 512 (mmseg), '
        '800x1344 (mmdet)')
    parser.add_argument(
        '--backbone-only', action='store_true', help='count the backbone')
    parser.add_argument(
        '--table', action='store_true', help='print the per-module table')
    parser.add_argument(
        '--depth', type=int, default=2, help='depth of the per-module table')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shape = (args.shape[0], args.shape[-1]) if args.shape else None
    res = get_flops(
        args.config,
        shape,
        args.cfg_options,
        checkpoint=args.checkpoint,
        strict=not args.non_strict,
        backbone_only=args.backbone_only,
        show_table=args.table,
        depth=args.depth)
    if res['table']:
        print(res['table'])
    line = '=' * 60
    print(line)
    print(f'Config:            {args.config} (scope {res["library"]})')
    print(f'Input shape:       1x3x{res["shape"][0]}x{res["shape"][1]}' +
          (' (backbone only)' if args.backbone_only else ''))
    print(f'FLOPs per image:   {format_count(res["flops_per_image"])} '
          '(MACs, fvcore/mmengine convention, like the paper)')
    print(f'FLOPs shared:      {format_count(res["flops_shared"])} '
          '(once per forward, batch-independent)')
    print(f'FLOPs at batch 1:  {format_count(res["flops"])}')
    print(f'Params:            {format_count(res["params"])}' +
          (f' (backbone {format_count(res["backbone_params"])})'
           if 'backbone_params' in res else ''))
    if res['unsupported_ops']:
        ops = ', '.join(sorted(res['unsupported_ops']))
        print(f'Not counted (element-wise by convention or unsupported): '
              f'{ops}')
    print(line)


if __name__ == '__main__':
    main()
