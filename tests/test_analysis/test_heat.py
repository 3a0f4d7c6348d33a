# Copyright (c) mmvheat contributors. All rights reserved.
"""Heat spreading, learned ``k`` and ERF on a tiny vHeat and Swin (CPU),
and their figures: ``tools/analysis_tools/visualize_heat.py``."""
import numpy as np
import pytest
import torch

import mmvheat  # noqa: F401
from mmvheat.apis import build_model
from . import analysis_tool

#: The tool's computations, loaded once.
vh = analysis_tool('visualize_heat')

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
def files(tmp_path_factory, tiny_vheat_config):
    tmp = tmp_path_factory.mktemp('visualize_heat')
    cfg = tmp / 'vheat_tiny.py'
    cfg.write_text(tiny_vheat_config)
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
    return build_model(cfg).backbone


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def test_figures(files, tmp_path):
    """Each figure is figsize * dpi pixels: 4 panels of 3.0 x 3.2 in, the
    ERF one panel of 4 x 4 in per model."""
    _, cfg, swin, img = files
    tool = analysis_tool('visualize_heat')
    expected = tool.figure_sizes(num_stages=4, num_models=2)
    assert expected == {
        'impulse_response.png': (1200, 320),
        'frequency_k.png': (1200, 320),
        'erf.png': (800, 400)
    }
    torch.manual_seed(0)
    backbone = build_model(cfg).backbone
    other = build_model(swin).backbone
    inputs = vh.erf_inputs(img, (64, 64), 2)
    erfs = [vh.effective_receptive_field(m, inputs) for m in (backbone, other)]
    paths = {name: str(tmp_path / name) for name in expected}
    tool.plot_impulse(
        vh.impulse_responses(backbone, (64, 64), (10, 50)), (10, 50), (64, 64),
        paths['impulse_response.png'])
    tool.plot_k(vh.frequency_k(backbone, (64, 64)), paths['frequency_k.png'])
    tool.plot_erf(erfs, ['VHeat', 'SwinTransformer'], paths['erf.png'])
    for name, path in paths.items():
        assert _png_size(path) == expected[name]
    tool.plot_erf(erfs[:1], ['VHeat'], paths['erf.png'])
    assert _png_size(paths['erf.png']) == tool.figure_sizes(4, 1)['erf.png']


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
        assert peak == vh.scaled_source(src, (64, 64), (grid, grid))


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
    # Most pixels contribute: the heat operator is global.
    assert float((erf > 1e-3).float().mean()) > 0.5
    # Peaked near the centre: the centre of mass within a few pixels of it
    # (a random init's argmax wanders), and the central half denser than
    # the whole map.
    w = erf / erf.sum()
    coords = torch.arange(64, dtype=torch.float32)
    cy, cx = float((w.sum(1) * coords).sum()), float((w.sum(0) * coords).sum())
    assert abs(cy - 32) <= 6 and abs(cx - 32) <= 6
    centre = erf[16:48, 16:48].mean()
    assert centre > erf.mean()


