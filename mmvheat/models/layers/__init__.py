# Copyright (c) mmvheat contributors. All rights reserved.
from .drop_path import DropPath, drop_path

__all__ = ['DropPath', 'drop_path']
