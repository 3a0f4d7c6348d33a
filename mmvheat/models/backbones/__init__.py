# Copyright (c) mmvheat contributors. All rights reserved.
from .mpvit import MPViT
from .vheat import VHeat

__all__ = ['VHeat', 'MPViT']
