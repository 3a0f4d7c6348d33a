# Copyright (c) mmvheat contributors. All rights reserved.
"""The ``mmvheat`` registry scope, shared by mmpretrain, mmdet and mmseg.

Configs of any OpenMMLab library reach our models as ``type='mmvheat.VHeat'``:
mmengine's ``Registry.get`` sees the scope prefix, imports
``mmvheat.registry`` and finds the class in the child registry below (which
imports ``mmvheat.models`` on first use). This works from any working
directory and without ``custom_imports``.

For the classic plugin pattern (``custom_imports=dict(imports=['mmvheat'])``
and a plain ``type='VHeat'``), :func:`register_plain_name` also places the
same class in mmengine's root registry, which every library's registry
searches after its own. No library's registry is imported for that, and there
is still one class.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

__all__ = ['MODELS', 'register_plain_name']

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmvheat',
    locations=['mmvheat.models'])


def register_plain_name(cls):
    """Class decorator: make ``type='<ClassName>'`` resolve in every scope."""
    existing = MMENGINE_MODELS.module_dict.get(cls.__name__)
    if existing is None:
        MMENGINE_MODELS.register_module(module=cls)
    elif existing is not cls:
        raise KeyError(f'{cls.__name__} is already registered in mmengine '
                       f'as {existing.__module__}.{existing.__qualname__}')
    return cls
