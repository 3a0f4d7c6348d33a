# Copyright (c) mmvheat contributors. All rights reserved.
"""What the stand-in's ``vHeat.py`` imports from beside it."""
import os.path as osp

from torch import nn

#: The checkout's log of imports and ``infer_init`` calls.
LOG = osp.join(osp.dirname(__file__), '..', '..', 'calls.log')


def log(event: str):
    with open(LOG, 'a') as f:
        f.write(event + '\n')


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
