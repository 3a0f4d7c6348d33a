# Copyright (c) mmvheat contributors. All rights reserved.
"""Conversion of published vHeat checkpoints to this project's layout.

Published classification models keep their keys under ``model`` (an EMA copy
under ``model_ema`` in some files); published detection/segmentation
checkpoints hold an mmdet/mmseg ``state_dict`` whose backbone keys start with
``backbone.``. Both convert to the layout of an mmpretrain ``ImageClassifier``
(``backbone.*`` + ``head.fc.*``) or of the dense model they came from.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping

from torch import Tensor

__all__ = [
    'NotAVHeatCheckpoint', 'is_published_vheat_state_dict',
    'convert_published_vheat', 'extract_state_dict'
]

# Published key -> our key, applied in order; ``None`` keeps the key.
_BLOCK = re.compile(r'^layers\.(\d+)\.(\d+)\.(norm|op|mlp|gamma)(.*)$')
_DOWNSAMPLE = re.compile(r'^layers\.(\d+)\.(\d+)\.([01])\.(weight|bias)$')
_FREQ_EMBED = re.compile(r'^freq_embed\.(\d+)$')
_STEM_NORM = re.compile(r'^patch_embed\.(norm[12])\.1\.(weight|bias)$')
_OUT_NORM = re.compile(r'^outnorm(\d+)\.(weight|bias)$')


class NotAVHeatCheckpoint(ValueError):
    """Raised when a state dict does not look like a published vHeat model."""


def extract_state_dict(checkpoint: Mapping, use_ema: bool = False) -> Dict:
    """The weights of a checkpoint: ``model``/``model_ema``, ``state_dict``
    or the mapping itself when it already is a state dict."""
    if not isinstance(checkpoint, Mapping):
        raise NotAVHeatCheckpoint(
            f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    if use_ema:
        if 'model_ema' not in checkpoint:
            raise NotAVHeatCheckpoint(
                'no "model_ema" entry in the checkpoint (keys: '
                f'{sorted(checkpoint)[:10]})')
        return checkpoint['model_ema']
    for key in ('model', 'state_dict'):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def is_published_vheat_state_dict(state_dict: Mapping) -> bool:
    """Whether the keys are those of a published vHeat model (any prefix)."""
    keys = [k.split('backbone.', 1)[-1] for k in state_dict]
    return (any(_FREQ_EMBED.match(k) for k in keys)
            and any(k.endswith('op.to_k.0.weight') for k in keys))


def _convert_backbone_key(key: str, value: Tensor):
    match = _FREQ_EMBED.match(key)
    if match:
        return f'stages.{match[1]}.freq_embed', value
    match = _STEM_NORM.match(key)
    if match:
        return f'patch_embed.{match[1]}.{match[2]}', value
    match = _OUT_NORM.match(key)
    if match:
        return f'norm{match[1]}.{match[2]}', value
    match = _DOWNSAMPLE.match(key)
    if match:
        # The last entry of published stage i downsamples into stage i + 1.
        part = 'conv' if match[3] == '0' else 'norm'
        return (f'stages.{int(match[1]) + 1}.downsample.{part}.{match[4]}',
                value)
    match = _BLOCK.match(key)
    if match:
        rest = (match[3] + match[4]).replace('op.to_k.0.', 'op.to_k.')
        if rest in ('mlp.fc1.weight', 'mlp.fc2.weight') and value.dim() == 4:
            value = value.flatten(1)  # 1x1 convolutions -> Linear
        return f'stages.{match[1]}.blocks.{match[2]}.{rest}', value
    if key.startswith('patch_embed.conv'):
        return key, value
    return None


def convert_published_vheat(state_dict: Mapping) -> 'OrderedDict[str, Tensor]':
    """Convert a published vHeat state dict to this project's layout.

    * a classification model (``classifier.0`` = final LayerNorm,
      ``classifier.3`` = Linear) becomes ``backbone.*`` + ``head.fc.*``, the
      layout of an mmpretrain ``ImageClassifier`` with a ``GlobalAveragePooling``
      neck and a ``LinearClsHead``;
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
    dense = any(k.startswith('backbone.') for k in state_dict)
    converted = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        if dense and not key.startswith('backbone.'):
            converted[key] = value  # neck and heads are already mmdet/mmseg
            continue
        inner = key[len('backbone.'):] if dense else key
        if not dense and inner.startswith('classifier.'):
            index, param = inner[len('classifier.'):].split('.', 1)
            target = {'0': 'backbone.norm3', '3': 'head.fc'}.get(index)
            if target is None:
                unknown.append(key)
            else:
                converted[f'{target}.{param}'] = value
            continue
        mapped = _convert_backbone_key(inner, value)
        if mapped is None:
            unknown.append(key)
        else:
            converted['backbone.' + mapped[0]] = mapped[1]
    if unknown:
        raise NotAVHeatCheckpoint(
            f'{len(unknown)} keys do not belong to a published vHeat model: '
            f'{unknown[:10]}')
    return converted
