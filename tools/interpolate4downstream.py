# Copyright (c) mmvheat contributors. All rights reserved.
"""Enlarge the frequency value embeddings of a vHeat checkpoint for
downstream training at a larger resolution.

Each stage i owns a ``freq_embed`` of ``pt_size / 4 / 2**i`` squared cells.
Before detection or segmentation training at ``tg_size``, the published
vHeat recipe zero-pads it at the bottom/right by ``(tg_size - pt_size) /
2**(i + 2)`` (``--mode pad``, the default; the published tool is called
``interpolate4downstream.py`` although it does not interpolate).
``--mode bicubic`` resamples instead, with the same function the model uses
at run time (:func:`mmvheat.utils.resize_freq_embed`). The logic lives in
:mod:`mmvheat.converters.freq_embed`.

The input is a published checkpoint (``freq_embed.<i>`` keys under
``model``, ``model_ema`` with ``--ema``, ``state_dict`` or at the top) or
one in this project's layout (``backbone.stages.<i>.freq_embed`` under
``state_dict``, as written by ``tools/model_converters/vheat_to_mmvheat.py``).
The output is always in this project's layout, ready for a backbone
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``.
``vheat_to_mmvheat.py --tg-size`` converts and enlarges in one step.

Example::

    python tools/interpolate4downstream.py \\
        --pt_pth checkpoints/vheat-tiny_in1k.pth \\
        --tg_pth checkpoints/vheat-tiny_in1k-512.pth --tg_size 512
"""
import argparse
import os.path as osp
import sys
from collections.abc import Mapping

try:
    # Must come before any mmpretrain/mmdet/mmseg import: it allowlists
    # mmengine's globals for torch.load and makes torchvision importable.
    import mmvheat
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import mmvheat

from mmvheat.converters import CheckpointError  # noqa: E402
from mmvheat.converters import (MODES, check_sizes, enlarge_freq_embeds,
                                vheat_weights)
from mmvheat.utils.checkpoint_loading import load_checkpoint_file  # noqa: E402
from mmvheat.utils.io import UsageError  # noqa: E402
from mmvheat.utils.io import (ByteProgress, add_trust_option, check_outputs,
                              run_tool, save_checkpoint_atomic)


def interpolate(args):
    """Enlarge ``args.pt_pth``'s embeddings into ``args.tg_pth``; returns
    the summary lines."""
    try:
        check_sizes(args.pt_size, args.tg_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_outputs({'--tg_pth': args.tg_pth}, [args.pt_pth])
    with ByteProgress(f'reading {args.pt_pth}') as progress:
        checkpoint = load_checkpoint_file(
            args.pt_pth, trust=args.trust_checkpoint, progress=progress)
    state_dict, layout = vheat_weights(checkpoint, use_ema=args.ema)
    meta = checkpoint.get('meta')
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    changes = enlarge_freq_embeds(state_dict, args.pt_size, args.tg_size,
                                  args.mode)
    meta.update(
        mmvheat_version=mmvheat.__version__,
        img_size=args.tg_size,
        interpolate4downstream=dict(
            source=osp.basename(args.pt_pth),
            source_layout=layout,
            ema=bool(args.ema),
            mode=args.mode,
            pt_size=args.pt_size,
            tg_size=args.tg_size))
    save_checkpoint_atomic(
        dict(state_dict=state_dict, meta=meta),
        args.tg_pth,
        show_progress=True)
    lines = [
        f'Read {args.pt_pth} ({layout} layout'
        f'{", EMA weights" if args.ema else ""})'
    ]
    lines += [f'  {change}' for change in changes]
    lines.append(f'Saved {args.mode} {args.pt_size} -> {args.tg_size} to '
                 f'{args.tg_pth} (mmvheat layout)')
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Enlarge the freq_embed of every stage of a vHeat '
        'checkpoint from the pretraining size to a downstream size. Reads '
        'published checkpoints and mmvheat ones; always writes the mmvheat '
        'layout (published keys are converted as by tools/model_converters/'
        'vheat_to_mmvheat.py), loadable with init_cfg=dict(type='
        '"Pretrained", checkpoint=TG_PTH, prefix="backbone.").')
    parser.add_argument('--pt_pth', required=True, help='input checkpoint')
    parser.add_argument(
        '--tg_pth', required=True, help='output checkpoint (not PT_PTH)')
    parser.add_argument(
        '--pt_size',
        type=int,
        default=224,
        help='image size the input was trained at (default: 224)')
    parser.add_argument(
        '--tg_size',
        type=int,
        default=512,
        help='downstream image size (default: 512)')
    parser.add_argument(
        '--mode',
        choices=MODES,
        default='pad',
        help='pad: zero-pad bottom/right, the published recipe (default); '
        'bicubic: resample with mmvheat.utils.resize_freq_embed')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='use the "model_ema" weights of a published checkpoint')
    add_trust_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: interpolate(args), args.pt_pth,
                    (CheckpointError, ))


if __name__ == '__main__':
    sys.exit(main())
