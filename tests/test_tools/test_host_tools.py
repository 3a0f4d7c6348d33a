# Copyright (c) mmvheat contributors. All rights reserved.
"""Our configs under the host libraries' own tools and APIs.

mmdet's, mmseg's and mmpretrain's ``tools/train.py`` and ``tools/test.py``,
as their packages ship them in ``.mim/tools``, run in a child process on a
user's config in a folder of its own, which inherits a config of ours and
lists the one-line import base of the README first; mmdet's and mmseg's
inference APIs build a config inherited through ``mmvheat::``; and
``mmengine.hub`` finds our configs by their ``mmvheat::`` names.
"""
import importlib
import os.path as osp
import re
import sys

import numpy as np
import pytest
from mmengine.config import Config

import mmvheat  # noqa: F401
from .tiny_runs import METRICS, run_cmds, tool_env

#: What the tests ask each library's tools to do on the session's run:
#: train 2 more iterations, then test (mmdet with --tta, through the
#: Mask R-CNN TTA fragment that the configs of this project use).
LIBRARIES = ('mmpretrain', 'mmdet', 'mmseg')


def _host_tool(library: str, name: str) -> str:
    package = importlib.import_module(library)
    return osp.join(osp.dirname(package.__file__), '.mim', 'tools', name)


def _user_config(folder, *bases, body=''):
    """A user's config in ``folder``: the import base, then ``bases``."""
    (folder / 'import_mmvheat.py').write_text("__import__('mmvheat')\n")
    path = folder / 'my_config.py'
    path.write_text(f'_base_ = {["./import_mmvheat.py", *bases]!r}\n' + body)
    return str(path)


@pytest.fixture(scope='module')
def host_runs(trained, tmp_path_factory):
    """Each library's train.py and test.py on the session's trained run."""
    commands, folders = {}, {}
    for library in LIBRARIES:
        config, work_dir, _ = trained(library)
        folder = tmp_path_factory.mktemp(f'user-{library}')
        bases = [config]
        if library == 'mmdet':
            bases.append('mmvheat::vheat/mask-rcnn_tta.py')
        user_config = _user_config(folder, *bases)
        checkpoint = osp.join(work_dir, 'iter_4.pth')
        commands[f'{library}-train'] = [
            sys.executable,
            _host_tool(library, 'train.py'), user_config, '--work-dir',
            str(folder / 'train'), '--cfg-options', 'train_cfg.max_iters=2',
            'train_cfg.val_interval=2'
        ]
        commands[f'{library}-test'] = [
            sys.executable,
            _host_tool(library, 'test.py'), user_config, checkpoint,
            '--work-dir',
            str(folder / 'test')
        ] + (['--tta'] if library in ('mmdet', 'mmseg') else [])
        folders[library] = folder
    names = list(commands)
    outputs = run_cmds([commands[name] for name in names],
                       cwd=tmp_path_factory.mktemp('cwd'),
                       env=tool_env(),
                       expect_rc=None)
    return dict(zip(names, outputs)), folders


@pytest.mark.parametrize('library', LIBRARIES)
def test_host_train_runs_our_config(library, host_runs):
    out = host_runs[0][f'{library}-train']
    assert re.search(r'Iter\(train\) \[\s*2/2\]', out), out[-4000:]
    assert re.search(METRICS[library], out), out[-4000:]
    assert osp.isfile(host_runs[1][library] / 'train' / 'iter_2.pth')


@pytest.mark.parametrize('library', LIBRARIES)
def test_host_test_runs_our_config(library, host_runs):
    out = host_runs[0][f'{library}-test']
    assert re.search(METRICS[library], out), out[-4000:]
    if library == 'mmdet':
        # mmdet's own --tta takes the config's mask-capable TTA model.
        assert "'mmvheat.MaskDetTTAModel'" in out, out[-4000:]
        assert 'TTA of instance segmentation does not support' not in out


# -- the libraries' APIs on a config inherited through mmvheat:: --------------
@pytest.fixture
def image(tmp_path):
    import cv2
    picture = np.zeros((96, 128, 3), np.uint8)
    picture[20:70, 30:90] = (40, 200, 90)
    path = str(tmp_path / 'shapes.png')
    cv2.imwrite(path, picture)
    return path


