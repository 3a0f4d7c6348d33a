# Copyright (c) mmvheat contributors. All rights reserved.
"""Test (and evaluate) an mmpretrain, mmdet or mmseg model; the config's
default_scope says which library. Flags as the libraries' own tools/test.py:

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
        [--show] [--show-dir DIR] [--wait-time S] [--tta]
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

from mmvheat.apis import test  # noqa: E402

if __name__ == '__main__':
    test()
