# Copyright (c) mmvheat contributors. All rights reserved.
"""``frozen_stages``: what each value freezes, by parameter name.

As docs/configs.md says: 0 and -1 freeze nothing (-1 as Swin's, 0 as
ConvNeXt's);
``k`` in 1..4 freezes the stem, stages 0..k-1 and their output norms (as
both do for ``k``), in training and with ``norm_eval`` off, and keeps the
frozen modules in eval mode.
"""
import re

import pytest
import torch

from .test_gradient_layout import ARCHS

# The stem's name in each backbone, written out here rather than read
# from the class.
STEMS = dict(vheat='patch_embed', mpvit='stem')


def _frozen_names(name, frozen_stages):
    """The parameters ``frozen_stages`` must freeze, from their names."""
    if frozen_stages <= 0:
        return set()
    frozen = rf'{STEMS[name]}\.|stages\.[0-{frozen_stages - 1}]\.|' \
        rf'norm[0-{frozen_stages - 1}]\.'
    model = ARCHS[name]()
    return {
        key
        for key, _ in model.named_parameters() if re.match(frozen, key)
    }


@pytest.mark.parametrize('name', list(ARCHS))
@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages(name, frozen_stages):
    model = ARCHS[name]()
    model.frozen_stages = frozen_stages
    model._freeze_stages()
    model.train()
    frozen = {
        key
        for key, param in model.named_parameters() if not param.requires_grad
    }
    expected = _frozen_names(name, frozen_stages)
    assert frozen == expected
    if frozen_stages >= 1:
        assert expected  # the stem at least
        assert not getattr(model, STEMS[name]).training
        assert all(not model.stages[i].training for i in range(frozen_stages))
    assert all(m.training for i, m in enumerate(model.stages)
               if i >= max(frozen_stages, 0))
    if frozen_stages == 4:  # all of the backbone
        assert frozen == {key for key, _ in model.named_parameters()}
        return
    outputs = model(torch.randn(1, 3, 64, 64))
    sum(out.mean() for out in outputs).backward()
    assert all(p.grad is None for key, p in model.named_parameters()
               if key in expected)
