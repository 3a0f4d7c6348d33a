# Copyright (c) mmvheat contributors. All rights reserved.
"""Conversion of published vHeat checkpoints to this project's layout.

Published classification models keep their keys under ``model`` (an EMA copy
under ``model_ema`` in some files); published detection/segmentation
checkpoints hold an mmdet/mmseg ``state_dict`` whose backbone keys start with
``backbone.``. Both convert to the layout of an mmpretrain ``ImageClassifier``
(``backbone.*`` + ``head.fc.*``) or of the dense model they came from.

Published keys -> ours, under ``backbone.``:

* ``patch_embed.conv{1,2}`` keep their names; ``patch_embed.norm{1,2}.1``
  -> ``patch_embed.norm{1,2}``
* ``freq_embed.i`` -> ``stages.i.freq_embed``
* ``layers.i.j.{norm1,norm2,op.*,mlp.fc1,mlp.fc2,gamma1,gamma2}``
  -> ``stages.i.blocks.j.*`` (``op.to_k.0`` -> ``op.to_k``; the MLP's 1x1
  convolutions -> Linear weights)
* ``layers.i.D.{0,1}`` after the ``D`` blocks of stage ``i``
  -> ``stages.{i+1}.downsample.{conv,norm}``
* ``outnorm{i}`` -> ``norm{i}``; ``classifier.0`` -> ``norm3`` and
  ``classifier.3`` -> ``head.fc`` (outside ``backbone.``)

Any other key is refused: a converter that dropped or passed on keys it does
not know would hide a checkpoint of another model.
:func:`to_published_vheat` maps a classifier's keys the other way.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

from torch import Tensor

from .checkpoint import (CheckpointError, ConvertedWeights, convert_checkpoint,
                         extract_state_dict, published_items,
                         refuse_unknown_keys)

__all__ = [
    'NotAVHeatCheckpoint', 'is_published_vheat_state_dict',
    'is_mmvheat_vheat_state_dict', 'convert_published_vheat',
    'convert_vheat_checkpoint', 'vheat_weights', 'to_published_vheat'
]

_BLOCK = re.compile(r'^layers\.(\d+)\.(\d+)\.('
                    r'norm[12]\.(?:weight|bias)'
                    r'|op\.(?:dwconv|linear|out_norm|out_linear|to_k\.0)'
                    r'\.(?:weight|bias)'
                    r'|mlp\.fc[12]\.(?:weight|bias)'
                    r'|gamma[12])$')
_DOWNSAMPLE = re.compile(
    r'^layers\.(\d+)\.(\d+)\.(0\.weight|1\.weight|1\.bias)$')
_FREQ_EMBED = re.compile(r'^freq_embed\.(\d+)$')
_STEM_CONV = re.compile(r'^patch_embed\.conv[12]\.(?:weight|bias)$')
_STEM_NORM = re.compile(r'^patch_embed\.(norm[12])\.1\.(weight|bias)$')
_OUT_NORM = re.compile(r'^outnorm(\d+)\.(weight|bias)$')
_CLASSIFIER = {'0': 'backbone.norm3', '3': 'head.fc'}
_MMVHEAT_KEY = re.compile(r'^(backbone\.)?stages\.\d+\.freq_embed$')
_OUR_BLOCK = re.compile(r'^backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)$')
_OUR_DOWNSAMPLE = re.compile(
    r'^backbone\.stages\.(\d+)\.downsample\.(conv|norm)\.(weight|bias)$')
_OUR_FREQ_EMBED = re.compile(r'^backbone\.stages\.(\d+)\.freq_embed$')
_OUR_STEM_NORM = re.compile(r'^backbone\.patch_embed\.(norm[12])\.(.+)$')


class NotAVHeatCheckpoint(CheckpointError):
    """Raised when a state dict does not look like a published vHeat model."""


def is_published_vheat_state_dict(state_dict: Mapping) -> bool:
    """Whether the keys are those of a published vHeat model (any prefix)."""
    keys = [k.split('backbone.', 1)[-1] for k in state_dict]
    return (any(_FREQ_EMBED.match(k) for k in keys)
            and any(k.endswith('op.to_k.0.weight') for k in keys))


def is_mmvheat_vheat_state_dict(state_dict: Mapping) -> bool:
    """Whether the keys are already those of this project's ``VHeat``."""
    return any(_MMVHEAT_KEY.match(k) for k in state_dict)


