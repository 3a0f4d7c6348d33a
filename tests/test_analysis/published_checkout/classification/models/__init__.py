# Copyright (c) mmvheat contributors. All rights reserved.
from .vHeat import vHeat  # noqa: F401
