# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.utils.versions``: the mmengine and mmcv releases accepted, and
where mmcv's is checked (the mmdet/mmseg integration, not the import)."""
from importlib import metadata

import pytest

from mmvheat.apis import register_library
from mmvheat.engine import mmcv_ops_in_float32_under_cpu_autocast
from mmvheat.utils import versions
from mmvheat.utils.versions import IncompatibleVersionError


@pytest.mark.parametrize('version', ['0.9.0', '0.9.9', '1.0.0', '1.2.1'])
def test_bad_mmengine_version(monkeypatch, version):
    import mmengine
    monkeypatch.setattr(mmengine, '__version__', version)
    with pytest.raises(IncompatibleVersionError) as info:
        versions.check_mmengine_version()
    assert 'mmengine>=0.10.0,<1.0.0' in str(info.value)
    assert version in str(info.value)


def _fake_mmcv_version(monkeypatch, mmcv_version):
    real = metadata.version

    def version(name):
        if name == 'mmcv':
            if mmcv_version is None:
                raise metadata.PackageNotFoundError(name)
            return mmcv_version
        return real(name)

    assert versions.metadata is metadata
    monkeypatch.setattr(versions.metadata, 'version', version)


@pytest.mark.parametrize('version', ['2.2.0', '2.2.0rc1', '1.7.2'])
def test_bad_mmcv_version(monkeypatch, version):
    if versions.find_spec('mmcv') is None:
        pytest.skip('mmcv is not installed')
    _fake_mmcv_version(monkeypatch, version)
    for check in (versions.check_mmcv_version,
                  lambda: register_library('mmdet'),
                  lambda: register_library('mmseg'),
                  mmcv_ops_in_float32_under_cpu_autocast):
        with pytest.raises(IncompatibleVersionError) as info:
            check()
        assert 'mmcv>=2.0.0,<2.2.0' in str(info.value)
        assert f'mmcv {version}' in str(info.value)
        assert 'tools/setup_env.sh' in str(info.value)


def test_mmpretrain_needs_no_mmcv_check(monkeypatch):
    _fake_mmcv_version(monkeypatch, '2.2.0')
    register_library('mmpretrain')


@pytest.mark.parametrize(
    'mmengine_version,mmcv_version',
    [
        ('0.10.0', '2.0.0'),
        ('0.10.7', '2.1.0'),
        ('0.10.7', '2.1.0+cu121'),
        ('0.10.7', None),  # mmcv-lite or a source tree: no mmcv metadata
    ])
def test_good_versions(monkeypatch, mmengine_version, mmcv_version):
    import mmengine
    monkeypatch.setattr(mmengine, '__version__', mmengine_version)
    _fake_mmcv_version(monkeypatch, mmcv_version)
    versions.check_mmengine_version()
    versions.check_mmcv_version()


def test_installed_versions_pass():
    versions.check_mmengine_version()
    versions.check_mmcv_version()
