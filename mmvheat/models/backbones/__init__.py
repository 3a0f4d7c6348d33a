# Copyright (c) mmvheat contributors. All rights reserved.
from .base import BaseBackbone
from .deploy import switch_to_deploy
from .mpvit import MPViT
from .vheat import VHeat

__all__ = ['BaseBackbone', 'VHeat', 'MPViT', 'switch_to_deploy']
