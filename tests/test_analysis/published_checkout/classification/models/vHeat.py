# Copyright (c) mmvheat contributors. All rights reserved.
"""A stand-in for the published ``classification/models/vHeat.py``.

The published class's constructor, ``infer_init`` and state-dict keys (the
layout of ``tests/data/vheat_official_state_dict_shapes.json``), with a
forward written here from the paper's equations in plain torch: NCHW
blocks, the cosine transforms as matrix products, ``decay ** k`` of the
resampled frequency embeddings. Importing it and ``infer_init`` write a
line to ``calls.log`` at the checkout's root.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mmvheat.models.layers import resize_freq_embed
from mmvheat.ops import dct_basis, decay_map
from .parts import LayerNorm2d, log

log('imported ' + __name__)


def heat_conduction(u, transfer):
    """``IDCT2D(DCT2D(u) * transfer)`` of an NHWC map."""
    cos_h = dct_basis(u.shape[1], u.device, u.dtype)
    cos_w = dct_basis(u.shape[2], u.device, u.dtype)
    u = torch.einsum('nh,mw,bhwc->bnmc', cos_h, cos_w, u) * transfer
    return torch.einsum('nh,mw,bnmc->bhwc', cos_h, cos_w, u)


class HeatOp(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.linear = nn.Linear(dim, 2 * dim)
        self.out_norm = nn.LayerNorm(dim)
        self.out_linear = nn.Linear(dim, dim)
        self.to_k = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())

    def transfer(self, embed):
        h, w = embed.shape[:2]
        return decay_map(h, w, embed.device)[:, :, None]**self.to_k(embed)

    def forward(self, x, transfer):
        u, z = self.linear(self.dwconv(x).permute(0, 2, 3, 1)).chunk(2, -1)
        u = self.out_norm(heat_conduction(u, transfer)) * F.silu(z)
        return self.out_linear(u).permute(0, 3, 1, 2)


class Block(nn.Module):

    def __init__(self, dim, mlp_ratio, post_norm, layer_scale):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = LayerNorm2d(dim)
        self.op = HeatOp(dim)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Conv2d(dim, hidden, 1)
        self.mlp.fc2 = nn.Conv2d(hidden, dim, 1)
        self.post_norm = post_norm
        self.gamma1 = self.gamma2 = None
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.ones(dim))
            self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x, transfer):

        def scaled(value, gamma):
            return value if gamma is None else value * gamma[:, None, None]

        def mlp(value):
            return self.mlp.fc2(F.gelu(self.mlp.fc1(value)))

        if self.post_norm:
            x = x + scaled(self.norm1(self.op(x, transfer)), self.gamma1)
            return x + scaled(self.norm2(mlp(x)), self.gamma2)
        x = x + scaled(self.op(self.norm1(x), transfer), self.gamma1)
        return x + scaled(mlp(self.norm2(x)), self.gamma2)


class vHeat(nn.Module):  # noqa: N801 -- the published name

    def __init__(self,
                 in_chans=3,
                 patch_size=4,
                 num_classes=1000,
                 depths=(2, 2, 9, 2),
                 dims=96,
                 drop_path_rate=0.2,
                 mlp_ratio=4.0,
                 post_norm=True,
                 layer_scale=None,
                 img_size=224,
                 infer_mode=False):
        super().__init__()
        assert patch_size == 4
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(len(depths))]
        self.depths, self.infer_mode = list(depths), infer_mode
        mid = dims[0] // 2
        self.patch_embed = nn.Module()
        self.patch_embed.conv1 = nn.Conv2d(in_chans, mid, 3, 2, 1)
        self.patch_embed.norm1 = nn.Sequential(nn.Identity(),
                                               LayerNorm2d(mid, eps=1e-6))
        self.patch_embed.conv2 = nn.Conv2d(mid, dims[0], 3, 2, 1)
        self.patch_embed.norm2 = nn.Sequential(nn.Identity(),
                                               LayerNorm2d(dims[0], eps=1e-6))
        self.freq_embed = nn.ParameterList([
            nn.Parameter(
                torch.zeros(img_size // 4 // 2**i, img_size // 4 // 2**i, dim))
            for i, dim in enumerate(dims)
        ])
        self.layers = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layer = nn.ModuleList([
                Block(dim, mlp_ratio, post_norm, layer_scale)
                for _ in range(depth)
            ])
            if i + 1 < len(dims):
                layer.append(
                    nn.Sequential(
                        nn.Conv2d(dim, dims[i + 1], 3, 2, 1, bias=False),
                        LayerNorm2d(dims[i + 1])))
            self.layers.append(layer)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1]), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
            nn.Linear(dims[-1], num_classes))
        self.folded = None

    def infer_init(self):
        log('infer_init')
        with torch.no_grad():
            self.folded = [[
                block.op.transfer(embed) for block in list(layer)[:depth]
            ]
                           for layer, depth, embed in zip(
                               self.layers, self.depths, self.freq_embed)]
        for layer, depth in zip(self.layers, self.depths):
            for block in list(layer)[:depth]:
                del block.op.to_k
        del self.freq_embed

    def forward(self, x):
        stem = self.patch_embed
        x = stem.norm1(stem.conv1(x))
        x = stem.norm2(stem.conv2(F.gelu(x)))
        for i, (layer, depth) in enumerate(zip(self.layers, self.depths)):
            blocks = list(layer)[:depth]
            if self.infer_mode:
                if self.folded is None:
                    raise RuntimeError('infer_mode needs infer_init()')
                transfers = self.folded[i]
            else:
                embed = resize_freq_embed(self.freq_embed[i], x.shape[2:])
                transfers = [block.op.transfer(embed) for block in blocks]
            for block, transfer in zip(blocks, transfers):
                x = block(x, transfer)
            if depth < len(layer):
                x = layer[depth](x)
        return self.classifier(x)
