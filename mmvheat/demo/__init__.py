# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's data: small synthetic datasets written in the real COCO,
ADE20K and ImageNet layouts (``tools/demo.py`` and
``tools/dataset_converters/make_demo_data.py``)."""
from . import data
from .data import *  # noqa: F401,F403

__all__ = data.__all__
