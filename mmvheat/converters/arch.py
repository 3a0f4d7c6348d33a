# Copyright (c) mmvheat contributors. All rights reserved.
"""The architecture settings that converted weights were made for.

Read from the names and shapes of weights in this project's layout, so that
the converters can say which arch (and which ``img_size``, classes and
output norms) a checkpoint fits, and store it in the checkpoint's ``meta``.
"""
import re
from typing import Dict, List, Mapping, Optional

from torch import Tensor

from mmvheat.models.backbones.mpvit import MPViT, crpe_head_groups
from mmvheat.models.backbones.vheat import VHeat
from .freq_embed import check_freq_embed

__all__ = ['infer_vheat_arch', 'infer_mpvit_arch', 'describe_arch']

_VHEAT_STAGE_KEY = re.compile(
    r'^backbone\.stages\.(\d+)\.(?:freq_embed$|blocks\.(\d+)\.(.+)$)')
_VHEAT_OUT_NORM = re.compile(r'^backbone\.norm(\d+)\.weight$')
_MPVIT_PATCH_CONV = re.compile(
    r'^backbone\.stages\.(\d+)\.patch_embed\.convs\.0\.pointwise\.weight$')
_MPVIT_ENCODER_KEY = re.compile(
    r'^backbone\.stages\.(\d+)\.encoders\.(\d+)\.(.+)$')
_MPVIT_BLOCK = re.compile(r'^blocks\.(\d+)\.(.+)$')
_MPVIT_CRPE_BIAS = re.compile(r'^crpe\.convs\.(\d+)\.bias$')


def _arch_name(zoo: Mapping, arch: dict, min_length: int) -> Optional[str]:
    """The full name (not an alias) under which ``zoo`` lists ``arch``."""
    for name, settings in zoo.items():
        if len(name) >= min_length and settings == arch:
            return name
    return None


def _num_classes(state_dict: Mapping[str, Tensor]) -> Optional[int]:
    fc = state_dict.get('head.fc.weight')
    return None if fc is None else int(fc.shape[0])


def infer_vheat_arch(state_dict: Mapping[str, Tensor]) -> Optional[Dict]:
    """``VHeat`` settings of converted weights; None if incomplete.

    ``post_norm`` cannot be read from weights: the published models use it
    exactly when they have LayerScale (small, base), so it follows the
    presence of ``gamma1``; ``layer_scale`` is the published initial value.

    Returns:
        dict | None: ``arch`` (the arch dict), ``arch_name`` when it is a
        named arch, ``img_size`` (from the first stage's ``freq_embed``),
        ``num_classes`` when there is a head, ``out_indices`` when there
        are output norms.
    """
    depths, dims, embed_size, hidden = {}, {}, None, None
    has_gamma = False
    for key, value in state_dict.items():
        match = _VHEAT_STAGE_KEY.match(key)
        if not match:
            continue
        stage = int(match[1])
        if match[2] is None:  # freq_embed: (H, W, C)
            check_freq_embed(key, value)
            dims[stage] = int(value.shape[-1])
            if stage == 0:
                embed_size = int(value.shape[0])
            continue
        depths[stage] = max(depths.get(stage, 0), int(match[2]) + 1)
        has_gamma |= match[3] == 'gamma1'
        if stage == 0 and match[3] == 'mlp.fc1.weight':
            hidden = int(value.shape[0])
    stages = list(range(VHeat.num_stages))
    if sorted(depths) != stages or sorted(dims) != stages:
        return None
    widths = [dims[i] for i in stages]
    arch = dict(
        depths=[depths[i] for i in stages],
        dims=widths[0] if widths == [widths[0] * 2**i
                                     for i in stages] else widths,
        post_norm=has_gamma,
        layer_scale=1e-5 if has_gamma else None,
        mlp_ratio=hidden / widths[0] if hidden else 4.)
    info = dict(arch=arch)
    name = _arch_name(VHeat.arch_zoo, arch, min_length=2)
    if name:
        info['arch_name'] = name
    if embed_size:
        info['img_size'] = embed_size * 4
    num_classes = _num_classes(state_dict)
    if num_classes is not None:
        info['num_classes'] = num_classes
    norms = sorted(
        int(m[1]) for m in map(_VHEAT_OUT_NORM.match, state_dict) if m)
    if norms:
        info['out_indices'] = norms
    return info


def _mpvit_num_heads(dim: int, crpe_channels: List[int]) -> Optional[int]:
    """The head count whose window groups give these crpe channels."""
    for heads in range(1, dim + 1):
        if dim % heads:
            continue
        channels = [h * (dim // heads) for _, h in crpe_head_groups(heads)]
        if channels == crpe_channels:
            return heads
    return None


def infer_mpvit_arch(state_dict: Mapping[str, Tensor]) -> Optional[Dict]:
    """``MPViT`` settings of converted weights; None if incomplete.

    Returns:
        dict | None: ``arch`` (the arch dict), ``arch_name`` when it is a
        named arch, ``num_classes`` when there is a head.
    """
    dims, paths, layers, hidden, crpe = {}, {}, {}, {}, {}
    for key, value in state_dict.items():
        match = _MPVIT_PATCH_CONV.match(key)
        if match:
            dims[int(match[1])] = int(value.shape[0])
            continue
        match = _MPVIT_ENCODER_KEY.match(key)
        if not match:
            continue
        stage, path, rest = int(match[1]), int(match[2]), match[3]
        paths[stage] = max(paths.get(stage, 0), path + 1)
        if path != 0:
            continue
        block = _MPVIT_BLOCK.match(rest)
        if block:
            layers[stage] = max(layers.get(stage, 0), int(block[1]) + 1)
            if block[2] == 'mlp.fc1.weight':
                hidden[stage] = int(value.shape[0])
        conv = _MPVIT_CRPE_BIAS.match(rest)
        if conv:
            crpe.setdefault(stage, {})[int(conv[1])] = int(value.shape[0])
    stages = list(range(MPViT.num_stages))
    if any(
            sorted(found) != stages
            for found in (dims, paths, layers, hidden, crpe)):
        return None
    embed_dims = [dims[i] for i in stages]
    ratios = [hidden[i] / embed_dims[i] for i in stages]
    heads = [
        _mpvit_num_heads(embed_dims[i], [crpe[i][k] for k in sorted(crpe[i])])
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
    name = _arch_name(MPViT.arch_zoo, arch, min_length=3)
    if name:
        info['arch_name'] = name
    num_classes = _num_classes(state_dict)
    if num_classes is not None:
        info['num_classes'] = num_classes
    return info


def describe_arch(info: Optional[Dict]) -> str:
    """One line for people: ``Arch: tiny {...}`` (``custom`` for an arch
    the zoo does not name) from what ``infer_*_arch`` returned."""
    if info is None:
        return 'Arch: could not be inferred'
    return f'Arch: {info.get("arch_name", "custom")} {info["arch"]}'
