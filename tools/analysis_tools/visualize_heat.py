# Copyright (c) mmvheat contributors. All rights reserved.
"""Visualise how heat spreads in a vHeat backbone, its learned ``k`` and ERF.

Writes three PNG figures to ``--out-dir`` (see :mod:`mmvheat.analysis.heat`):

* ``impulse_response.png``: the response of each stage's heat operator to a
  unit of heat at ``--source-pixel Y X`` (default the centre), mean over
  channels;
* ``frequency_k.png``: the learned ``k`` of each stage's first block on its
  frequency grid at ``--size``, log colour scale;
* ``erf.png``: the effective receptive field of the backbone's last output,
  averaged over ``--img`` and random crops/flips of it (noise images without
  ``--img``); with ``--compare-config`` (e.g. a Swin or MPViT config) the
  second model's ERF is drawn beside vHeat's.

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
import os.path as osp
import sys

import numpy as np
import torch

from mmvheat.analysis.heat import (effective_receptive_field, erf_inputs,
                                   frequency_k, impulse_responses,
                                   scaled_source)
from mmvheat.apis import add_model_args, build_model, checkpoint_arg
from mmvheat.utils.io import (ToolError, UsageError, ensure_directory,
                              positive_int, run_tool)

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
