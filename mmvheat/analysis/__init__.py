# Copyright (c) mmvheat contributors. All rights reserved.
"""Measurements of the models: FLOPs, speed, and how heat spreads.

Needs torch and mmengine only at import; mmpretrain (for the benchmark's
classifiers) and matplotlib (for the figures) are imported where used.
"""
from .flops import format_count, hco_macs, model_complexity

__all__ = ['format_count', 'hco_macs', 'model_complexity']
