# Copyright (c) mmvheat contributors. All rights reserved.
"""List what a training step keeps for backward, block by block
(:func:`mmvheat.analysis.saved_tensors.record_saved`): one storage a line,
with the ``grad_fn`` keeping it; parameters left out.

    python tools/analysis_tools/saved_tensors.py --model vheat-t --size 1024
    python tools/analysis_tools/saved_tensors.py --model swin-t --size 1024
"""
import argparse

import torch

import mmvheat  # noqa: F401 (first: it prepares torchvision for mmpretrain)
from mmvheat.analysis.saved_tensors import per_module, record_saved


def build(name: str) -> tuple:
    """The backbone (all four stages out) and its block class."""
    if name == 'swin-t':
        from mmpretrain.models import SwinTransformer
        from mmpretrain.models.backbones.swin_transformer import SwinBlock
        model = SwinTransformer(
            arch='tiny', pad_small_map=True, out_indices=(0, 1, 2, 3))
        return model, SwinBlock
    from mmvheat.models.backbones import VHeat
    from mmvheat.models.layers import HeatBlock
    arch = {'vheat-t': 'tiny', 'vheat-s': 'small', 'vheat-b': 'base'}[name]
    return VHeat(arch=arch, out_indices=(0, 1, 2, 3)), HeatBlock


def parse_args(args=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--model',
        default='vheat-t',
        choices=['vheat-t', 'vheat-s', 'vheat-b', 'swin-t'])
    parser.add_argument('--size', type=int, default=1024)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument(
        '--module',
        help='the block to list entry by entry, or - for what is outside '
        'the blocks (defaults to the first block)')
    return parser.parse_args(args)


def main():
    args = parse_args()
    model, block_type = build(args.model)
    x = torch.randn(args.batch, 3, args.size, args.size)
    # Not record_saved(model.train(), ...): mmpretrain's Swin returns None.
    model.train()
    saved = record_saved(
        model, x, exclude=model.parameters(), block_types=block_type)
    totals = per_module(saved)
    block = args.module or next((m for m in totals if m != '-'), '-')
    print(f'{args.model} at {args.size}, batch {args.batch}: {block}\n')
    print('| kept by | shape | dtype | MiB |\n| --- | --- | --- | ---: |')
    for entry in saved:
        if entry.module == block:
            print(f'| {entry.op} | {list(entry.shape)} | '
                  f'{str(entry.dtype)[6:]} | {entry.nbytes / 2**20:.2f} |')
    print(f'| total | | | {totals[block] / 2**20:.1f} |\n')
    print('| module | MiB |\n| --- | ---: |')
    for module, nbytes in totals.items():
        print(f'| {module} | {nbytes / 2**20:.1f} |')
    print(f'| all | {sum(totals.values()) / 2**20:.1f} |')


if __name__ == '__main__':
    main()