def _inherited(tmp_path, base, body=''):
    path = tmp_path / 'inherited.py'
    path.write_text(f"_base_ = 'mmvheat::{base}'\n" + body)
    return str(path)


def test_mmseg_api_on_an_inherited_config(tmp_path, image):
    from mmseg.apis import inference_model, init_model
    config = _inherited(tmp_path,
                        'vheat/demo/vheat-tiny_upernet_demo-shapes-128.py')
    model = init_model(config, device='cpu')
    result = inference_model(model, image)
    assert tuple(result.pred_sem_seg.data.shape) == (1, 96, 128)


def test_mmdet_api_on_an_inherited_config(tmp_path, image):
    from mmdet.apis import inference_detector, init_detector
    config = _inherited(tmp_path,
                        'vheat/demo/mask-rcnn_vheat-t_fpn_demo-shapes-128.py')
    model = init_detector(config, device='cpu')
    result = inference_detector(model, image)
    assert result.pred_instances.bboxes.shape[1] == 4


def test_inherited_pipeline_reused_builds_in_its_library(tmp_path):
    """``{{_base_.train_pipeline}}`` of a config inherited through
    ``mmvheat::``: the same transforms as the config's own."""
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    base = 'vheat/demo/mask-rcnn_vheat-t_fpn_demo-shapes-128.py'
    config = Config.fromfile(
        _inherited(
            tmp_path, base, 'train_dataloader = dict(dataset=dict('
            'pipeline={{_base_.train_pipeline}}))\n'))
    reference = Config.fromfile(
        osp.join(osp.dirname(mmvheat.__file__), '.mim', 'configs', base))
    importlib.import_module('mmdet.utils').register_all_modules(False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        built = Compose(config.train_dataloader.dataset.pipeline)
        expected = Compose(reference.train_pipeline)
    assert [type(t) for t in built.transforms
            ] == [type(t) for t in expected.transforms]
    assert type(built.transforms[1]).__module__.startswith('mmdet.')


# -- mmengine.hub and register_all_modules ------------------------------------
@pytest.mark.parametrize('name,model_class', [
    ('vheat/mask-rcnn_vheat-t_fpn_1x_coco.py', 'MaskRCNN'),
    ('vheat/vheat-tiny_upernet_8xb2-160k_ade20k-512x512.py', 'EncoderDecoder'),
    ('mpvit/mpvit-tiny_8xb128_in1k.py', 'ImageClassifier'),
])
def test_mmengine_hub_finds_our_configs(name, model_class):
    from mmengine.hub import get_config, get_model
    cfg = get_config(f'mmvheat::{name}')
    assert cfg.filename.endswith(name)
    model = get_model(f'mmvheat::{name}', pretrained=False)
    assert type(model).__name__ == model_class
    assert type(model.backbone).__module__.startswith('mmvheat.')


def test_register_all_modules_sets_the_scope():
    from mmengine.registry import DefaultScope

    from mmvheat.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    assert DefaultScope.get_current_instance() is None or (
        DefaultScope.get_current_instance().scope_name != 'mmvheat')
    register_all_modules()
    assert DefaultScope.get_current_instance().scope_name == 'mmvheat'
    from mmvheat.registry import MODELS
    assert MODELS.get('VHeat').__name__ == 'VHeat'


def test_mmpretrain_finds_our_classifiers_by_name():
    import mmpretrain

    from mmvheat.apis import register_mmpretrain_models
    names = register_mmpretrain_models()
    assert register_mmpretrain_models() == names  # again: nothing changes
    classifiers = mmpretrain.list_models(
        '*vheat*', task='Image Classification') + mmpretrain.list_models(
            '*mpvit*', task='Image Classification')
    assert sorted(classifiers) == sorted(
        name for name in names if name.endswith('_in1k'))
    assert len(classifiers) == 7  # vHeat-T/S/B, MPViT-T/XS/S/B
    model = mmpretrain.get_model('vheat-tiny_16xb128_in1k')
    assert type(model.backbone).__name__ == 'VHeat'
    assert model.backbone.arch_settings['depths'] == [2, 2, 6, 2]
