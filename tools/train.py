# Copyright (c) mmvheat contributors. All rights reserved.
"""Train an mmpretrain, mmdet or mmseg model; the config's default_scope
says which library. Flags as the libraries' own tools/train.py:

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--amp-dtype float16|bfloat16] [--auto-scale-lr]
        [--cfg-options K=V ...] [--launcher pytorch]

See mmvheat/apis/runner_utils.py.
"""
import os.path as osp
import sys

try:
    import mmvheat  # noqa: F401  (first: before mmpretrain, torchvision)
except ImportError:  # not installed: this checkout
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import mmvheat  # noqa: F401

from mmvheat.apis import train  # noqa: E402

if __name__ == '__main__':
    train()
