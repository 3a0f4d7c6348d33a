# Copyright (c) mmvheat contributors. All rights reserved.
"""Conversion of published MPViT checkpoints to this project's layout.

Published ImageNet models keep their keys under ``model``. Their state dicts
list the position encodings each encoder shares with its blocks several
times (``mhca_blks.j.cpe`` again as ``MHCA_layers.l.cpe``, ``crpe`` again as
``MHCA_layers.l.crpe`` and ``MHCA_layers.l.factoratt_crpe.crpe``); here each
is stored once, on the encoder, and the copies must agree.

Published keys (``mhca_stages.i.mhca_blks.j`` is path ``j`` of stage ``i``,
``MHCA_layers.l`` its block ``l``) -> ours, under ``backbone.``:

* ``stem.k.{conv,bn}`` -> ``stem.k.{conv,norm}``
* ``patch_embed_stages.i.patch_embeds.j.patch_conv.{dwconv,pwconv,bn}``
  -> ``stages.i.patch_embed.convs.j.{depthwise,pointwise,norm}``
* ``mhca_stages.i.mhca_blks.j.cpe.proj`` -> ``stages.i.encoders.j.cpe.proj``
* ``mhca_stages.i.mhca_blks.j.crpe.conv_list.k``
  -> ``stages.i.encoders.j.crpe.convs.k``
* ``...mhca_blks.j.MHCA_layers.l.factoratt_crpe.{qkv,proj}``
  -> ``stages.i.encoders.j.blocks.l.attn.{qkv,proj}``; ``norm1``, ``norm2``,
  ``mlp.fc1``, ``mlp.fc2`` keep their names
* ``mhca_stages.i.InvRes.{conv1,conv2}.{conv,bn}``
  -> ``stages.i.local_block.{conv1,conv2}.{conv,norm}``;
  ``InvRes.{dwconv,norm}`` -> ``local_block.{dwconv,norm}``
* ``mhca_stages.i.aggregate.{conv,bn}`` -> ``stages.i.aggregate.{conv,norm}``
* ``cls_head.cls`` -> ``head.fc`` (outside ``backbone.``: mmpretrain's
  ``LinearClsHead``)
"""
import re
from collections import OrderedDict
from typing import Mapping, Optional

import torch
from torch import Tensor

from .checkpoint import (CheckpointError, ConvertedWeights, convert_checkpoint,
                         published_items, refuse_unknown_keys)

__all__ = [
    'NotAnMPViTCheckpoint', 'is_published_mpvit_state_dict',
    'convert_published_mpvit', 'convert_mpvit_checkpoint'
]

_NORM = {'conv': 'conv', 'bn': 'norm'}
# The tensors a convolution, BatchNorm, LayerNorm or Linear holds; any other
# name is unknown.
_TENSOR = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_STEM = re.compile(rf'^stem\.(\d+)\.(conv|bn)\.{_TENSOR}$')
_PATCH_EMBED = re.compile(r'^patch_embed_stages\.(\d+)\.patch_embeds\.(\d+)'
                          rf'\.patch_conv\.(dwconv|pwconv|bn)\.{_TENSOR}$')
_ENCODER = re.compile(r'^mhca_stages\.(\d+)\.mhca_blks\.(\d+)\.(.+)$')
_LAYER = re.compile(r'^MHCA_layers\.(\d+)\.(.+)$')
_SHARED = re.compile(r'^(?:factoratt_crpe\.)?(cpe\.proj|crpe\.conv_list\.\d+)'
                     rf'\.{_TENSOR}$')
_BLOCK_PART = re.compile(
    r'^(?:factoratt_crpe\.(qkv|proj)|(norm[12]|mlp\.fc[12]))'
    rf'\.{_TENSOR}$')
_LOCAL = re.compile(r'^mhca_stages\.(\d+)\.InvRes\.(?:(conv[12])\.(conv|bn)'
                    rf'|(dwconv|norm))\.{_TENSOR}$')
_AGGREGATE = re.compile(
    rf'^mhca_stages\.(\d+)\.aggregate\.(conv|bn)\.{_TENSOR}$')
_PATCH_PARTS = {'dwconv': 'depthwise', 'pwconv': 'pointwise', 'bn': 'norm'}
_MMVHEAT_KEY = re.compile(r'^(backbone\.)?stages\.\d+\.(encoders|'
                          r'patch_embed|local_block|aggregate)\.')


class NotAnMPViTCheckpoint(CheckpointError):
    """Raised when a state dict does not look like a published MPViT model."""


