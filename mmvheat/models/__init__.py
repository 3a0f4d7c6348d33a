# Copyright (c) mmvheat contributors. All rights reserved.
from .backbones import *  # noqa: F401,F403
from .test_time_augs import MaskDetTTAModel  # noqa: F401
