# Copyright (c) mmvheat contributors. All rights reserved.
"""Visualise how heat spreads in a vHeat backbone, its learned ``k`` and ERF.

Writes three PNG figures to ``--out-dir``:

* ``impulse_response.png``: the response of each stage's heat operator to a
  unit of heat at ``--source-pixel Y X`` (default the centre), mean over
  channels;
* ``frequency_k.png``: the learned ``k`` of each stage's first block on its
  frequency grid at ``--size``, log colour scale;
* ``erf.png``: the effective receptive field of the backbone's last output,
  averaged over ``--img`` and random crops/flips of it (noise images without
  ``--img``); with ``--compare-config`` (e.g. a Swin or MPViT config) the
  second model's ERF is drawn beside vHeat's.

What is computed:

* :func:`impulse_responses`: for each stage, a unit of heat put at a source
  pixel (in input pixels, scaled to the stage's grid) in every channel and
  filtered by the stage's heat conduction operator with its learned ``k``
  (``IDCT2D(DCT2D(u) * decay**k)``), averaged over the stage's blocks: the
  paper's temperature-distribution figure. The operator conserves heat, so
  every channel of every map sums to 1.
* :func:`frequency_k`: the learned exponent ``k = ReLU(to_k(freq_embed))``
  of each stage's first block on the stage's frequency grid, mean over
  channels; low frequencies at the top left.
* :func:`effective_receptive_field`: the effective receptive field (Luo et
  al., NeurIPS 2016, as measured for large-kernel backbones by Ding et al.,
  RepLKNet, CVPR 2022) of a backbone's last output: ``|d relu(f[:, :, h/2,
  w/2]).sum() / d input|`` summed over colour channels, averaged over
  images, divided by its maximum. ``f`` is the last output *before* the
  backbone's output norm (``norm{i}``): the channel sum of a LayerNorm
  output is constant, so its gradient would vanish.

Example::

    python tools/analysis_tools/visualize_heat.py \\
        configs/vheat/vheat-tiny_16xb128_in1k.py work_dirs/vheat_t.pth \\
        --img demo/demo.jpg --out-dir work_dirs/heat_vis \\
        --compare-config configs/swin/swin-tiny.py \\
        --compare-checkpoint swin_t.pth

``CHECKPOINT`` may be ``none`` (random initialisation). A checkpoint that
does not fit the model is an error unless ``--non-strict``; one holding
objects other than tensors loads with ``--trust-checkpoint``. A bad input
ends it with one line and exit status 1 (2 for bad options).
"""
import argparse
import contextlib
import os.path as osp
import re
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mmvheat.apis import add_model_args, build_model, checkpoint_arg
from mmvheat.models.layers import resize_freq_embed
from mmvheat.ops import spectral_filter
from mmvheat.utils.io import (ToolError, UsageError, ensure_directory,
                              positive_int, run_tool)

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _stage_grids(backbone, size: Sequence[int]) -> List[Tuple[int, int]]:
    """Grid (H, W) each stage's blocks see for an input of ``size``."""
    grids = []
    hooks = [
        stage.register_forward_hook(
            lambda m, i, o: grids.append(tuple(o.shape[1:3])))
        for stage in backbone.stages
    ]
    param = next(backbone.parameters())
    try:
        with torch.no_grad():
            backbone(
                torch.zeros(
                    1, 3, *size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return grids


def scaled_source(source: Sequence[int], size: Sequence[int],
                  grid: Sequence[int]) -> Tuple[int, int]:
    """An input pixel ``source`` of a ``size`` input on a stage's grid."""
    y, x = source
    gy = min(grid[0] - 1, max(0, int(y * grid[0] / size[0])))
    gx = min(grid[1] - 1, max(0, int(x * grid[1] / size[1])))
    return gy, gx


@torch.no_grad()
def impulse_responses(backbone,
                      size: Sequence[int],
                      source: Optional[Sequence[int]] = None,
                      block: Optional[int] = None) -> List[torch.Tensor]:
    """Per-stage response of the heat operator to a unit impulse.

    Args:
        backbone (VHeat): The backbone.
        size (tuple): Input size (H, W) in pixels.
        source (tuple, optional): Source (Y, X) in input pixels; default the
            centre. Scaled to each stage's grid.
        block (int, optional): Use this block's filter; default the mean of
            the responses of all the stage's blocks.

    Returns:
        list[Tensor]: One ``(h, w, C)`` float map per stage; each channel
        sums to 1 (heat is conserved).
    """
    size = tuple(int(s) for s in size)
    if source is None:
        source = (size[0] // 2, size[1] // 2)
    maps = []
    for stage, grid in zip(backbone.stages, _stage_grids(backbone, size)):
        transfers = stage.heat_transfers(grid)
        if block is not None:
            transfers = transfers[block:block + 1]
        c = transfers[0].shape[-1]
        gy, gx = scaled_source(source, size, grid)
        impulse = torch.zeros(
            1, *grid, c, device=transfers[0].device, dtype=transfers[0].dtype)
        impulse[0, gy, gx, :] = 1
        out = sum(
            spectral_filter(impulse, t.to(impulse.dtype))
            for t in transfers) / len(transfers)
        maps.append(out[0].float().cpu())
    return maps


@torch.no_grad()
def frequency_k(backbone, size: Sequence[int]) -> List[torch.Tensor]:
    """Mean-over-channels ``k`` of each stage's first block on its grid."""
    out = []
    for stage, grid in zip(backbone.stages,
                           _stage_grids(backbone, tuple(size))):
        embed = resize_freq_embed(stage.freq_embed, grid)
        to_k = stage.blocks[0].op.to_k
        k = F.relu(
            F.linear(embed.float(), to_k.weight.float(), to_k.bias.float()))
        out.append(k.mean(-1).cpu())
    return out


# -- ERF ----------------------------------------------------------------------
def _load_image(path: str) -> torch.Tensor:
    from PIL import Image
    img = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32)
    return torch.from_numpy(img).permute(2, 0, 1)  # 3, H, W, 0..255


def erf_inputs(img: Optional[str],
               size: Sequence[int],
               num: int,
               seed: int = 0) -> torch.Tensor:
    """``num`` normalised inputs: the image and random crops/flips, or
    noise."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    if img is None:
        return torch.randn(num, 3, h, w, generator=gen)
    image = _load_image(img)
    batch = [
        F.interpolate(
            image[None], size=(h, w), mode='bilinear', align_corners=False)[0]
    ]
    ih, iw = image.shape[1:]
    for _ in range(num - 1):
        scale = float(torch.empty(1).uniform_(0.5, 1.0, generator=gen))
        ch, cw = max(1, int(ih * scale)), max(1, int(iw * scale))
        y0 = int(torch.randint(0, ih - ch + 1, (1, ), generator=gen))
        x0 = int(torch.randint(0, iw - cw + 1, (1, ), generator=gen))
        crop = image[:, y0:y0 + ch, x0:x0 + cw]
        crop = F.interpolate(
            crop[None], size=(h, w), mode='bilinear', align_corners=False)[0]
        if torch.rand(1, generator=gen) < 0.5:
            crop = crop.flip(-1)
        batch.append(crop)
    x = torch.stack(batch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _last_map(outs) -> torch.Tensor:
    out = outs[-1] if isinstance(outs, (tuple, list)) else outs
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() == 3:  # (B, N, C) tokens, assume a square grid
        b, n, c = out.shape
        s = int(round(n**0.5))
        out = out.transpose(1, 2).reshape(b, c, s, n // s)
    return out


@contextlib.contextmanager
def without_output_norms(backbone):
    """Replace the backbone's output norms (``norm{i}``) by identities."""
    saved = {
        name: module
        for name, module in backbone.named_children()
        if re.fullmatch(r'norm\d+', name)
    }
    for name in saved:
        setattr(backbone, name, torch.nn.Identity())
    try:
        yield backbone
    finally:
        for name, module in saved.items():
            setattr(backbone, name, module)


def effective_receptive_field(backbone, inputs: torch.Tensor) -> torch.Tensor:
    """ERF (H, W) of the centre of the last output, max-normalised to 1.

    The centre feature is taken before the output norm, and only its
    positive part counts (see the module doc).

    Raises:
        RuntimeError: if the centre feature does not depend on the input
            (every gradient is zero).
    """
    param = next(backbone.parameters())
    total = torch.zeros(inputs.shape[-2:])
    with without_output_norms(backbone):
        for x in inputs:  # one at a time: independent of batch statistics
            x = x[None].to(param.device, param.dtype).requires_grad_(True)
            out = _last_map(backbone(x))
            h, w = out.shape[-2:]
            F.relu(out[:, :, h // 2, w // 2]).sum().backward()
            total += x.grad.abs().sum(1)[0].float().cpu()
    peak = float(total.max())
    if not peak > 0:
        raise RuntimeError(
            'the centre of the last output does not depend on the input '
            '(all gradients are zero); no effective receptive field')
    return total / peak


# Figure geometry (inches per panel, dpi); no tight bbox, so the PNG is
# exactly figsize * DPI pixels.
DPI = 100
PANEL_W = 3.0
PANEL_H = 3.2
ERF_PANEL = 4.0


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _panels(n: int, panel_w: float, panel_h: float):
    fig, axes = _pyplot().subplots(
        1, n, figsize=(panel_w * n, panel_h), dpi=DPI, squeeze=False)
    return fig, axes[0]


def plot_impulse(maps, source, size, path):
    fig, axes = _panels(len(maps), PANEL_W, PANEL_H)
    for i, (ax, m) in enumerate(zip(axes, maps)):
        temp = m.mean(-1).numpy()
        im = ax.imshow(temp, cmap='jet')
        gy, gx = scaled_source(source, size, m.shape[:2])
        ax.plot(gx, gy, 'w+', markersize=6)
        ax.set_title(f'stage {i + 1} ({m.shape[0]}x{m.shape[1]})', fontsize=9)
        ax.axis('off')
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(
        f'heat from source pixel {tuple(source)} '
        '(mean over channels)',
        fontsize=10)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def plot_k(ks, path):
    from matplotlib.colors import LogNorm
    fig, axes = _panels(len(ks), PANEL_W, PANEL_H)
    for i, (ax, k) in enumerate(zip(axes, ks)):
        k = k.numpy()
        pos = k[k > 0]
        vmin = float(pos.min()) if pos.size else 1e-6
        vmax = max(float(k.max()), vmin * 10)
        im = ax.imshow(
            np.clip(k, vmin, None),
            cmap='viridis',
            norm=LogNorm(vmin=vmin, vmax=vmax))
        ax.set_title(
            f'stage {i + 1} k ({k.shape[0]}x{k.shape[1]})', fontsize=9)
        ax.set_xlabel('freq (W)', fontsize=8)
        ax.set_ylabel('freq (H)', fontsize=8)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(
        'learned k (first block, mean over channels, log scale)', fontsize=10)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def plot_erf(erfs, names, path):
    fig, axes = _panels(len(erfs), ERF_PANEL, ERF_PANEL)
    for ax, erf, name in zip(axes, erfs, names):
        im = ax.imshow(erf.numpy(), cmap='RdYlGn', vmin=0, vmax=1)
        ax.set_title(f'ERF: {name}', fontsize=9)
        ax.axis('off')
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def figure_sizes(num_stages: int = 4, num_models: int = 1) -> dict:
    """Expected (width, height) in pixels of each PNG."""

    def px(w, h):
        return int(round(w * DPI)), int(round(h * DPI))

    return {
        'impulse_response.png': px(PANEL_W * num_stages, PANEL_H),
        'frequency_k.png': px(PANEL_W * num_stages, PANEL_H),
        'erf.png': px(ERF_PANEL * num_models, ERF_PANEL),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Visualise heat conduction in a vHeat backbone: impulse '
        'responses, learned k in frequency space and the effective '
        'receptive field')
    add_model_args(parser)
    parser.add_argument('--img', help='image for the ERF (default: noise)')
    parser.add_argument('--out-dir', required=True, help='output folder')
    parser.add_argument(
        '--source-pixel',
        nargs=2,
        type=int,
        metavar=('Y', 'X'),
        help='heat source in input pixels (default: the centre)')
    parser.add_argument(
        '--compare-config', help='second model (e.g. Swin or MPViT) for ERF')
    parser.add_argument(
        '--compare-checkpoint',
        default='none',
        help="checkpoint of the compare model (default 'none')")
    parser.add_argument(
        '--size',
        nargs=2,
        type=positive_int,
        default=[224, 224],
        metavar=('H', 'W'),
        help='input size (default 224 224)')
    parser.add_argument(
        '--num-images',
        type=positive_int,
        default=8,
        help='images averaged for the ERF (default 8)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def visualize(args):
    """Draw the figures ``args`` ask for; returns the lines to print."""
    torch.manual_seed(args.seed)
    size = tuple(args.size)
    source = tuple(args.source_pixel) if args.source_pixel else (size[0] // 2,
                                                                 size[1] // 2)
    if not all(0 <= p < side for p, side in zip(source, size)):
        raise UsageError(f'--source-pixel {source[0]} {source[1]} is outside '
                         f'the {size[0]} x {size[1]} image')
    if args.img is not None and not osp.isfile(args.img):
        raise ToolError(f'--img {args.img}: no such file')
    ensure_directory(args.out_dir, '--out-dir')

    strict = not args.non_strict
    backbone = build_model(args.config, checkpoint_arg(args.checkpoint),
                           args.cfg_options, args.device, strict,
                           args.trust_checkpoint).backbone
    if not hasattr(backbone, 'stages') or not hasattr(backbone.stages[0],
                                                      'heat_transfers'):
        raise ToolError(f'{args.config} has no vHeat backbone (got '
                        f'{type(backbone).__name__})')

    written = []
    path = osp.join(args.out_dir, 'impulse_response.png')
    plot_impulse(impulse_responses(backbone, size, source), source, size, path)
    written.append(path)

    path = osp.join(args.out_dir, 'frequency_k.png')
    plot_k(frequency_k(backbone, size), path)
    written.append(path)

    inputs = erf_inputs(args.img, size, args.num_images, args.seed)
    erfs = [effective_receptive_field(backbone, inputs)]
    names = [type(backbone).__name__]
    if args.compare_config:
        other = build_model(args.compare_config,
                            checkpoint_arg(args.compare_checkpoint), None,
                            args.device, strict,
                            args.trust_checkpoint).backbone
        erfs.append(effective_receptive_field(other, inputs))
        names.append(type(other).__name__)
    path = osp.join(args.out_dir, 'erf.png')
    plot_erf(erfs, names, path)
    written.append(path)
    return [f'wrote {path}' for path in written]


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: visualize(args))


if __name__ == '__main__':
    sys.exit(main())
