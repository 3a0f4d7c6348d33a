# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.utils.compat``: torchvision next to a CPU build of torch.

Checkpoint loading is tested in ``test_checkpoint_loading.py``, the version
checks in ``test_versions.py``, mmcv's ops under CPU autocast in
``tests/test_engine/test_mmcv_autocast.py``.
"""
import sys

import torch
from mmengine.registry import DefaultScope

import mmvheat  # noqa: F401
from mmvheat.utils import compat


# -- torchvision for mmpretrain -----------------------------------------------
def test_torchvision_transforms_import():
    import torchvision.transforms.functional as TF
    image = torch.arange(6.).view(1, 2, 3)
    torch.testing.assert_close(TF.hflip(image), image.flip(-1))


def test_mmpretrain_datasets_import():
    import mmpretrain.datasets  # noqa: F401
    from mmpretrain.registry import TRANSFORMS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        assert TRANSFORMS.get('ResizeEdge') is not None


def test_allow_torchvision_without_ops_is_idempotent():
    assert 'torchvision' in sys.modules
    compat.allow_torchvision_without_ops()  # nothing to do, must not raise
