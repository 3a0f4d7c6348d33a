# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.utils.compat``: versions, torchvision, mmcv ops under autocast.

Checkpoint loading is tested in ``test_checkpoint_loading.py``.
"""
import sys
from importlib import metadata

import mmvheat  # noqa: F401
import pytest
import torch
from mmengine.registry import DefaultScope

from mmvheat.utils import compat


# -- version checks -----------------------------------------------------------
@pytest.mark.parametrize('version', ['0.9.0', '0.9.9', '1.0.0', '1.2.1'])
def test_bad_mmengine_version(monkeypatch, version):
    import mmengine
    monkeypatch.setattr(mmengine, '__version__', version)
    with pytest.raises(ImportError) as info:
        compat.check_mm_versions()
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

    assert compat.metadata is metadata
    monkeypatch.setattr(compat.metadata, 'version', version)


@pytest.mark.parametrize('version', ['2.2.0', '2.2.0rc1', '1.7.2'])
def test_bad_mmcv_version(monkeypatch, version):
    if compat.find_spec('mmcv') is None:
        pytest.skip('mmcv is not installed')
    _fake_mmcv_version(monkeypatch, version)
    with pytest.raises(ImportError) as info:
        compat.check_mm_versions()
    assert 'mmcv>=2.0.0,<2.2.0' in str(info.value)
    assert f'mmcv {version}' in str(info.value)


@pytest.mark.parametrize('mmengine_version,mmcv_version', [
    ('0.10.0', '2.0.0'),
    ('0.10.7', '2.1.0'),
    ('0.10.7', '2.1.0+cu121'),
    ('0.10.7', None),  # mmcv-lite or a source tree: no mmcv metadata
])
def test_good_versions(monkeypatch, mmengine_version, mmcv_version):
    import mmengine
    monkeypatch.setattr(mmengine, '__version__', mmengine_version)
    _fake_mmcv_version(monkeypatch, mmcv_version)
    compat.check_mm_versions()


def test_installed_versions_pass():
    compat.check_mm_versions()


# -- torchvision for mmpretrain -----------------------------------------------
def test_torchvision_transforms_import():
    import torchvision.transforms.functional as TF
    image = torch.arange(6.).view(1, 2, 3)
    torch.testing.assert_close(TF.hflip(image), image.flip(-1))


def test_mmpretrain_datasets_import():
    import mmpretrain.datasets  # noqa: F401
    from mmpretrain.registry import TRANSFORMS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        assert TRANSFORMS.get('ResizeEdge') is not None


def test_allow_torchvision_without_ops_is_idempotent():
    assert 'torchvision' in sys.modules
    compat.allow_torchvision_without_ops()  # nothing to do, must not raise


# -- mmcv's compiled ops under CPU autocast -----------------------------------
def _boxes(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    wh = torch.rand(n, 2, generator=g) * 20 + 4
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


def test_mmcv_ops_take_half_inputs_under_cpu_autocast():
    mmcv_ops = pytest.importorskip('mmcv.ops')
    compat.mmcv_ops_in_float32_under_cpu_autocast()
    assert compat.mmcv_ops_in_float32_under_cpu_autocast() == 0  # once only
    assert mmcv_ops.nms.__module__ == 'mmcv.ops.nms'

    boxes, scores = (t.bfloat16() for t in _boxes())
    # The float32 kernel on the bfloat16 values, and the result in bfloat16.
    dets, keep = mmcv_ops.nms(boxes.float(), scores.float(), 0.3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        dets_half, keep_half = mmcv_ops.nms(boxes, scores, 0.3)
    assert 0 < len(keep) < len(scores)
    assert torch.equal(keep_half, keep)
    assert dets_half.dtype == torch.bfloat16
    torch.testing.assert_close(dets_half, dets.bfloat16())

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True)
    rois = torch.tensor([[0, 1., 1., 9., 9.], [1, 4., 2., 15., 12.]])
    roi_align = mmcv_ops.RoIAlign((3, 3), 1.0, 2)
    ref = roi_align(feats, rois)
    ref.sum().backward()
    ref_grad, feats.grad = feats.grad, None
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast('cpu', dtype=dtype):
            out = roi_align(feats.to(dtype), rois.to(dtype))
        assert out.dtype == dtype  # as a half-precision kernel returns it
        torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)
        out.float().sum().backward()
        assert feats.grad.dtype == torch.float32
        torch.testing.assert_close(feats.grad, ref_grad, atol=0.05, rtol=0.02)
        feats.grad = None


def test_mmcv_ops_unchanged_outside_cpu_autocast():
    mmcv_ops = pytest.importorskip('mmcv.ops')
    compat.mmcv_ops_in_float32_under_cpu_autocast()
    boxes, scores = _boxes()
    # Without autocast a half-precision input still reaches the float32
    # kernel unchanged, and fails there as before.
    with pytest.raises(RuntimeError, match='Float'):
        mmcv_ops.nms(boxes.bfloat16(), scores.bfloat16(), 0.3)
    feats = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    rois = torch.tensor([[0, 1., 1., 6., 6.]], dtype=torch.float64)
    out = mmcv_ops.roi_align(feats, rois, (2, 2), 1.0, 2)
    assert out.dtype == torch.float64