def _convert_backbone_key(key: str, value: Tensor):
    """``(our key, value)`` for a published backbone key; None if unknown.

    Downsample keys come back as ``(stage, block index, key, value)`` so
    that their position can be checked once the depths are known.
    """
    if _STEM_CONV.match(key):
        return key, value
    match = _FREQ_EMBED.match(key)
    if match:
        return f'stages.{match[1]}.freq_embed', value
    match = _STEM_NORM.match(key)
    if match:
        return f'patch_embed.{match[1]}.{match[2]}', value
    match = _OUT_NORM.match(key)
    if match:
        return f'norm{match[1]}.{match[2]}', value
    match = _BLOCK.match(key)
    if match:
        rest = match[3].replace('op.to_k.0.', 'op.to_k.')
        if rest in ('mlp.fc1.weight', 'mlp.fc2.weight') and value.dim() == 4:
            value = value.flatten(1)  # 1x1 convolutions -> Linear
        return f'stages.{match[1]}.blocks.{match[2]}.{rest}', value
    match = _DOWNSAMPLE.match(key)
    if match:
        # The entry after the blocks of published stage i downsamples into
        # stage i + 1.
        part = 'conv.weight' if match[3] == '0.weight' else \
            'norm.' + match[3][2:]
        return (int(match[1]), int(match[2]),
                f'stages.{int(match[1]) + 1}.downsample.{part}', value)
    return None


def _misplaced_downsamples(downsamples, depths: Dict[int, int]):
    """Published keys of downsample entries not right after their stage's
    blocks, or after the last stage."""
    last_stage = max(depths, default=-1)
    return [
        key for key, (stage, index) in downsamples.items()
        if index != depths.get(stage) or stage == last_stage
    ]


def convert_published_vheat(state_dict: Mapping) -> 'OrderedDict[str, Tensor]':
    """Convert a published vHeat state dict to this project's layout.

    * a classification model (``classifier.0`` = final LayerNorm,
      ``classifier.3`` = Linear) becomes ``backbone.*`` + ``head.fc.*``, the
      layout of an mmpretrain ``ImageClassifier`` with a
      ``GlobalAveragePooling`` neck and a ``LinearClsHead``;
    * a dense model (``backbone.*`` keys, ``outnorm{i}`` output norms) keeps
      its other keys (neck, heads) untouched.

    Raises:
        NotAVHeatCheckpoint: if the keys are not a published vHeat model's,
            or some key cannot be mapped.
    """
    if not is_published_vheat_state_dict(state_dict):
        raise NotAVHeatCheckpoint(
            'this is not a published vHeat checkpoint: no "freq_embed.<i>" '
            'and "layers.<i>.<j>.op.to_k.0.weight" keys were found')
    converted = OrderedDict()
    unknown = []
    depths: Dict[int, int] = {}
    downsamples: Dict[str, Tuple[int, int]] = {}
    for key, inner, value, dense in published_items(state_dict, converted):
        if not dense and inner.startswith('classifier.'):
            index, _, param = inner[len('classifier.'):].partition('.')
            target = _CLASSIFIER.get(index)
            if target is None or param not in ('weight', 'bias'):
                unknown.append(key)
            else:
                converted[f'{target}.{param}'] = value
            continue
        mapped = _convert_backbone_key(inner, value)
        if mapped is None:
            unknown.append(key)
            continue
        if len(mapped) == 4:
            stage, index, mapped = mapped[0], mapped[1], mapped[2:]
            downsamples[key] = (stage, index)
        else:
            block = _BLOCK.match(inner)
            if block:
                stage = int(block[1])
                depths[stage] = max(depths.get(stage, 0), int(block[2]) + 1)
        converted['backbone.' + mapped[0]] = mapped[1]
    refuse_unknown_keys(unknown, NotAVHeatCheckpoint, 'vHeat')
    misplaced = _misplaced_downsamples(downsamples, depths)
    if misplaced:
        raise NotAVHeatCheckpoint(
            f'{len(misplaced)} downsample keys do not follow the last block '
            f'of their stage (depths {[depths[i] for i in sorted(depths)]}): '
            f'{misplaced[:10]}')
    return converted


