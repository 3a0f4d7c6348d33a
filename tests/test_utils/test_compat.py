# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.utils.compat``: checkpoints under torch>=2.6, torchvision.

``import mmvheat`` (done first by ``tests/conftest.py``) allowlists what
mmengine checkpoints hold for ``torch.load(weights_only=True)``.
"""
import io
import json
import os
import pickle
import re
import subprocess
import sys

import mmvheat  # noqa: F401
import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner, load_checkpoint
from torch import nn
from torch.utils.data import Dataset

from mmvheat.utils import compat


def _torch_version():
    return tuple(int(x) for x in re.findall(r'\d+', torch.__version__)[:2])


SAFE_LOAD_BY_DEFAULT = _torch_version() >= (2, 6)


# -- a tiny mmengine training run ---------------------------------------------
class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - labels)**2).mean())
        return out


class ToyDataset(Dataset):

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(16, 2, generator=generator)
        self.labels = torch.randn(16, generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], labels=self.labels[index])


class RecordIters(Hook):

    def __init__(self):
        self.iters = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.iters.append(runner.iter + 1)


def _runner(work_dir, name, **kwargs):
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            num_workers=0,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=4),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(
            type='MultiStepLR', milestones=[3], gamma=0.1, by_epoch=False),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs)


@pytest.fixture(autouse=True)
def _keep_default_scope():
    # Each Runner makes its default scope the current one; don't leak it.
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """An uninterrupted 4-iteration run, checkpointed at iterations 2 and 4."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = DefaultScope._instance_dict.copy()
    work_dir = tmp_path_factory.mktemp('full_run')
    try:
        runner = _runner(work_dir, 'compat_full')
        runner.train()
    finally:
        DefaultScope._instance_dict = saved
        torch.set_num_threads(threads)
    assert runner.iter == 4
    return dict(
        work_dir=work_dir,
        ckpt2=str(work_dir / 'iter_2.pth'),
        ckpt4=str(work_dir / 'iter_4.pth'),
        weights={
            k: v.clone()
            for k, v in runner.model.state_dict().items()
        },
        optimizer=runner.optim_wrapper.optimizer.state_dict(),
        losses=runner.message_hub.get_scalar('train/loss').data[0].copy())


def test_checkpoint_loads_with_weights_only(trained):
    checkpoint = torch.load(trained['ckpt4'], map_location='cpu',
                            weights_only=True)
    assert checkpoint['meta']['iter'] == 4
    buffers = checkpoint['message_hub']['log_scalars']
    assert isinstance(buffers['train/loss'], HistoryBuffer)
    np.testing.assert_allclose(buffers['train/loss'].data[0],
                               trained['losses'])
    for key, value in trained['weights'].items():
        torch.testing.assert_close(checkpoint['state_dict'][key], value)
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
        # Everything the file names is allowlisted now.
        assert torch.serialization.get_unsafe_globals_in_checkpoint(
            trained['ckpt4']) == []


def test_mmengine_load_checkpoint(trained):
    model = ToyModel()
    checkpoint = load_checkpoint(model, trained['ckpt4'], map_location='cpu')
    assert checkpoint['meta']['iter'] == 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained['weights'][key])


def test_resume_loses_nothing(trained, tmp_path):
    record = RecordIters()
    runner = _runner(tmp_path, 'compat_resume', load_from=trained['ckpt2'],
                     resume=True, custom_hooks=[record])
    runner.train()
    assert runner.iter == 4
    assert record.iters == [3, 4]  # resumed after iteration 2
    assert runner.message_hub.get_info('iter') == 3
    # The message hub history came back with the checkpoint ...
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    np.testing.assert_allclose(losses, trained['losses'], atol=1e-6)
    # ... as did the optimizer (momentum) and the scheduler.
    assert runner.optim_wrapper.get_lr()['lr'] == [pytest.approx(0.01)]
    state = runner.optim_wrapper.optimizer.state_dict()['state']
    for index, expected in trained['optimizer']['state'].items():
        torch.testing.assert_close(state[index]['momentum_buffer'],
                                   expected['momentum_buffer'],
                                   atol=1e-6, rtol=0)
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(value, trained['weights'][key],
                                   atol=1e-6, rtol=0)


_NO_MMVHEAT = """
import json
import sys
import torch
ckpt = sys.argv[1]
result = dict(unsafe=torch.serialization.get_unsafe_globals_in_checkpoint(
    ckpt))
try:
    torch.load(ckpt, map_location='cpu')
    result['error'] = None
except Exception as e:  # noqa: B902
    result['error'] = f'{type(e).__name__}: {e}'
result['imported'] = 'mmvheat' in sys.modules
print(json.dumps(result))
"""


@pytest.mark.skipif(not SAFE_LOAD_BY_DEFAULT,
                    reason='torch < 2.6 loads with weights_only=False')
def test_checkpoint_needs_mmvheat_without_it(trained, tmp_path):
    """In a fresh interpreter, torch alone refuses the same checkpoint."""
    (tmp_path / 'load.py').write_text(_NO_MMVHEAT)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        [sys.executable, 'load.py', trained['ckpt4']],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result['imported']
    unsafe = result['unsafe']
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    assert any(name.startswith('numpy') for name in unsafe), unsafe
    assert result['error'] is not None
    assert 'Unsupported global' in result['error'], result['error']


# -- the allowlist stays safe -------------------------------------------------
class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):
        pass  # pickle wants a callable ``func``; never called here


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(dict(payload=obj), buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location='cpu', weights_only=True)


def _history():
    return HistoryBuffer([1., 2., 3.], [1, 1, 1])


def test_getattr_of_public_buffer_method_loads():
    loaded = _roundtrip(_Reduce(getattr, _history(), 'mean'))['payload']
    assert loaded() == pytest.approx(2.)
    loaded = _roundtrip(_Reduce(getattr, _history(), 'current'))['payload']
    assert loaded() == pytest.approx(3.)


@pytest.mark.parametrize('target,name', [
    (HistoryBuffer, '__init__'),
    (HistoryBuffer, '_set_default_statistics'),
    (HistoryBuffer, '__class__'),
    (HistoryBuffer, '__subclasses__'),
    (_history(), '__init__'),
    (_history(), '__reduce_ex__'),
    (_history(), '_log_history'),
    (_history(), 'max_length'),
])
def test_getattr_refused_by_mmvheat(target, name):
    with pytest.raises(pickle.UnpicklingError, match='mmvheat refuses'):
        _roundtrip(_Reduce(getattr, target, name))


@pytest.mark.parametrize('target,name', [
    (str, 'join'),
    (os.system, '__call__'),
    (subprocess.Popen, '__init__'),
])
def test_getattr_on_other_objects_refused(target, name):
    with pytest.raises(pickle.UnpicklingError):
        _roundtrip(_Reduce(getattr, target, name))


def test_calling_a_loaded_method_refused():
    """A method reached through the allowed getattr cannot be called."""
    history = _history()
    update = _Reduce(getattr, history, 'update')
    with pytest.raises(pickle.UnpicklingError):
        _roundtrip([history, _Reduce(update, 100.)])
    register = _Reduce(getattr, HistoryBuffer, 'register_statistics')
    with pytest.raises(pickle.UnpicklingError):
        _roundtrip(_Reduce(register, len))
    assert 'len' not in HistoryBuffer._statistics_methods


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
    compat.allow_mmengine_checkpoints()  # adding again is harmless
    _roundtrip(_Reduce(getattr, _history(), 'mean'))
