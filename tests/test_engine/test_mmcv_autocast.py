# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.engine.mmcv_ops_in_float32_under_cpu_autocast``: mmcv's
compiled ops inside CPU autocast regions."""
import pytest
import torch

from mmvheat.engine import mmcv_ops_in_float32_under_cpu_autocast


def _boxes(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    wh = torch.rand(n, 2, generator=g) * 20 + 4
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


def test_mmcv_ops_take_half_inputs_under_cpu_autocast():
    mmcv_ops = pytest.importorskip('mmcv.ops')
    mmcv_ops_in_float32_under_cpu_autocast()
    assert mmcv_ops_in_float32_under_cpu_autocast() == 0  # once only
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
    mmcv_ops_in_float32_under_cpu_autocast()
    boxes, scores = _boxes()
    # Without autocast a half-precision input still reaches the float32
    # kernel unchanged, and fails there as before.
    with pytest.raises(RuntimeError, match='Float'):
        mmcv_ops.nms(boxes.bfloat16(), scores.bfloat16(), 0.3)
    feats = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    rois = torch.tensor([[0, 1., 1., 6., 6.]], dtype=torch.float64)
    out = mmcv_ops.roi_align(feats, rois, (2, 2), 1.0, 2)
    assert out.dtype == torch.float64