def is_published_mpvit_state_dict(state_dict: Mapping) -> bool:
    """Whether the keys are those of a published MPViT model (any prefix)."""
    keys = [k.split('backbone.', 1)[-1] for k in state_dict]
    return (any(k.startswith('mhca_stages.') for k in keys)
            and any(k.startswith('patch_embed_stages.') for k in keys))


def _shared_target(stage: str, path: str, name: str, rest: str) -> str:
    name = name.replace('conv_list', 'convs')
    return f'stages.{stage}.encoders.{path}.{name}.{rest}'


def convert_backbone_key(key: str) -> Optional[str]:
    """Our name for a published backbone key; None if it is unknown.

    The copies of a shared position encoding get the encoder's name.
    """
    match = _STEM.match(key)
    if match:
        return f'stem.{match[1]}.{_NORM[match[2]]}.{match[3]}'
    match = _PATCH_EMBED.match(key)
    if match:
        return (f'stages.{match[1]}.patch_embed.convs.{match[2]}.'
                f'{_PATCH_PARTS[match[3]]}.{match[4]}')
    match = _LOCAL.match(key)
    if match:
        part = (f'{match[2]}.{_NORM[match[3]]}' if match[2] else match[4])
        return f'stages.{match[1]}.local_block.{part}.{match[5]}'
    match = _AGGREGATE.match(key)
    if match:
        return f'stages.{match[1]}.aggregate.{_NORM[match[2]]}.{match[3]}'
    match = _ENCODER.match(key)
    if not match:
        return None
    stage, path, inner = match.groups()
    shared = _SHARED.match(inner)
    if shared and not inner.startswith('factoratt_crpe.'):  # the owner
        return _shared_target(stage, path, *shared.groups())
    layer = _LAYER.match(inner)
    if not layer:
        return None
    index, inner = layer.groups()
    shared = _SHARED.match(inner)
    if shared:
        return _shared_target(stage, path, *shared.groups())
    part = _BLOCK_PART.match(inner)
    if not part:
        return None
    name = f'attn.{part[1]}' if part[1] else part[2]
    return f'stages.{stage}.encoders.{path}.blocks.{index}.{name}.{part[3]}'


def convert_published_mpvit(state_dict: Mapping) -> 'OrderedDict[str, Tensor]':
    """Convert a published MPViT state dict to this project's layout.

    * a classification model becomes ``backbone.*`` + ``head.fc.*``, the
      layout of an mmpretrain ``ImageClassifier`` with a
      ``GlobalAveragePooling`` neck and a ``LinearClsHead``;
    * a dense model (``backbone.*`` keys) keeps its other keys (neck, heads)
      untouched.

    The copies of a shared position encoding collapse into one key.

    Raises:
        NotAnMPViTCheckpoint: if the keys are not a published MPViT model's,
            some key cannot be mapped, or copies of a shared weight differ.
    """
    if not is_published_mpvit_state_dict(state_dict):
        raise NotAnMPViTCheckpoint(
            'this is not a published MPViT checkpoint: no "mhca_stages.<i>" '
            'and "patch_embed_stages.<i>" keys were found')
    converted = OrderedDict()
    sources = {}  # our key -> the published key it was taken from
    unknown, differing = [], []
    for key, inner, value, dense in published_items(state_dict, converted):
        if not dense and inner in ('cls_head.cls.weight', 'cls_head.cls.bias'):
            converted['head.fc.' + inner[len('cls_head.cls.'):]] = value
            continue
        mapped = convert_backbone_key(inner)
        if mapped is None:
            unknown.append(key)
            continue
        target = 'backbone.' + mapped
        if target in converted:
            previous = converted[target]
            if (previous.shape != value.shape
                    or not torch.equal(previous, value)):
                differing.append((sources[target], key))
            continue
        converted[target] = value
        sources[target] = key
    refuse_unknown_keys(unknown, NotAnMPViTCheckpoint, 'MPViT')
    if differing:
        raise NotAnMPViTCheckpoint(
            f'{len(differing)} copies of shared position-encoding weights '
            f'differ from the encoder\'s own: {differing[:5]}')
    return converted


def convert_mpvit_checkpoint(checkpoint) -> ConvertedWeights:
    """:func:`convert_published_mpvit` on what ``torch.load`` returned.

    The weights are found under ``model``, ``state_dict`` or at the top;
    a :class:`NotAnMPViTCheckpoint` (a :class:`CheckpointError`) refuses
    another model's weights or ones that are already converted.
    """
    return convert_checkpoint(checkpoint, convert_published_mpvit,
                              _MMVHEAT_KEY, NotAnMPViTCheckpoint)