def to_published_vheat(
        state_dict: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The published classifier's state dict for one of ours, the inverse of
    :func:`convert_published_vheat`: ``backbone.*`` (its one output norm
    ``norm3``) and ``head.fc.*``, an mmpretrain ``ImageClassifier``'s layout.

    Raises:
        NotAVHeatCheckpoint: if some key cannot be mapped.
    """
    depths: Dict[int, int] = {}
    for key in state_dict:
        block = _OUR_BLOCK.match(key)
        if block:
            stage = int(block[1])
            depths[stage] = max(depths.get(stage, 0), int(block[2]) + 1)
    published, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        inner = key[len('backbone.'):]
        block = _OUR_BLOCK.match(key)
        downsample = _OUR_DOWNSAMPLE.match(key)
        freq_embed = _OUR_FREQ_EMBED.match(key)
        stem_norm = _OUR_STEM_NORM.match(key)
        if key.startswith('head.fc.'):
            target = 'classifier.3.' + key[len('head.fc.'):]
        elif key.startswith('backbone.norm3.'):
            target = 'classifier.0.' + key[len('backbone.norm3.'):]
        elif _STEM_CONV.match(inner):
            target = inner
        elif stem_norm:
            target = f'patch_embed.{stem_norm[1]}.1.{stem_norm[2]}'
        elif freq_embed:
            target = f'freq_embed.{freq_embed[1]}'
        elif block:
            rest = block[3].replace('op.to_k.', 'op.to_k.0.')
            if rest in ('mlp.fc1.weight', 'mlp.fc2.weight'):
                value = value[:, :, None, None]  # Linear -> 1x1 convolution
            target = f'layers.{block[1]}.{block[2]}.{rest}'
        elif downsample and int(downsample[1]) - 1 in depths:
            # The entry after the blocks of the stage before.
            stage = int(downsample[1]) - 1
            part = '0' if downsample[2] == 'conv' else '1'
            target = f'layers.{stage}.{depths[stage]}.{part}.{downsample[3]}'
        else:
            unknown.append(key)
            continue
        published[target] = value
    if unknown:
        raise NotAVHeatCheckpoint('keys with no counterpart in the published '
                                  f'classifier ({len(unknown)}): '
                                  f'{unknown[:10]}')
    return published


def convert_vheat_checkpoint(checkpoint,
                             use_ema: bool = False) -> ConvertedWeights:
    """The weights of a loaded published checkpoint in this project's layout.

    Args:
        checkpoint: What ``torch.load`` returned for a published file.
        use_ema (bool): Take the ``model_ema`` weights. Defaults to False.

    Returns:
        ConvertedWeights: the state dict, the source layout and its number
        of keys.

    Raises:
        CheckpointError: if the file holds no published vHeat weights
            (:class:`NotAVHeatCheckpoint` when the keys are another
            model's or already converted).
    """
    return convert_checkpoint(checkpoint, convert_published_vheat,
                              _MMVHEAT_KEY, NotAVHeatCheckpoint, use_ema)


def vheat_weights(
        checkpoint,
        use_ema: bool = False
) -> Tuple['OrderedDict[str, Tensor]', Optional[str]]:
    """A vHeat checkpoint's weights in this project's layout, either kind.

    Published weights are converted; weights already in this project's
    layout are taken as they are (a bare ``VHeat`` state dict gets the
    ``backbone.`` prefix).

    Returns:
        tuple: the state dict and the source layout, ``'published'`` or
        ``'mmvheat'``.

    Raises:
        CheckpointError: if the weights are no vHeat's.
    """
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    if is_published_vheat_state_dict(state_dict):
        return convert_published_vheat(state_dict), 'published'
    if not is_mmvheat_vheat_state_dict(state_dict):
        raise NotAVHeatCheckpoint(
            'not a vHeat checkpoint: found neither published '
            '"freq_embed.<i>" keys nor mmvheat '
            '"backbone.stages.<i>.freq_embed" keys')
    if not any(k.startswith('backbone.') for k in state_dict):
        # A bare VHeat state dict, e.g. torch.save(backbone.state_dict()).
        state_dict = {f'backbone.{k}': v for k, v in state_dict.items()}
    return OrderedDict(state_dict), 'mmvheat'
