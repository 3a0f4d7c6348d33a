# Copyright (c) mmvheat contributors. All rights reserved.
"""The mmengine and mmcv releases mmvheat works with.

mmengine is checked on ``import mmvheat``. mmcv matters only where mmdet and
mmseg come in, with mmcv's compiled ops: :func:`check_mmcv_version` is
called by the train/test tools for mmdet and mmseg configs and before
mmcv's ops are adapted to CPU autocast. The backbones and the operator need
no mmcv at all.
"""
from importlib import metadata
from importlib.util import find_spec

__all__ = [
    'MMENGINE_RANGE', 'MMCV_RANGE', 'IncompatibleVersionError',
    'check_mmengine_version', 'check_mmcv_version'
]

MMENGINE_RANGE = ('0.10.0', '1.0.0')
MMCV_RANGE = ('2.0.0', '2.2.0')


class IncompatibleVersionError(ImportError):
    """An installed package outside the supported range; the message says
    how to fix it."""


def _release(version: str):
    parts = []
    for part in version.split('+')[0].split('.')[:3]:
        digits = ''.join(ch for ch in part if ch.isdigit()) or '0'
        parts.append(int(digits))
    return tuple(parts)


def _check(package: str, installed: str, bounds, hint: str, needed_by: str):
    low, high = bounds
    if not _release(low) <= _release(installed) < _release(high):
        raise IncompatibleVersionError(
            f'{needed_by} needs {package}>={low},<{high}, but {package} '
            f'{installed} is installed. {hint}')


def check_mmengine_version():
    """Fail, with the fix, on an unsupported mmengine."""
    import mmengine
    _check(
        'mmengine', mmengine.__version__, MMENGINE_RANGE,
        f"Run: python -m pip install 'mmengine>={MMENGINE_RANGE[0]},"
        f"<{MMENGINE_RANGE[1]}'", 'mmvheat')


def check_mmcv_version():
    """Fail, with the fix, on an mmcv that mmdet 3.3 and mmseg 1.2 cannot
    use.

    Read from the package metadata, without importing mmcv; nothing is
    checked when mmcv is absent or has no metadata (a source tree), where
    importing mmdet or mmseg fails with its own message.
    """
    if find_spec('mmcv') is None:
        return
    try:
        installed = metadata.version('mmcv')
    except metadata.PackageNotFoundError:
        return
    _check(
        'mmcv', installed, MMCV_RANGE,
        'They need it with its compiled ops; run bash tools/setup_env.sh, '
        'or see the README.', 'mmvheat with mmdet 3.3 and mmseg 1.2')
