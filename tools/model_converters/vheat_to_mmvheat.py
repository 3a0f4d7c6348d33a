# Copyright (c) mmvheat contributors. All rights reserved.
"""Convert a published vHeat checkpoint to the mmvheat layout.

Classification checkpoints (``model`` / ``model_ema``) become the weights of
an mmpretrain ``ImageClassifier`` (``backbone.*`` + ``head.fc.*``); published
detection/segmentation checkpoints keep their neck and head keys, with the
``backbone.outnorm{i}`` output norms renamed to ``backbone.norm{i}``, and
load strictly into the matching config. ``--tg-size`` also enlarges the
frequency embeddings for a downstream config in the same step (what
``tools/interpolate4downstream.py`` does to a converted file).

Examples::

    python tools/model_converters/vheat_to_mmvheat.py \\
        vHeat_tiny.pth checkpoints/vheat-tiny_in1k.pth [--ema]
    python tools/model_converters/vheat_to_mmvheat.py \\
        vHeat_tiny.pth checkpoints/vheat-tiny_in1k-512.pth --tg-size 512
    python tools/model_converters/vheat_to_mmvheat.py \\
        vHeat_tiny_det.pth checkpoints/mask-rcnn_vheat-t_fpn_1x_coco.pth
"""
import argparse
import os.path as osp
import sys

try:
    # Must come before any mmpretrain/mmdet/mmseg import: it allowlists
    # mmengine's globals for torch.load and makes torchvision importable.
    import mmvheat
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(
        0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    import mmvheat

from mmvheat.converters import CheckpointError  # noqa: E402
from mmvheat.converters import (MODES, check_size, check_sizes,
                                convert_vheat_checkpoint, describe_arch,
                                enlarge_freq_embeds, infer_vheat_arch)
from mmvheat.utils.checkpoint_loading import load_checkpoint_file  # noqa: E402
from mmvheat.utils.io import UsageError  # noqa: E402
from mmvheat.utils.io import (ByteProgress, add_trust_option, check_outputs,
                              run_tool, save_checkpoint_atomic)


def convert(args):
    """Convert ``args.src`` to ``args.dst``; returns the summary lines."""
    check_outputs({'DST': args.dst}, [args.src])
    if args.tg_size is not None:
        try:
            check_size('--tg-size', args.tg_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    with ByteProgress(f'reading {args.src}') as progress:
        checkpoint = load_checkpoint_file(
            args.src, trust=args.trust_checkpoint, progress=progress)
    state_dict, layout, _ = convert_vheat_checkpoint(checkpoint, args.ema)
    info = infer_vheat_arch(state_dict)
    meta = dict(
        source=osp.basename(args.src),
        mmvheat_version=mmvheat.__version__,
        ema=bool(args.ema),
        layout=layout,
        **(info or {}))
    lines = [
        f'Converted {len(state_dict)} keys ({layout}'
        f'{", EMA weights" if args.ema else ""}) from {args.src}'
    ]
    if args.tg_size is not None:
        if info is None:
            raise CheckpointError('incomplete vHeat weights: the size its '
                                  'embeddings were made for is unknown')
        names = ("the checkpoint's img_size", '--tg-size')
        try:
            check_sizes(info['img_size'], args.tg_size, names)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        changes = enlarge_freq_embeds(state_dict, info['img_size'],
                                      args.tg_size, args.mode, names)
        meta.update(
            img_size=args.tg_size,
            enlarged=dict(
                mode=args.mode, pt_size=info['img_size'],
                tg_size=args.tg_size))
        lines.append(f'Enlarged ({args.mode}) from {info["img_size"]} to '
                     f'{args.tg_size}:')
        lines += [f'  {change}' for change in changes]
    save_checkpoint_atomic(
        dict(state_dict=state_dict, meta=meta), args.dst, show_progress=True)
    lines.append(f'Saved to {args.dst}')
    lines.append(describe_arch(info))
    if info is not None:
        lines.append(
            '  img_size: {}  num_classes: {}  output norms: {}'.format(
                meta['img_size'], meta.get('num_classes', '-'),
                meta.get('out_indices', '-')))
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a published vHeat checkpoint (classification '
        'or detection/segmentation) to the mmvheat layout, optionally '
        'enlarging its frequency embeddings for a downstream size.')
    parser.add_argument('src', help='published checkpoint')
    parser.add_argument('dst', help='output checkpoint (not SRC)')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='convert the "model_ema" weights instead of "model"')
    parser.add_argument(
        '--tg-size',
        type=int,
        help='also enlarge the frequency embeddings from the size the '
        'checkpoint was made for (224 for the published ImageNet models) to '
        'this downstream size, e.g. 512 for the detection and segmentation '
        'configs')
    parser.add_argument(
        '--mode',
        choices=MODES,
        default='pad',
        help='with --tg-size: pad zero-pads bottom/right, the published '
        'recipe (default); bicubic resamples as the model does at run time')
    add_trust_option(parser)
    args = parser.parse_args(argv)
    if args.mode != 'pad' and args.tg_size is None:
        parser.error('--mode needs --tg-size')
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: convert(args), args.src, (CheckpointError, ))


if __name__ == '__main__':
    sys.exit(main())
