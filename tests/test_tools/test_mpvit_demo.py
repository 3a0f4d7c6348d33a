# Copyright (c) mmvheat contributors. All rights reserved.
"""The MPViT demo configs end to end through tools/train.py and tools/test.py.

``configs/mpvit/demo/*.py`` on a handful of generated shapes images
(:func:`demo.data.make_coco_instances` / ``make_ade20k_like``): a few
training iterations of MPViT-T Mask R-CNN and UperNet, then testing the last
checkpoint with and without ``--tta``. The data root, dataloaders and
schedule are overridden with ``--cfg-options`` only; the configs themselves
are used as written.
"""
import os
import os.path as osp
import re
import sys

import pytest

from .tiny_runs import run_cmds, tool_env

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')
DEMO = osp.join(ROOT, 'configs', 'mpvit', 'demo')
CONFIGS = dict(
    mmdet=osp.join(DEMO, 'mask-rcnn_mpvit-t_fpn_demo-shapes-128.py'),
    mmseg=osp.join(DEMO, 'mpvit-tiny_upernet_demo-shapes-128.py'))
METRICS = dict(mmdet=r'coco/bbox_mAP: (-?\d+\.\d+)', mmseg=r'mIoU: (\d+\.\d+)')
MAX_ITERS = 2


def _env():
    env = tool_env()
    env.pop('LOCAL_RANK', None)
    return env


def _run_many(cmds, cwd):
    """Run commands side by side (two cores); their outputs, rc 0 each."""
    return run_cmds(cmds, cwd, env=_env())


def _options(library, data_root):
    """``--cfg-options`` pointing the demo config at ``data_root``."""
    loader = ['num_workers=0', 'persistent_workers=False']
    options = []
    for split in ('train', 'val', 'test'):
        options += [f'{split}_dataloader.dataset.data_root={data_root}/'
                    ] + [f'{split}_dataloader.{o}' for o in loader]
    options += [
        'train_dataloader.batch_size=2', f'train_cfg.max_iters={MAX_ITERS}',
        f'train_cfg.val_interval={MAX_ITERS}',
        f'default_hooks.checkpoint.interval={MAX_ITERS}',
        'default_hooks.logger.interval=1'
    ]
    if library == 'mmdet':
        ann = f'{data_root}/annotations/instances_val2017.json'
        options += [
            f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
            'val_dataloader.batch_size=2', 'test_dataloader.batch_size=2'
        ]
    return options


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from demo.data import make_ade20k_like, make_coco_instances
    root = tmp_path_factory.mktemp('mpvit_demo_data')
    make_coco_instances(
        str(root / 'coco'), 4, 2, image_size=(128, 128), max_instances=2)
    make_ade20k_like(
        str(root / 'ade'), 4, 2, image_size=(128, 128), max_instances=2)
    return dict(mmdet=str(root / 'coco'), mmseg=str(root / 'ade'))


@pytest.mark.slow
def test_mpvit_demo_train_then_test(data, tmp_path):
    libraries = ('mmdet', 'mmseg')
    options = {lib: _options(lib, data[lib]) for lib in libraries}
    work = {lib: str(tmp_path / lib) for lib in libraries}

    # Train both side by side (the tests below do the evaluation).
    trained = _run_many([[
        sys.executable, TRAIN, CONFIGS[lib], '--work-dir', work[lib],
        '--no-validate', '--cfg-options', *options[lib]
    ] for lib in libraries], tmp_path)
    ckpts = {}
    for lib, out in zip(libraries, trained):
        assert "type='mmvheat.MPViT'" in out  # the config dump
        assert re.search(rf'Iter\(train\) \[\s*{MAX_ITERS}/{MAX_ITERS}\]',
                         out), out[-3000:]
        assert 'loss:' in out
        ckpts[lib] = osp.join(work[lib], f'iter_{MAX_ITERS}.pth')
        assert osp.isfile(ckpts[lib]), os.listdir(work[lib])

    # Test each without and with --tta.
    for lib in libraries:
        test = [sys.executable, TEST, CONFIGS[lib], ckpts[lib]]
        plain, tta = _run_many([
            test + [
                '--work-dir',
                str(tmp_path / f'{lib}_test'), '--cfg-options', *options[lib]
            ], test + [
                '--tta', '--work-dir',
                str(tmp_path / f'{lib}_tta'), '--cfg-options', *options[lib]
            ]
        ], tmp_path)
        for out in (plain, tta):
            assert re.search(METRICS[lib], out), out[-3000:]
            assert re.search(r'Iter\(test\) \[\s*\d+/\d+\]', out)
            if lib == 'mmdet':
                assert 'coco/segm_mAP' in out
        assert 'TestTimeAug' in tta
        if lib == 'mmdet':
            assert 'mmvheat.MaskDetTTAModel' in tta
