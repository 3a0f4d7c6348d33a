# Copyright (c) mmvheat contributors. All rights reserved.
"""``register_all_modules``, the function every OpenMMLab package offers
(``mmengine.hub.get_model`` calls it on ``<package>.utils``)."""
from mmengine.registry import init_default_scope as _init_default_scope

__all__ = ['register_all_modules']

SCOPE = 'mmvheat'


def register_all_modules(init_default_scope: bool = True) -> None:
    """Register mmvheat's modules, and make ``mmvheat`` the default scope.

    Importing ``mmvheat`` registers every module it has (its models, TTA
    model, hooks, loops and optimizer wrappers): the package imports them,
    and importing this function imports the package. What is left is the
    default scope, as ``mmdet.utils.register_all_modules`` does for mmdet's.

    Args:
        init_default_scope (bool): Make ``mmvheat`` the default scope (with
            a warning if another one was current). Defaults to True.
    """
    if init_default_scope:
        _init_default_scope(SCOPE)
