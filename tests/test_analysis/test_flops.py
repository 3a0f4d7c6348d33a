# Copyright (c) mmvheat contributors. All rights reserved.
"""The per-stage FLOP and parameter table (``get_flops`` and
``stage_complexity`` of ``tools/analysis_tools/get_flops.py``, over
``mmvheat.analysis.flops``), against counts written out by hand for a tiny
vHeat."""
import pytest
import torch
from mmengine.config import Config

from mmvheat.analysis.flops import model_complexity
from mmvheat.models import MPViT, VHeat
from . import analysis_tool

_TOOL = analysis_tool('get_flops')
get_flops, stage_complexity = _TOOL.get_flops, _TOOL.stage_complexity

DIMS = 8
DEPTHS = [1, 2, 1, 1]
ARCH = dict(
    depths=DEPTHS, dims=DIMS, post_norm=False, layer_scale=None, mlp_ratio=2.)
SIDE = 32  # the input, and img_size: the embeddings need no resizing


def _layer_norm(n):
    """mmengine counts 5 FLOPs per element of an affine LayerNorm."""
    return 5 * n


def _conv(c_out, c_in, k, side):
    return c_out * c_in * k * k * side * side


def _hand_counts(num_classes=None):
    """``{row: (params, per image, shared, hco)}`` of a vHeat with ``ARCH``
    on a ``SIDE x SIDE`` image, from its layers one by one (biases and
    element-wise ops are not FLOPs by the convention)."""
    mid = DIMS // 2
    rows = {
        'stem (patch_embed)':
        ((3 * 9 * mid + mid) + 2 * mid + (mid * 9 * DIMS + DIMS) + 2 * DIMS,
         _conv(mid, 3, 3, SIDE // 2) + _layer_norm(mid * (SIDE // 2)**2) +
         _conv(DIMS, mid, 3, SIDE // 4) + _layer_norm(DIMS * (SIDE // 4)**2),
         0, 0)
    }
    for i, depth in enumerate(DEPTHS):
        c, s = DIMS << i, (SIDE // 4) >> i
        n = s * s
        if i:
            rows[f'stage {i + 1} downsample'] = (c * (c // 2) * 9 + 2 * c,
                                                 _conv(c, c // 2, 3, s) +
                                                 _layer_norm(n * c), 0, 0)
        block_params = (
            2 * c  # norm1
            + c * 9 + c  # dwconv
            + 2 * c * c + 2 * c  # linear C -> 2C
            + 2 * c  # out_norm
            + c * c + c  # out_linear
            + c * c + c  # to_k
            + 2 * c  # norm2
            + 2 * c * c + 2 * c + 2 * c * c + c)  # mlp C -> 2C -> C
        hco = 2 * c * n * (s + s)  # DCT and inverse along H and W
        block = (
            _layer_norm(n * c) + c * 9 * n + 2 * n * c * c + hco +
            _layer_norm(n * c) + n * c * c + _layer_norm(n * c) +
            2 * n * c * 2 * c)
        rows[f'stage {i + 1}'] = (n * c + depth * block_params, depth * block,
                                  depth * n * c * c, depth * hco)
    c, n = DIMS << 3, ((SIDE // 4) >> 3)**2
    rows['output norms (norm3)'] = (2 * c, _layer_norm(n * c), 0, 0)
    rows['backbone'] = tuple(map(sum, zip(*rows.values())))
    if num_classes:
        rows['neck'] = (0, n * c, 0, 0)  # the average pool reads each value
        rows['head'] = (c * num_classes + num_classes, c * num_classes, 0, 0)
    return rows


def _table(rows):
    return {
        row['name']:
        (row['params'], row['per_image'], row['shared'], row['hco'])
        for row in rows
    }


def test_backbone_stages_by_hand():
    backbone = VHeat(arch=ARCH, img_size=SIDE, out_indices=(3, ))
    result = model_complexity(
        backbone, torch.rand(1, 3, SIDE, SIDE), split_batch=True)
    assert _table(stage_complexity(backbone, result)) == _hand_counts()
    assert result['flops_per_image'] == _hand_counts()['backbone'][1]


def test_classifier_parts_by_hand(tmp_path):
    config = tmp_path / 'cls.py'
    config.write_text(
        Config(
            dict(
                default_scope='mmpretrain',
                model=dict(
                    type='ImageClassifier',
                    backbone=dict(
                        type='mmvheat.VHeat',
                        arch=ARCH,
                        img_size=SIDE,
                        out_indices=(3, )),
                    neck=dict(type='GlobalAveragePooling'),
                    head=dict(
                        type='LinearClsHead',
                        num_classes=5,
                        in_channels=DIMS << 3)))).pretty_text)
    result = get_flops(str(config), (SIDE, SIDE))
    assert _table(result['stages']) == _hand_counts(num_classes=5)
    assert result['flops_per_image'] == sum(row['per_image']
                                            for row in result['stages'][-3:])


def test_mpvit_rows_add_up():
    """MPViT (no output norms): a row per stem, patch embedding and stage,
    which together make the backbone."""
    # MPViT-T, one path of one layer per stage and narrower.
    arch = dict(
        MPViT.arch_zoo['tiny'],
        num_path=[1] * 4,
        num_layers=[1] * 4,
        embed_dims=[16, 16, 24, 32])
    backbone = MPViT(arch=arch, out_indices=(0, 3))
    result = model_complexity(
        backbone, torch.rand(1, 3, 32, 32), split_batch=True)
    rows = stage_complexity(backbone, result)
    assert [row['name'] for row in rows] == ['stem (stem)'] + [
        name for i in range(1, 5)
        for name in (f'stage {i} patch embed', f'stage {i}')
    ] + ['backbone']
    total = rows[-1]
    for column in ('params', 'per_image', 'shared'):
        assert sum(row[column] for row in rows[:-1]) == total[column]
    assert total['params'] == sum(p.numel() for p in backbone.parameters())
    assert total['per_image'] == result['flops_per_image'] > 0
    assert all(row['hco'] == 0 for row in rows)


def test_not_an_mmvheat_backbone():
    with pytest.raises(ValueError, match='Conv2d has no mmvheat backbone'):
        layer = torch.nn.Conv2d(3, 3, 1)
        stage_complexity(
            layer,
            model_complexity(layer, torch.rand(1, 3, 4, 4), split_batch=True))
