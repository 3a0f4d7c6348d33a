# Copyright (c) mmvheat contributors. All rights reserved.
"""The autocast helpers: torch's own autocast where the device has one, and
nothing (no error) where it has none."""
import pytest
import torch

from mmvheat.utils.torch_modes import (autocast, autocast_enabled,
                                       autocast_state)


def test_autocast_helpers_follow_torch_on_the_cpu():
    assert not autocast_enabled('cpu')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_enabled('cpu')
        assert autocast_state('cpu') == (True, torch.bfloat16)
        with autocast('cpu'):  # off by default
            assert not torch.is_autocast_enabled('cpu')
            assert autocast_state('cpu') == (False, torch.bfloat16)
            with autocast('cpu', True, torch.float16):
                assert torch.is_autocast_enabled('cpu')
                assert torch.get_autocast_dtype('cpu') == torch.float16
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') == torch.bfloat16
    assert not torch.is_autocast_enabled('cpu')


def test_autocast_helpers_on_a_device_without_autocast():
    # torch itself refuses these for the meta device.
    with pytest.raises(RuntimeError):
        torch.autocast('meta', enabled=False)
    assert not autocast_enabled('meta')
    assert autocast_state('meta') == (False, None)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with autocast('meta', True, torch.float16):
            # Nothing changed, on the meta device or elsewhere.
            assert not autocast_enabled('meta')
            assert autocast_state('cpu') == (True, torch.bfloat16)
            x = torch.ones(2, 2, device='meta')
            assert (x @ x).dtype == torch.float32
