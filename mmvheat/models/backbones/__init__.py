# Copyright (c) mmvheat contributors. All rights reserved.
from .vheat import VHeat

__all__ = ['VHeat']