class ConvNet(torch.nn.Module):
    """Three 3x3 convolutions (receptive field 7 x 7), then an output norm
    that mixes all pixels (GroupNorm statistics are global): the ERF must be
    taken before it to stay within the receptive field."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(8, 8, 3, padding=1))
        self.norm0 = torch.nn.GroupNorm(1, 8)

    def forward(self, x):
        return (self.norm0(self.convs(x)), )


def test_erf_of_convolutions_is_their_receptive_field():
    torch.manual_seed(0)
    net = ConvNet()
    erf = vh.effective_receptive_field(net, vh.erf_inputs(None, (32, 32), 2))
    window = torch.zeros(32, 32, dtype=torch.bool)
    window[16 - 3:16 + 4, 16 - 3:16 + 4] = True
    # Outside the 7 x 7 window no path leads to the centre, so the gradient
    # is exactly zero there (no rounding involved); inside, every pixel has
    # a path through the three convolutions.
    assert float(erf[~window].abs().max()) == 0
    assert bool((erf[window] > 0).all())
    # The output norm is bypassed and put back.
    assert isinstance(net.norm0, torch.nn.GroupNorm)


def test_erf_counts_only_the_positive_part_of_the_centre_feature():
    """One 3x3 convolution, two channels: on positive images the first is
    positive at the centre (a horizontal line of ones), the second negative
    (all minus ones). The ERF is that of the first alone: ones on the line
    through the centre, exact zeros elsewhere. The raw channel sum would
    give the opposite picture (zero on the line)."""
    conv = torch.nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 1, :] = 1.
        conv.weight[1] = -1.

    class OneConv(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return (self.conv(x), )

    images = torch.rand(2, 3, 9, 9) + 0.1
    erf = vh.effective_receptive_field(OneConv(), images)
    expected = torch.zeros(9, 9)
    expected[4, 3:6] = 1.
    assert torch.equal(erf, expected)


def test_erf_fails_without_dependence_on_the_input():

    class Constant(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.map = torch.nn.Parameter(torch.ones(1, 4, 8, 8))

        def forward(self, x):
            return (self.map + 0 * x.sum(), )

    with pytest.raises(RuntimeError, match='does not depend on the input'):
        vh.effective_receptive_field(Constant(),
                                     vh.erf_inputs(None, (8, 8), 1))


def _stage2_vheat(k_bias):
    """A tiny vHeat whose last output is stage 2 (stride 8; its convolutions
    alone see 39 x 39 px), with the heat exponent ``k`` set to ``k_bias``
    everywhere (``to_k`` weights zero)."""
    from mmvheat.models.backbones.vheat import VHeat
    torch.manual_seed(0)
    model = VHeat(
        arch=dict(
            depths=[1, 1, 1, 1],
            dims=16,
            post_norm=False,
            layer_scale=None,
            mlp_ratio=2.),
        img_size=64,
        out_indices=(1, )).eval()
    with torch.no_grad():
        for stage in model.stages:
            for block in stage.blocks:
                block.op.to_k.weight.zero_()
                block.op.to_k.bias.fill_(k_bias)
    return model


@pytest.fixture(scope='module')
def conv_support():
    """Where the tiny stage-2 vHeat's convolutions alone reach the centre.

    The same model with the heat operator replaced by the identity: its ERF
    is the receptive field of its convolutions, with exact zeros outside
    (no arithmetic reaches those pixels).
    """
    import mmvheat.models.layers.heat_block as heat_block_module
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(heat_block_module, 'spectral_filter', lambda x, t: x)
        local = vh.effective_receptive_field(
            _stage2_vheat(2.0), vh.erf_inputs(None, (96, 96), 2))
    support = local > 0
    assert 0.05 < float(support.float().mean()) < 0.5
    assert not bool(support[0].any() or support[-1].any())
    return support


def _share_outside(erf, support):
    return float(erf[~support].sum() / erf.sum())


def test_erf_vheat_reaches_beyond_its_convolutions(conv_support):
    erf = vh.effective_receptive_field(
        _stage2_vheat(2.0), vh.erf_inputs(None, (96, 96), 2))
    # A few percent of the sensitivity lies where no convolution reaches
    # (the residual and local paths carry the rest), and the image borders
    # are reached. Float32 rounding alone would leave values near 1e-7 of
    # the peak there, far below these bounds.
    assert _share_outside(erf, conv_support) > 0.03
    assert float(erf[0].max()) > 1e-4 and float(erf[-1].max()) > 1e-4


def test_erf_follows_the_weights(conv_support):
    """A larger ``k`` conducts heat further: the share of the ERF beyond the
    convolutions' reach grows with it (0.016 at k = 0.05, 0.069 at k = 10
    for this model)."""
    inputs = vh.erf_inputs(None, (96, 96), 2)
    weak, strong = (
        _share_outside(
            vh.effective_receptive_field(_stage2_vheat(k), inputs),
            conv_support) for k in (0.05, 10.0))
    assert strong > 2 * weak, (weak, strong)
