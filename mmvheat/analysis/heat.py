# Copyright (c) mmvheat contributors. All rights reserved.
"""How heat spreads in a vHeat backbone, its learned ``k`` and its ERF.

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

``tools/analysis_tools/visualize_heat.py`` draws them.
"""
import contextlib
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mmvheat.models.layers import resize_freq_embed
from mmvheat.ops import spectral_filter

__all__ = [
    'impulse_responses', 'frequency_k', 'scaled_source', 'erf_inputs',
    'without_output_norms', 'effective_receptive_field'
]

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
