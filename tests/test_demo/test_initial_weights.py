# Copyright (c) mmvheat contributors. All rights reserved.
"""The untrained model the demo evaluates: initialised as training starts."""
import os.path as osp

import torch

from demo.initial_weights import main
from demo.workflow import DEMO_TASKS, PROJECT_ROOT
from mmvheat.apis import build_model, load_weights

CONFIG = osp.join(PROJECT_ROOT, DEMO_TASKS['seg'].config)


def test_initial_checkpoint(tmp_path):
    first, second, other = (
        str(tmp_path / f'{n}.pth') for n in ('a', 'b', 'c'))
    assert main([CONFIG, first]) == first
    main([CONFIG, second])
    main([CONFIG, other, '--cfg-options', 'randomness.seed=1'])
    loaded = [
        torch.load(p, map_location='cpu')['state_dict']
        for p in (first, second, other)
    ]
    # the config's seed makes it reproducible, another seed another model
    assert loaded[0].keys() == loaded[1].keys() == loaded[2].keys()
    assert all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
    assert not torch.equal(loaded[0]['backbone.stages.0.freq_embed'],
                           loaded[2]['backbone.stages.0.freq_embed'])
    # every weight of the config's model, and nothing else
    load_weights(build_model(CONFIG), first, strict=True)


def test_building_leaves_the_default_scope_alone(tmp_path):
    """``save_initial_checkpoint`` and ``build_model`` build an mmseg model
    in mmseg's scope and leave the process's default scope as it was."""
    from mmengine.registry import DefaultScope

    def current():
        scope = DefaultScope.get_current_instance()
        return None if scope is None else scope.scope_name

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        main([CONFIG, str(tmp_path / 'a.pth')])
        build_model(CONFIG)
        assert current() == 'mmpretrain'
