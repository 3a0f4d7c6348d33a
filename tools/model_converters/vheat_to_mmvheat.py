# Copyright (c) mmvheat contributors. All rights reserved.
"""Convert a published vHeat checkpoint to the mmvheat layout.

Classification checkpoints (``model`` / ``model_ema``) become the weights of
an mmpretrain ``ImageClassifier`` (``backbone.*`` + ``head.fc.*``); published
detection/segmentation checkpoints keep their neck and head keys, with the
``backbone.outnorm{i}`` output norms renamed to ``backbone.norm{i}``.

Example::

    python tools/model_converters/vheat_to_mmvheat.py \\
        vHeat_tiny.pth checkpoints/vheat-tiny_in1k_mmvheat.pth [--ema]
"""
import argparse
import os.path as osp
import re
import sys
from collections.abc import Mapping

try:
    # Must come before any mmpretrain/mmdet/mmseg import: it allowlists
    # mmengine's globals for torch.load and makes torchvision importable.
    import mmvheat
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
        osp.abspath(__file__)))))
    import mmvheat

import torch  # noqa: E402

from mmvheat.models.backbones.vheat import VHeat  # noqa: E402
from mmvheat.utils.io import (first_line, run_checkpoint_tool,  # noqa: E402
                              save_checkpoint_atomic)
from mmvheat.utils.convert_vheat import (NotAVHeatCheckpoint,  # noqa: E402
                                      convert_published_vheat,
                                      extract_state_dict)

_CONVERTED_KEY = re.compile(r'^(backbone\.)?stages\.\d+\.freq_embed$')
_STAGE_KEY = re.compile(
    r'^backbone\.stages\.(\d+)\.(?:freq_embed$|blocks\.(\d+)\.(.+)$)')


def infer_arch(state_dict):
    """Guess the VHeat settings of converted weights; None if incomplete.

    ``post_norm`` cannot be read from weights: the published models use it
    exactly when they have LayerScale (small, base), so it follows the
    presence of ``gamma1``; ``layer_scale`` is the published initial value.
    """
    depths, dims, embed_size, hidden = {}, {}, None, None
    has_gamma = False
    for key, value in state_dict.items():
        match = _STAGE_KEY.match(key)
        if not match:
            continue
        stage = int(match[1])
        if match[2] is None:  # freq_embed: (H, W, C)
            dims[stage] = int(value.shape[-1])
            if stage == 0:
                embed_size = int(value.shape[0])
            continue
        depths[stage] = max(depths.get(stage, 0), int(match[2]) + 1)
        has_gamma |= match[3] == 'gamma1'
        if stage == 0 and match[3] == 'mlp.fc1.weight':
            hidden = int(value.shape[0])
    num_stages = VHeat.num_stages
    if sorted(depths) != list(range(num_stages)) or \
            sorted(dims) != list(range(num_stages)):
        return None
    dims = [dims[i] for i in range(num_stages)]
    arch = dict(
        depths=[depths[i] for i in range(num_stages)],
        dims=dims[0] if dims == [dims[0] * 2**i
                                 for i in range(num_stages)] else dims,
        post_norm=has_gamma,
        layer_scale=1e-5 if has_gamma else None,
        mlp_ratio=hidden / dims[0] if hidden else 4.)
    info = dict(arch=arch)
    for name, settings in VHeat.arch_zoo.items():
        if len(name) > 1 and settings == arch:
            info['arch_name'] = name
    if embed_size:
        info['img_size'] = embed_size * 4
    fc = state_dict.get('head.fc.weight')
    if fc is not None:
        info['num_classes'] = int(fc.shape[0])
    norms = sorted(
        int(m[1]) for m in (re.match(r'^backbone\.norm(\d+)\.weight$', k)
                            for k in state_dict) if m)
    if norms:
        info['out_indices'] = norms
    return info



def convert(src, dst, use_ema=False):
    """Convert ``src`` to ``dst``; returns the summary lines."""
    try:
        checkpoint = torch.load(src, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise NotAVHeatCheckpoint('no such file')
    except Exception as exc:
        raise NotAVHeatCheckpoint(
            'cannot be read as a PyTorch checkpoint '
            f'({type(exc).__name__}: {first_line(exc)})')
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in state_dict.items()):
        raise NotAVHeatCheckpoint('no state dict of tensors found')
    if any(_CONVERTED_KEY.match(k) for k in state_dict):
        raise NotAVHeatCheckpoint(
            'already in the mmvheat layout, nothing to convert')
    converted = convert_published_vheat(state_dict)
    info = infer_arch(converted)
    meta = dict(
        source=osp.basename(src),
        mmvheat_version=mmvheat.__version__,
        ema=bool(use_ema),
        layout='dense' if any(k.startswith('backbone.')
                              for k in state_dict) else 'classification')
    if info is not None:
        meta.update(info)
    save_checkpoint_atomic(dict(state_dict=converted, meta=meta), dst)

    lines = [
        f'Converted {len(converted)} of {len(state_dict)} keys '
        f'({meta["layout"]}{", EMA weights" if use_ema else ""}) '
        f'from {src}', f'Saved to {dst}'
    ]
    if info is None:
        lines.append('Arch: could not be inferred')
    else:
        name = info.get('arch_name')
        lines.append(f'Arch: {name or "custom"} {info["arch"]}')
        lines.append(
            '  img_size: {}  num_classes: {}  output norms: {}'.format(
                info.get('img_size'), info.get('num_classes', '-'),
                info.get('out_indices', '-')))
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a published vHeat checkpoint (classification '
        'or detection/segmentation) to the mmvheat layout.')
    parser.add_argument('src', help='published checkpoint')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='convert the "model_ema" weights instead of "model"')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return run_checkpoint_tool(
        lambda: convert(args.src, args.dst, use_ema=args.ema), args.src,
        (NotAVHeatCheckpoint, ))


if __name__ == '__main__':
    sys.exit(main())
