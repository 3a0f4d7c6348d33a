# Copyright (c) mmvheat contributors. All rights reserved.
"""Enlarge the frequency value embeddings of a vHeat checkpoint for
downstream training at a larger resolution.

Each stage i owns a ``freq_embed`` of ``pt_size / 4 / 2**i`` squared cells.
Before detection or segmentation training at ``tg_size``, the published
vHeat recipe zero-pads it at the bottom/right by ``(tg_size - pt_size) /
2**(i + 2)`` (``--mode pad``, the default; the published tool is called
``interpolate4downstream.py`` although it does not interpolate).
``--mode bicubic`` resamples instead, with the same function the model uses
at run time (:func:`mmvheat.utils.resize_freq_embed`).

The input is a published checkpoint (``freq_embed.<i>`` keys under
``model``, ``model_ema`` with ``--ema``, ``state_dict`` or at the top) or
one in this project's layout (``backbone.stages.<i>.freq_embed`` under
``state_dict``, as written by ``tools/model_converters/vheat_to_mmvheat.py``).
The output is always in this project's layout, ready for a backbone
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``.

Example::

    python tools/interpolate4downstream.py \\
        --pt_pth checkpoints/vheat-tiny_in1k.pth \\
        --tg_pth checkpoints/vheat-tiny_in1k-512.pth --tg_size 512
"""
import argparse
import os.path as osp
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping

try:
    # Must come before any mmpretrain/mmdet/mmseg import: it allowlists
    # mmengine's globals for torch.load and makes torchvision importable.
    import mmvheat
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import mmvheat

import torch  # noqa: E402

from mmvheat.utils import (pad_freq_embed, resize_freq_embed,  # noqa: E402
                           save_checkpoint_atomic)
from mmvheat.utils.io import run_checkpoint_tool  # noqa: E402
from mmvheat.utils.convert_vheat import (  # noqa: E402
    NotAVHeatCheckpoint, convert_published_vheat, extract_state_dict,
    is_published_vheat_state_dict)

NUM_STAGES = 4
#: Output stride of the last stage: sizes must be multiples of it.
SIZE_MULTIPLE = 4 * 2**(NUM_STAGES - 1)
MODES = ('pad', 'bicubic')
_FREQ_EMBED_KEY = 'backbone.stages.{}.freq_embed'
_BARE_FREQ_EMBED = re.compile(r'^stages\.\d+\.freq_embed$')



def grid_size(img_size, stage):
    """Side of stage ``stage``'s frequency embedding at ``img_size``."""
    return img_size // 4 // 2**stage


def check_sizes(pt_size, tg_size):
    """Raise ValueError unless the sizes make a valid enlargement."""
    for name, size in (('--pt_size', pt_size), ('--tg_size', tg_size)):
        if size <= 0 or size % SIZE_MULTIPLE:
            raise ValueError(f'{name} must be a positive multiple of '
                             f'{SIZE_MULTIPLE}, got {size}')
    if tg_size < pt_size:
        raise ValueError(f'--tg_size ({tg_size}) must not be smaller than '
                         f'--pt_size ({pt_size}): this tool only enlarges')


def read_weights(src, use_ema=False):
    """``(state_dict, meta, source layout)`` of ``src``, mmvheat layout."""
    try:
        checkpoint = torch.load(src, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise NotAVHeatCheckpoint('no such file')
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise NotAVHeatCheckpoint(
            'cannot be read as a PyTorch checkpoint '
            f'({type(exc).__name__}: {lines[0] if lines else ""})')
    if use_ema and isinstance(checkpoint, Mapping) and \
            'model_ema' not in checkpoint and 'ema_state_dict' in checkpoint:
        raise NotAVHeatCheckpoint(
            'no "model_ema" entry; mmengine checkpoints saved with EMAHook '
            'already hold the EMA weights under "state_dict": drop --ema')
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    if not isinstance(state_dict, Mapping) or not state_dict or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in state_dict.items()):
        raise NotAVHeatCheckpoint('no state dict of tensors found')
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    meta = dict(meta) if isinstance(meta, Mapping) else {}

    if is_published_vheat_state_dict(state_dict):
        return convert_published_vheat(state_dict), meta, 'published'
    if not any(k.startswith('backbone.') for k in state_dict) and any(
            _BARE_FREQ_EMBED.match(k) for k in state_dict):
        # A bare VHeat state dict, e.g. torch.save(backbone.state_dict()).
        state_dict = OrderedDict(
            (f'backbone.{k}', v) for k, v in state_dict.items())
    missing = [
        _FREQ_EMBED_KEY.format(i) for i in range(NUM_STAGES)
        if _FREQ_EMBED_KEY.format(i) not in state_dict
    ]
    if len(missing) == NUM_STAGES:
        raise NotAVHeatCheckpoint(
            'not a vHeat checkpoint: found neither published '
            '"freq_embed.<i>" keys nor mmvheat '
            '"backbone.stages.<i>.freq_embed" keys')
    if missing:
        raise NotAVHeatCheckpoint(f'incomplete vHeat checkpoint: {missing} '
                                  'missing')
    return OrderedDict(state_dict), meta, 'mmvheat'


