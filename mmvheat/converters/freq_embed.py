# Copyright (c) mmvheat contributors. All rights reserved.
"""Enlarging a checkpoint's frequency value embeddings for downstream sizes.

Each stage i of vHeat owns a ``freq_embed`` of ``img_size / 4 / 2**i``
squared cells. Before detection or segmentation training at ``tg_size``,
the published recipe zero-pads it at the bottom/right by ``(tg_size -
pt_size) / 2**(i + 2)`` (mode ``'pad'``; the published tool is called
``interpolate4downstream.py`` although it does not interpolate). Mode
``'bicubic'`` resamples instead, with the function the model itself uses at
run time (:func:`mmvheat.models.layers.resize_freq_embed`).
"""
from typing import List, MutableMapping, NamedTuple, Tuple

from torch import Tensor

from mmvheat.models.backbones.vheat import VHeat
from mmvheat.models.layers import pad_freq_embed, resize_freq_embed
from mmvheat.utils.io import MAX_IMAGE_SIDE
from .checkpoint import CheckpointError

__all__ = [
    'MODES', 'SIZE_MULTIPLE', 'Enlargement', 'embed_side', 'check_freq_embed',
    'check_size', 'check_sizes', 'enlarge_freq_embeds'
]

MODES = ('pad', 'bicubic')
#: Output stride of the last stage: image sizes must be multiples of it.
SIZE_MULTIPLE = VHeat.strides[-1]
_KEY = 'backbone.stages.{}.freq_embed'
# The interpolation tool's names for the two sizes.
_SIZE_OPTIONS = ('--pt_size', '--tg_size')


class Enlargement(NamedTuple):
    """How one stage's embedding grew: ``(stage, old side, new side)``."""
    stage: int
    old: Tuple[int, int]
    new: Tuple[int, int]

    def __str__(self) -> str:
        return (f'stage {self.stage}: freq_embed {self.old[0]} x '
                f'{self.old[1]} -> {self.new[0]} x {self.new[1]}')


def embed_side(img_size: int, stage: int) -> int:
    """Side of stage ``stage``'s frequency embedding at ``img_size``."""
    return img_size // VHeat.strides[stage]


def check_size(name: str, size: int) -> None:
    """Raise ValueError unless ``size`` is an image size vHeat can take:
    a positive multiple of :data:`SIZE_MULTIPLE`, at most
    :data:`mmvheat.utils.io.MAX_IMAGE_SIDE`."""
    if size <= 0 or size % SIZE_MULTIPLE:
        raise ValueError(f'{name} must be a positive multiple of '
                         f'{SIZE_MULTIPLE}, got {size}')
    if size > MAX_IMAGE_SIDE:
        raise ValueError(f'{name} must be at most {MAX_IMAGE_SIDE}, got '
                         f'{size}')


def check_sizes(pt_size: int,
                tg_size: int,
                names: Tuple[str, str] = _SIZE_OPTIONS) -> None:
    """Raise ValueError unless the sizes make a valid enlargement.

    Args:
        pt_size (int): The size the embeddings were made for.
        tg_size (int): The size to enlarge them to.
        names (tuple[str]): How the two sizes are called in messages.
            Defaults to ``('--pt_size', '--tg_size')``.
    """
    for name, size in zip(names, (pt_size, tg_size)):
        check_size(name, size)
    if tg_size < pt_size:
        raise ValueError(f'{names[1]} ({tg_size}) must not be smaller than '
                         f'{names[0]} ({pt_size}): embeddings are only '
                         'enlarged')


def check_freq_embed(key: str, value: Tensor) -> None:
    """Raise CheckpointError unless ``value`` can be a frequency embedding:
    ``(H, W, C)`` with at least one value."""
    if value.dim() != 3 or not value.numel():
        raise CheckpointError(
            f'{key} has shape {tuple(value.shape)}, not a frequency '
            'embedding (H, W, C) of at least one value')


def enlarge_freq_embeds(
    state_dict: MutableMapping[str, Tensor],
    pt_size: int,
    tg_size: int,
    mode: str = 'pad',
    names: Tuple[str, str] = ('--pt_size', '--tg_size')
) -> List[Enlargement]:
    """Enlarge every stage's ``freq_embed`` of mmvheat-layout weights.

    Args:
        state_dict (dict): ``backbone.stages.<i>.freq_embed`` and the rest;
            the embeddings are replaced in place.
        pt_size (int): The size the embeddings were made for.
        tg_size (int): The downstream size.
        mode (str): ``'pad'`` (the published recipe) or ``'bicubic'``.
            Defaults to ``'pad'``.
        names (tuple[str]): How the two sizes are called in messages.
            Defaults to ``('--pt_size', '--tg_size')``.

    Returns:
        list[Enlargement]: what changed, per stage.

    Raises:
        ValueError: for a bad ``mode`` or sizes.
        CheckpointError: if an embedding is missing or does not have the
            side ``pt_size`` implies.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    check_sizes(pt_size, tg_size, names)
    stages = range(VHeat.num_stages)
    missing = [
        _KEY.format(i) for i in stages if _KEY.format(i) not in state_dict
    ]
    if missing:
        raise CheckpointError(f'incomplete vHeat checkpoint: {missing} '
                              'missing')
    embeds = [state_dict[_KEY.format(i)] for i in stages]
    for i, embed in enumerate(embeds):
        expected = embed_side(pt_size, i)
        check_freq_embed(_KEY.format(i), embed)
        if tuple(embed.shape[:2]) != (expected, expected):
            h, w = embed.shape[:2]
            hint = ''
            if h == w:
                made_for = h * VHeat.strides[i]
                hint = (f'; the checkpoint was made for size {made_for}: '
                        f'pass {names[0]} {made_for}')
            raise CheckpointError(
                f'{_KEY.format(i)} is {h} x {w}, expected {expected} x '
                f'{expected} for {names[0]} {pt_size}{hint}')
    changes = []
    for i, embed in enumerate(embeds):
        size = (embed_side(tg_size, i), ) * 2
        if mode == 'pad':
            new = pad_freq_embed(embed, size)
        else:
            new = resize_freq_embed(embed, size)
        state_dict[_KEY.format(i)] = new.contiguous()
        changes.append(Enlargement(i, tuple(embed.shape[:2]), size))
    return changes
