# Copyright (c) mmvheat contributors. All rights reserved.
"""mmvheat: physics-inspired vision backbones for OpenMMLab."""
from .mim import register_config_prefix
from .utils.compat import allow_torchvision_without_ops
from .utils.versions import check_mmengine_version
from .version import __version__, version_info

check_mmengine_version()
# After the version check: it imports mmengine's HistoryBuffer.
from .utils.checkpoint_loading import (  # noqa: E402
    allow_mmengine_checkpoints, guard_mmengine_checkpoint_loading)

allow_mmengine_checkpoints()
guard_mmengine_checkpoint_loading()
allow_torchvision_without_ops()
register_config_prefix()  # _base_ = 'mmvheat::...'

from . import engine, models  # noqa: E402,F401
from .registry import MODELS  # noqa: E402

__all__ = ['__version__', 'version_info', 'MODELS']