def enlarge_freq_embeds(state_dict, pt_size, tg_size, mode='pad'):
    """Enlarge every stage's ``freq_embed`` in place; returns the changes."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    check_sizes(pt_size, tg_size)
    embeds = [state_dict[_FREQ_EMBED_KEY.format(i)] for i in range(NUM_STAGES)]
    for i, embed in enumerate(embeds):
        expected = grid_size(pt_size, i)
        if embed.dim() != 3:
            raise NotAVHeatCheckpoint(
                f'{_FREQ_EMBED_KEY.format(i)} has shape '
                f'{tuple(embed.shape)}, expected (H, W, C)')
        if tuple(embed.shape[:2]) != (expected, expected):
            h, w = embed.shape[:2]
            hint = ''
            if h == w:
                hint = (f'; the checkpoint was made for size '
                        f'{h * 4 * 2**i}: pass --pt_size {h * 4 * 2**i}')
            raise NotAVHeatCheckpoint(
                f'{_FREQ_EMBED_KEY.format(i)} is {h} x {w}, expected '
                f'{expected} x {expected} for --pt_size {pt_size}{hint}')
    changes = []
    for i, embed in enumerate(embeds):
        size = (grid_size(tg_size, i), ) * 2
        if mode == 'pad':
            new = pad_freq_embed(embed, size)
        else:
            new = resize_freq_embed(embed, size)
        state_dict[_FREQ_EMBED_KEY.format(i)] = new.contiguous()
        changes.append((i, tuple(embed.shape[:2]), size))
    return changes


def interpolate(src, dst, pt_size=224, tg_size=512, mode='pad', use_ema=False):
    """Enlarge ``src``'s embeddings, write ``dst``; return summary lines."""
    check_sizes(pt_size, tg_size)
    state_dict, meta, layout = read_weights(src, use_ema=use_ema)
    changes = enlarge_freq_embeds(state_dict, pt_size, tg_size, mode)
    meta.update(
        mmvheat_version=mmvheat.__version__,
        img_size=tg_size,
        interpolate4downstream=dict(
            source=osp.basename(src),
            source_layout=layout,
            ema=bool(use_ema),
            mode=mode,
            pt_size=pt_size,
            tg_size=tg_size))
    save_checkpoint_atomic(dict(state_dict=state_dict, meta=meta), dst)
    lines = [
        f'Read {src} ({layout} layout'
        f'{", EMA weights" if use_ema else ""})'
    ]
    lines += [
        f'  stage {i}: freq_embed {old[0]} x {old[1]} -> {new[0]} x {new[1]}'
        for i, old, new in changes
    ]
    lines.append(f'Saved {mode} {pt_size} -> {tg_size} to {dst} '
                 '(mmvheat layout)')
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
    parser.add_argument('--tg_pth', required=True, help='output checkpoint')
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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_sizes(args.pt_size, args.tg_size)
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return run_checkpoint_tool(
        lambda: interpolate(args.pt_pth, args.tg_pth, args.pt_size,
                            args.tg_size, args.mode, args.ema), args.pt_pth,
        (NotAVHeatCheckpoint, ))


if __name__ == '__main__':
    sys.exit(main())
