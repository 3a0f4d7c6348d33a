# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/analysis_tools/visualize_heat.py on a tiny vHeat and Swin (CPU)."""
import os.path as osp
import sys

import numpy as np
import pytest
import torch

import mmvheat  # noqa: F401

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import visualize_heat as vh  # noqa: E402

VHEAT_CFG = """
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmvheat.VHeat',
        arch=dict(depths=[1, 1, 1, 1], dims=16, post_norm=False,
                  layer_scale=None, mlp_ratio=2.),
        img_size=64),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=128))
"""

SWIN_CFG = """
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SwinTransformer',
        arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]),
        img_size=64, window_size=2),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=128))
"""


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('visualize_heat')
    cfg = tmp / 'vheat_tiny.py'
    cfg.write_text(VHEAT_CFG)
    swin = tmp / 'swin_tiny.py'
    swin.write_text(SWIN_CFG)
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    img = np.stack([yy * 3, xx * 2, (yy + xx)], -1) % 256
    img = (img + rng.integers(0, 30, img.shape)).clip(0, 255)
    Image.fromarray(img.astype(np.uint8)).save(tmp / 'img.png')
    return tmp, str(cfg), str(swin), str(tmp / 'img.png')


@pytest.fixture(scope='module')
def backbone(files):
    _, cfg, _, _ = files
    torch.manual_seed(0)
    return vh.build_model(cfg, 'none').backbone


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def test_main_writes_figures(files, capsys):
    tmp, cfg, swin, img = files
    out = tmp / 'out'
    written = vh.main([
        cfg, 'none', '--img', img, '--out-dir', str(out), '--size', '64',
        '64', '--num-images', '2', '--compare-config', swin,
        '--source-pixel', '10', '50'
    ])
    names = [osp.basename(p) for p in written]
    assert names == ['impulse_response.png', 'frequency_k.png', 'erf.png']
    expected = vh.figure_sizes(num_stages=4, num_models=2)
    # figsize * dpi: 4 panels of 3.0 x 3.2 in, ERF 2 panels of 4 x 4 in.
    assert expected == {
        'impulse_response.png': (1200, 320),
        'frequency_k.png': (1200, 320),
        'erf.png': (800, 400)
    }
    for path in written:
        assert osp.isfile(path)
        assert _png_size(path) == expected[osp.basename(path)]
    printed = capsys.readouterr().out
    for path in written:
        assert path in printed


def test_main_noise_single_model(files):
    tmp, cfg, _, _ = files
    out = tmp / 'out_noise'
    written = vh.main([
        cfg, 'none', '--out-dir', str(out), '--size', '64', '64',
        '--num-images', '1'
    ])
    assert _png_size(written[2]) == vh.figure_sizes(4, 1)['erf.png']


@pytest.mark.parametrize('source', [None, (10, 50), (63, 0)])
def test_impulse_conserves_heat(backbone, source):
    maps = vh.impulse_responses(backbone, (64, 64), source)
    assert len(maps) == 4
    src = source or (32, 32)
    for i, m in enumerate(maps):
        grid = 64 // 4 // 2**i
        assert m.shape == (grid, grid, 16 * 2**i)
        sums = m.sum((0, 1))
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        temp = m.mean(-1)
        peak = divmod(int(temp.argmax()), temp.shape[1])
        assert peak == vh._scaled_source(src, (64, 64), (grid, grid))


def test_frequency_k(backbone):
    ks = vh.frequency_k(backbone, (64, 64))
    assert [tuple(k.shape) for k in ks] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert all((k >= 0).all() for k in ks)


def test_erf_vheat(backbone):
    inputs = vh.erf_inputs(None, (64, 64), 4)
    erf = vh.effective_receptive_field(backbone, inputs)
    assert erf.shape == (64, 64)
    assert (erf >= 0).all()
    assert float(erf.max()) == pytest.approx(1.0)
    # Peaked near the centre: the centre of mass within a few pixels of it
    # (a random init's argmax wanders), and the central half denser than
    # the whole map.
    w = erf / erf.sum()
    coords = torch.arange(64, dtype=torch.float32)
    cy, cx = float((w.sum(1) * coords).sum()), float((w.sum(0) * coords).sum())
    assert abs(cy - 32) <= 6 and abs(cx - 32) <= 6
    centre = erf[16:48, 16:48].mean()
    assert centre > erf.mean()
