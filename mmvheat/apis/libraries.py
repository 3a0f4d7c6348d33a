# Copyright (c) mmvheat contributors. All rights reserved.
"""Which OpenMMLab library a config is for, and getting it ready."""
from importlib import import_module

from mmengine.config import Config

from mmvheat.utils.versions import check_mmcv_version
from .configs import ConfigError, config_name

__all__ = ['LIBRARIES', 'detect_library', 'register_library', 'build_runner']

LIBRARIES = ('mmdet', 'mmseg', 'mmpretrain')


def detect_library(cfg: Config) -> str:
    """The OpenMMLab library a config is for, from its ``default_scope``."""
    scope = cfg.get('default_scope', None)
    filename = config_name(cfg)
    if scope is None:
        raise ConfigError(
            f'{filename} sets no default_scope, so it is unknown whether it '
            f'is a config for {", ".join(LIBRARIES)}. Inherit the library\'s '
            "_base_/default_runtime.py, or set default_scope = 'mmdet' "
            "(or 'mmseg', 'mmpretrain') in the config or with "
            '--cfg-options default_scope=...')
    if scope not in LIBRARIES:
        raise ConfigError(
            f'{filename} has default_scope={scope!r}; these tools run '
            f'configs with default_scope in {LIBRARIES}.')
    return scope


def register_library(library: str, default_scope: bool = True) -> None:
    """Register the library's modules and make it the default scope.

    mmdet and mmseg need mmcv with its compiled ops, in the range
    :func:`mmvheat.utils.versions.check_mmcv_version` checks first.

    Args:
        library (str): ``'mmpretrain'``, ``'mmdet'`` or ``'mmseg'``.
        default_scope (bool): Make it the process's default scope, as a
            tool that runs it does. False for a caller that builds inside
            ``DefaultScope.overwrite_default_scope`` and leaves the
            process's scope alone. Defaults to True.
    """
    from mmengine.registry import init_default_scope
    if library in ('mmdet', 'mmseg'):
        check_mmcv_version()
    import_module(f'{library}.utils').register_all_modules(
        init_default_scope=False)
    if default_scope:
        init_default_scope(library)
    if library == 'mmdet':
        # As mmdet's tools: fewer torch.compile recompilations.
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()


def build_runner(cfg: Config, library: str):
    """``Runner.from_cfg``; the library's ``RUNNERS`` for ``runner_type``."""
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    return import_module(f'{library}.registry').RUNNERS.build(cfg)
