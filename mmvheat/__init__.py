# Copyright (c) mmvheat contributors. All rights reserved.
"""mmvheat: physics-inspired vision backbones for OpenMMLab."""
from .utils.compat import (allow_mmengine_checkpoints,
                           allow_torchvision_without_ops)
from .utils.versions import check_mmengine_version
from .version import __version__, version_info

check_mmengine_version()
allow_mmengine_checkpoints()
allow_torchvision_without_ops()

from . import engine, models  # noqa: E402,F401
from .registry import MODELS  # noqa: E402

__all__ = ['__version__', 'version_info', 'MODELS']
