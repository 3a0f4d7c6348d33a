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

from mmvheat.models.backbones.mpvit import (MPViT,  # noqa: E402
                                            crpe_head_groups)
from mmvheat.utils.convert_mpvit import (NotAnMPViTCheckpoint,  # noqa: E402
                                         convert_published_mpvit,
                                         extract_state_dict)
from mmvheat.utils.convert_vheat import NotAVHeatCheckpoint  # noqa: E402
from mmvheat.utils.io import (first_line, run_checkpoint_tool,  # noqa: E402
                              save_checkpoint_atomic)

_CONVERTED_KEY = re.compile(r'^(backbone\.)?stages\.\d+\.(encoders|'
                            r'patch_embed|local_block|aggregate)\.')
_ENCODER_KEY = re.compile(
    r'^backbone\.stages\.(\d+)\.encoders\.(\d+)\.(.+)$')


def _num_heads(dim, crpe_channels):
    """The head count whose window groups give these crpe channels."""
    for heads in range(1, dim + 1):
        if dim % heads:
            continue
        channels = [h * (dim // heads) for _, h in crpe_head_groups(heads)]
        if channels == crpe_channels:
            return heads
    return None


def infer_arch(state_dict):
    """Guess the MPViT settings of converted weights; None if incomplete."""
    num_stages = MPViT.num_stages
    dims, paths, layers, hidden, crpe = {}, {}, {}, {}, {}
    for key, value in state_dict.items():
        match = re.match(
            r'^backbone\.stages\.(\d+)\.patch_embed\.convs\.0\.pointwise'
            r'\.weight$', key)
        if match:
            dims[int(match[1])] = int(value.shape[0])
            continue
        match = _ENCODER_KEY.match(key)
        if not match:
            continue
        stage, path, rest = int(match[1]), int(match[2]), match[3]
        paths[stage] = max(paths.get(stage, 0), path + 1)
        if path != 0:
            continue
        block = re.match(r'^blocks\.(\d+)\.(.+)$', rest)
        if block:
            layers[stage] = max(layers.get(stage, 0), int(block[1]) + 1)
            if block[2] == 'mlp.fc1.weight':
                hidden[stage] = int(value.shape[0])
        conv = re.match(r'^crpe\.convs\.(\d+)\.bias$', rest)
        if conv:
            crpe.setdefault(stage, {})[int(conv[1])] = int(value.shape[0])
    stages = list(range(num_stages))
    if any(
            sorted(d) != stages
            for d in (dims, paths, layers, hidden, crpe)):
        return None
    embed_dims = [dims[i] for i in stages]
    ratios = [hidden[i] / embed_dims[i] for i in stages]
    heads = [
        _num_heads(embed_dims[i], [crpe[i][k] for k in sorted(crpe[i])])
        for i in stages
    ]
    if None in heads:
        return None
    arch = dict(
        num_path=[paths[i] for i in stages],
        num_layers=[layers[i] for i in stages],
        embed_dims=embed_dims,
        mlp_ratios=[int(r) if r == int(r) else r for r in ratios],
        num_heads=heads)
    info = dict(arch=arch)
    for name, settings in MPViT.arch_zoo.items():
        if len(name) > 2 and settings == arch:
            info['arch_name'] = name
    fc = state_dict.get('head.fc.weight')
    if fc is not None:
        info['num_classes'] = int(fc.shape[0])
    return info



def convert(src, dst):
    """Convert ``src`` to ``dst``; returns the summary lines."""
    try:
        checkpoint = torch.load(src, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise NotAnMPViTCheckpoint('no such file')
    except Exception as exc:
        raise NotAnMPViTCheckpoint(
            'cannot be read as a PyTorch checkpoint '
            f'({type(exc).__name__}: {first_line(exc)})')
    try:
        state_dict = extract_state_dict(checkpoint)
    except NotAVHeatCheckpoint as exc:  # its messages name no model
        raise NotAnMPViTCheckpoint(str(exc))
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in state_dict.items()):
        raise NotAnMPViTCheckpoint('no state dict of tensors found')
    if any(_CONVERTED_KEY.match(k) for k in state_dict):
        raise NotAnMPViTCheckpoint(
            'already in the mmvheat layout, nothing to convert')
    converted = convert_published_mpvit(state_dict)
    info = infer_arch(converted)
    meta = dict(
        source=osp.basename(src),
        mmvheat_version=mmvheat.__version__,
        layout='dense' if any(k.startswith('backbone.')
                              for k in state_dict) else 'classification')
    if info is not None:
        meta.update(info)
    save_checkpoint_atomic(dict(state_dict=converted, meta=meta), dst)

    merged = len(state_dict) - len(converted)
    lines = [
        f'Converted {len(state_dict)} keys into {len(converted)} '
        f'({merged} copies of shared position encodings merged; '
        f'{meta["layout"]}) from {src}', f'Saved to {dst}'
    ]
    if info is None:
        lines.append('Arch: could not be inferred')
    else:
        name = info.get('arch_name')
        lines.append(f'Arch: {name or "custom"} {info["arch"]}')
        lines.append(f'  num_classes: {info.get("num_classes", "-")}')
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a published MPViT checkpoint to the mmvheat '
        'layout (mmpretrain ImageClassifier: backbone.* + head.fc.*).')
    parser.add_argument('src', help='published checkpoint')
    parser.add_argument('dst', help='output checkpoint')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return run_checkpoint_tool(
        lambda: convert(args.src, args.dst), args.src,
        (NotAnMPViTCheckpoint, ))


if __name__ == '__main__':
    sys.exit(main())
