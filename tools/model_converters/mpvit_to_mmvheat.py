# Copyright (c) mmvheat contributors. All rights reserved.
"""Convert a published MPViT checkpoint to the mmvheat layout.

ImageNet checkpoints (weights under ``model``) become the weights of an
mmpretrain ``ImageClassifier`` (``backbone.*`` + ``head.fc.*``); a dense
checkpoint with ``backbone.*`` keys keeps its neck and head keys. The copies
of the shared position encodings are merged (they must agree). mmdet and
mmseg load the result with
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``.

Example::

    python tools/model_converters/mpvit_to_mmvheat.py \\
        mpvit_small.pth checkpoints/mpvit-small_in1k_mmvheat.pth
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
from mmvheat.converters import (convert_mpvit_checkpoint, describe_arch,
                                infer_mpvit_arch)
from mmvheat.utils.checkpoint_loading import load_checkpoint_file  # noqa: E402
from mmvheat.utils.io import add_trust_option  # noqa: E402
from mmvheat.utils.io import (ByteProgress, check_outputs, run_tool,
                              save_checkpoint_atomic)


def convert(args):
    """Convert ``args.src`` to ``args.dst``; returns the summary lines."""
    check_outputs({'DST': args.dst}, [args.src])
    with ByteProgress(f'reading {args.src}') as progress:
        checkpoint = load_checkpoint_file(
            args.src, trust=args.trust_checkpoint, progress=progress)
    state_dict, layout, total = convert_mpvit_checkpoint(checkpoint)
    info = infer_mpvit_arch(state_dict)
    meta = dict(
        source=osp.basename(args.src),
        mmvheat_version=mmvheat.__version__,
        layout=layout,
        **(info or {}))
    save_checkpoint_atomic(
        dict(state_dict=state_dict, meta=meta), args.dst, show_progress=True)
    lines = [
        f'Converted {total} keys into {len(state_dict)} '
        f'({total - len(state_dict)} copies of shared position encodings '
        f'merged; {layout}) from {args.src}', f'Saved to {args.dst}'
    ]
    lines.append(describe_arch(info))
    if info is not None:
        lines.append(f'  num_classes: {info.get("num_classes", "-")}')
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a published MPViT checkpoint to the mmvheat '
        'layout (mmpretrain ImageClassifier: backbone.* + head.fc.*).')
    parser.add_argument('src', help='published checkpoint')
    parser.add_argument('dst', help='output checkpoint (not SRC)')
    add_trust_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: convert(args), args.src, (CheckpointError, ))


if __name__ == '__main__':
    sys.exit(main())
