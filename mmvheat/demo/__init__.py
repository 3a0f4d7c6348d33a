# Copyright (c) mmvheat contributors. All rights reserved.
"""Synthetic demo datasets in the real COCO / ADE20K / ImageNet layouts."""
from .demo_data import (DEFAULTS, DEMO_CLS_CLASSES, DEMO_CLS_METAINFO,
                        DEMO_DET_CLASSES, DEMO_DET_METAINFO, DEMO_DET_PALETTE,
                        DEMO_SEG_CLASSES, DEMO_SEG_METAINFO, DEMO_SEG_PALETTE,
                        DEMO_SHAPES, GENERATOR_VERSION, MARKER_NAME, TASK_DIRS,
                        make_ade20k_like, make_coco_instances, make_demo_data,
                        make_imagenet_like, render_scene)

__all__ = [
    'DEFAULTS', 'DEMO_CLS_CLASSES', 'DEMO_CLS_METAINFO', 'DEMO_DET_CLASSES',
    'DEMO_DET_METAINFO', 'DEMO_DET_PALETTE', 'DEMO_SEG_CLASSES',
    'DEMO_SEG_METAINFO', 'DEMO_SEG_PALETTE', 'DEMO_SHAPES',
    'GENERATOR_VERSION', 'MARKER_NAME', 'TASK_DIRS', 'make_ade20k_like',
    'make_coco_instances', 'make_demo_data', 'make_imagenet_like',
    'render_scene'
]
