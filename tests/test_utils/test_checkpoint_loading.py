# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.utils.checkpoint_loading``: mmengine checkpoints under
``torch.load(weights_only=True)``, crafted files refused, trusted opt-in.

``import mmvheat`` (done first by ``tests/conftest.py``) installs the
allowlist. Crafted files are written as torch writes them (``torch.save`` of
objects whose ``__reduce__`` asks for what an attacker would, or raw pickle
opcodes in torch's zip layout); those that could corrupt memory are loaded in
a child interpreter, so that a crash fails a test instead of killing pytest.
"""
import argparse
import contextlib
import functools
import io
import json
import logging
import os
import os.path as osp
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict

import crafted
import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
from torch import nn
from torch.utils.data import Dataset

import mmvheat  # noqa: F401
import mmvheat.utils.safe_unpickling as safe_unpickling
from mmvheat.utils.checkpoint_loading import (CheckpointLoadError,
                                              CheckpointRefusedError,
                                              allow_mmengine_checkpoints,
                                              load_checkpoint_file,
                                              mmengine_checkpoint_loading)
from mmvheat.utils.io import ByteProgress


def _torch_version():
    return tuple(int(x) for x in re.findall(r'\d+', torch.__version__)[:2])


SAFE_LOAD_BY_DEFAULT = _torch_version() >= (2, 6)
pytestmark = pytest.mark.skipif(
    not hasattr(torch.serialization, 'add_safe_globals'),
    reason='torch < 2.4 has no weights_only allowlist')


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
    """Records each training iteration and its loss, as the model gave it."""

    def __init__(self):
        self.iters = []
        self.losses = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.iters.append(runner.iter + 1)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.losses.append(outputs['loss'].item())


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
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(
            type='MultiStepLR', milestones=[3], gamma=0.1, by_epoch=False),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """An uninterrupted 4-iteration run, checkpointed at iterations 2 and 4."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = DefaultScope._instance_dict.copy()
    work_dir = tmp_path_factory.mktemp('full_run')
    record = RecordIters()
    try:
        runner = _runner(work_dir, 'checkpoint_full', custom_hooks=[record])
        runner.train()
    finally:
        DefaultScope._instance_dict = saved
        torch.set_num_threads(threads)
    assert runner.iter == 4 and len(record.losses) == 4
    return dict(
        work_dir=work_dir,
        ckpt2=str(work_dir / 'iter_2.pth'),
        ckpt4=str(work_dir / 'iter_4.pth'),
        weights={
            k: v.clone()
            for k, v in runner.model.state_dict().items()
        },
        optimizer=runner.optim_wrapper.optimizer.state_dict(),
        losses=record.losses)


# -- what a load must leave as it was -----------------------------------------
_NUMPY_CODES = '?bBhHiIlLqQefdgFDGOV'


def _process_state():
    """What a crafted file must not change in this process."""
    import mmengine.registry as mm_registry
    from mmengine.registry import Registry

    from mmvheat.registry import MODELS
    registries = [
        v for v in vars(mm_registry).values() if isinstance(v, Registry)
    ] + [MODELS]
    return dict(
        history_buffer_class={
            k: v
            for k, v in vars(HistoryBuffer).items()
            if k != '_statistics_methods'
        },
        statistics_methods=dict(HistoryBuffer._statistics_methods),
        registries=[(r.name, r.scope, dict(r._module_dict))
                    for r in registries],
        numpy_dtypes={
            code: (np.dtype(code).__reduce__(), np.dtype(code).flags)
            for code in _NUMPY_CODES
        },
        safe_globals=set(torch.serialization.get_safe_globals()),
        checkpoint_loader=CheckpointLoader.__dict__['load_checkpoint'],
        checkpoint_schemes=dict(CheckpointLoader._schemes),
        torch_env={
            k: os.environ.get(k)
            for k in ('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
                      'TORCH_FORCE_WEIGHTS_ONLY_LOAD')
        })


def _buffer_statistics():
    """A new buffer's statistics, computed by HistoryBuffer itself."""
    buffer = HistoryBuffer([1., 5., 3.], [1, 1, 1])
    return {
        name: float(buffer.statistics(name))
        for name in ('min', 'max', 'current', 'mean')
    }


# Of [1, 5, 3] with unit counts.
EXPECTED_STATISTICS = dict(min=1., max=5., current=3., mean=3.)


@pytest.fixture
def unchanged_process():
    """Fails the test when the process state differs after it."""
    _buffer_statistics()  # the class has its default statistics
    before = _process_state()
    yield
    assert _process_state() == before
    assert _buffer_statistics() == EXPECTED_STATISTICS


# -- mmengine checkpoints still load ------------------------------------------
def test_runner_checkpoint_loads_with_weights_only(trained, unchanged_process):
    checkpoint = torch.load(
        trained['ckpt4'], map_location='cpu', weights_only=True)
    assert checkpoint['meta']['iter'] == 4
    assert checkpoint['meta']['seed'] == 0
    buffers = checkpoint['message_hub']['log_scalars']
    loss = buffers['train/loss']
    assert type(loss) is HistoryBuffer
    assert all(type(a) is np.ndarray for a in loss.data)
    # The hub keeps each iteration's loss (a float32 tensor's value) in a
    # float64 array: equal to the hook's .item() values exactly.
    np.testing.assert_array_equal(loss.data[0], trained['losses'])
    np.testing.assert_array_equal(loss.data[1], [1, 1, 1, 1])
    losses = np.asarray(trained['losses'], dtype=np.float64)
    # Sums of four float64 values: within a few ulps of numpy's mean.
    assert loss.mean() == pytest.approx(losses.mean(), rel=1e-12)
    assert loss.statistics('mean', 2) == pytest.approx(
        losses[-2:].mean(), rel=1e-12)
    assert loss.current() == losses[-1]
    assert loss.statistics('max') == losses.max()
    assert loss.min() == losses.min()
    # Set on the instance, the stock methods; the class is left alone.
    assert vars(loss)['_statistics_methods']['mean'] is HistoryBuffer.mean
    eta = checkpoint['message_hub']['runtime_info']['eta']
    assert type(eta) is np.float64
    for key, value in trained['weights'].items():
        torch.testing.assert_close(
            checkpoint['state_dict'][key], value, rtol=0, atol=0)
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
        # Everything the file names is allowlisted.
        assert torch.serialization.get_unsafe_globals_in_checkpoint(
            trained['ckpt4']) == []


def test_loaded_checkpoint_saves_and_loads_again(trained, tmp_path):
    checkpoint = load_checkpoint_file(trained['ckpt4'])
    path = str(tmp_path / 'again.pth')
    torch.save(checkpoint, path)
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
        # Plain numpy and mmengine names, nothing of mmvheat's.
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        assert names == []
        with zipfile.ZipFile(path) as archive:
            data = archive.read(
                next(n for n in archive.namelist() if n.endswith('data.pkl')))
        assert b'mmvheat' not in data
    again = load_checkpoint_file(path)
    loss = again['message_hub']['log_scalars']['train/loss']
    assert type(loss) is HistoryBuffer
    np.testing.assert_array_equal(loss.data[0], trained['losses'])
    # Full pickle reads the re-saved file as mmengine wrote it.
    full = torch.load(path, map_location='cpu', weights_only=False)
    np.testing.assert_array_equal(
        full['message_hub']['log_scalars']['train/loss'].data[0],
        trained['losses'])


def test_mmengine_load_checkpoint(trained, unchanged_process):
    model = ToyModel()
    checkpoint = load_checkpoint(model, trained['ckpt4'], map_location='cpu')
    assert checkpoint['meta']['iter'] == 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(
            value, trained['weights'][key], rtol=0, atol=0)


def test_resume_loses_nothing(trained, tmp_path):
    statistics_before = dict(HistoryBuffer._statistics_methods)
    record = RecordIters()
    runner = _runner(
        tmp_path,
        'checkpoint_resume',
        load_from=trained['ckpt2'],
        resume=True,
        custom_hooks=[record])
    runner.train()
    assert runner.iter == 4
    assert record.iters == [3, 4]  # resumed after iteration 2
    assert runner.message_hub.get_info('iter') == 3
    # The message hub history came back with the checkpoint, and its
    # statistics are those of the uninterrupted run's losses. Losses of a
    # resumed run match to float32 rounding of the restored state.
    losses = np.asarray(trained['losses'], dtype=np.float64)
    buffer = runner.message_hub.get_scalar('train/loss')
    np.testing.assert_allclose(buffer.data[0], losses, rtol=1e-6, atol=1e-7)
    assert buffer.mean() == pytest.approx(losses.mean(), rel=1e-6)
    assert buffer.statistics('mean', 2) == pytest.approx(
        losses[-2:].mean(), rel=1e-6)
    assert buffer.current() == pytest.approx(losses[-1], rel=1e-6)
    assert buffer.max() == pytest.approx(losses.max(), rel=1e-6)
    lr = runner.message_hub.get_scalar('train/lr')
    np.testing.assert_allclose(lr.data[0], [0.1, 0.1, 0.1, 0.01], rtol=1e-12)
    assert lr.current() == pytest.approx(0.01, rel=1e-12)
    # ... as did the optimizer (momentum) and the scheduler.
    assert runner.optim_wrapper.get_lr()['lr'] == [pytest.approx(0.01)]
    state = runner.optim_wrapper.optimizer.state_dict()['state']
    for index, expected in trained['optimizer']['state'].items():
        torch.testing.assert_close(
            state[index]['momentum_buffer'],
            expected['momentum_buffer'],
            atol=1e-6,
            rtol=0)
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(
            value, trained['weights'][key], atol=1e-6, rtol=0)
    assert dict(HistoryBuffer._statistics_methods) == statistics_before
    assert _buffer_statistics() == EXPECTED_STATISTICS


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


@pytest.mark.skipif(
    not SAFE_LOAD_BY_DEFAULT,
    reason='torch < 2.6 loads with weights_only=False')
def test_checkpoint_needs_mmvheat_without_it(trained, tmp_path):
    """In a fresh interpreter, torch alone refuses the same checkpoint."""
    (tmp_path / 'load.py').write_text(_NO_MMVHEAT)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)
    proc = subprocess.run([sys.executable, 'load.py', trained['ckpt4']],
                          cwd=str(tmp_path),
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result['imported']
    unsafe = result['unsafe']
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    assert any(name.startswith('numpy') for name in unsafe), unsafe
    assert result['error'] is not None
    assert 'Unsupported global' in result['error'], result['error']


def test_mmvheat_converted_checkpoint_loads(reference_dir, tmp_path,
                                            unchanged_process):
    from mmvheat.converters import convert_published_vheat
    from mmvheat.utils.io import save_checkpoint_atomic
    with open(
            osp.join(reference_dir,
                     'vheat_official_state_dict_shapes.json')) as f:
        tiny = json.load(f)['tiny']
    # Each key its own value, stored once (a few KB in all).
    published = OrderedDict(
        (key, torch.tensor(float(index)).expand(shape))
        for index, (key, shape) in enumerate(tiny['state_dict'].items()))
    converted = convert_published_vheat(published)
    meta = dict(
        source='published.pth',
        mmvheat_version=mmvheat.__version__,
        ema=False,
        layout='classification',
        arch=tiny['arch'],
        img_size=tiny['img_size'])
    path = str(tmp_path / 'vheat_converted.pth')
    save_checkpoint_atomic(dict(state_dict=converted, meta=meta), path)
    checkpoint = load_checkpoint_file(path)
    assert checkpoint['meta'] == meta
    assert list(checkpoint['state_dict']) == list(converted)
    for key, value in converted.items():
        assert torch.equal(checkpoint['state_dict'][key], value), key
    loaded = load_checkpoint(nn.Module(), path, strict=False)
    assert list(loaded['state_dict']) == list(converted)


NUMERIC_VALUES = dict(
    bool_array=np.array([True, False, True]),
    int8_array=np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
    uint16_array=np.arange(6, dtype=np.uint16),
    int64_array=np.array([2**40, -7], dtype=np.int64),
    float16_array=np.linspace(-1, 1, 5, dtype=np.float16),
    float32_fortran=np.asfortranarray(
        np.arange(12, dtype=np.float32).reshape(3, 4)),
    float64_3d=np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7,
    big_endian=np.arange(4, dtype='>f8'),
    complex128=np.array([1 + 2j, -3j]),
    longdouble=np.array([1.5, 2.25], dtype=np.longdouble),
    empty=np.zeros((0, 3)),
    zero_dim=np.array(4.5),
    bool_scalar=np.bool_(True),
    int32_scalar=np.int32(-12),
    uint64_scalar=np.uint64(2**63 + 5),
    float32_scalar=np.float32(0.1),
    float64_scalar=np.float64(1 / 3),
    complex64_scalar=np.complex64(1 - 1j),
)


def test_numeric_numpy_values_load(tmp_path, unchanged_process):
    path = str(tmp_path / 'numpy.pth')
    torch.save(
        dict(
            NUMERIC_VALUES,
            nested=[NUMERIC_VALUES['int8_array']],
            empty_buffer=HistoryBuffer()), path)
    loaded = load_checkpoint_file(path)
    assert type(loaded['empty_buffer']) is HistoryBuffer
    assert [len(a) for a in loaded['empty_buffer'].data] == [0, 0]
    # numpy's own unpickling is the reference (it gives big-endian arrays
    # back in native byte order, for one).
    reference = torch.load(path, map_location='cpu', weights_only=False)
    for name, value in NUMERIC_VALUES.items():
        got, expected = loaded[name], reference[name]
        assert isinstance(got, type(expected)), name
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected, strict=True)
        np.testing.assert_array_equal(got, value)
        if isinstance(value, np.ndarray):
            assert got.flags.f_contiguous == value.flags.f_contiguous, name
    np.testing.assert_array_equal(loaded['nested'][0],
                                  NUMERIC_VALUES['int8_array'])
    # An array from a checkpoint computes and prints as a plain one.
    array = loaded['float64_3d']
    assert repr(array) == repr(NUMERIC_VALUES['float64_3d'])
    np.testing.assert_array_equal(
        array.sum(axis=0), NUMERIC_VALUES['float64_3d'].sum(axis=0))
    # Its pickle names plain numpy, so any reader can load it.
    assert type(pickle.loads(pickle.dumps(array))) is np.ndarray


def test_allow_mmengine_checkpoints_is_idempotent(trained):
    allow_mmengine_checkpoints()
    before = set(torch.serialization.get_safe_globals())
    allow_mmengine_checkpoints()
    assert set(torch.serialization.get_safe_globals()) == before
    checkpoint = torch.load(
        trained['ckpt2'], map_location='cpu', weights_only=True)
    assert checkpoint['meta']['iter'] == 2


def test_no_real_numpy_or_history_buffer_class_admitted():
    """Only checking stand-ins carry the names mmengine's files use."""
    admitted = set()
    for entry in torch.serialization.get_safe_globals():
        admitted.add(entry[0] if isinstance(entry, tuple) else entry)
    real = {
        np.dtype, np.ndarray, HistoryBuffer, getattr,
        np.dtype('f8').__class__,
        np.dtype('O').__class__,
        np.dtype('V8').__class__
    }
    assert not admitted & real


# -- crafted files ------------------------------------------------------------
# The primitives of :mod:`crafted`, under this module's names.
_Reduce, _NewObj = crafted.Reduce, crafted.NewObj
_RECONSTRUCT = crafted.RECONSTRUCT
_opcode_unicode, _pickled = crafted.opcode_unicode, crafted.pickled


def _save(tmp_path, obj, name='crafted.pth'):
    path = str(tmp_path / name)
    torch.save(dict(payload=obj), path)
    return path


def _torch_archive(tmp_path, pickle_bytes, name='crafted.pth'):
    """A file in torch's zip layout whose ``data.pkl`` is ``pickle_bytes``."""
    return crafted.torch_archive(tmp_path / name, pickle_bytes)


_SCALAR = (
    np._core.multiarray.scalar
    if hasattr(np, '_core') else np.core.multiarray.scalar)

_HISTORY_BUFFER_GLOBAL = b'cmmengine.logging.history_buffer\nHistoryBuffer\n'


def _buffer_state(**changes):
    state = dict(
        max_length=1000,
        _log_history=np.array([1., 5., 3.]),
        _count_history=np.array([1, 1, 1]),
        statistics_methods={
            name: _Reduce(getattr, HistoryBuffer, name)
            for name in ('min', 'max', 'current', 'mean')
        })
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def _history_buffer(**changes):
    return _NewObj(HistoryBuffer, state=_buffer_state(**changes))


def _rebuild_from_type(func, new_type, args, state):
    return _Reduce(torch._tensor._rebuild_from_type_v2, func, new_type, args,
                   state)


def _stat(name, owner=HistoryBuffer):
    return _Reduce(getattr, owner, name)


def _build_class_file(tmp_path):
    """BUILD on the HistoryBuffer class itself (class attributes)."""
    body = (
        _HISTORY_BUFFER_GLOBAL + b'}' +
        _opcode_unicode('_statistics_methods') + b'}' + b's' + b'b')
    return _torch_archive(tmp_path, b'\x80\x02' + body + b'.')


def _build_twice_file(tmp_path):
    """A valid buffer state, then a second BUILD once it is a buffer."""
    state = _pickled(_buffer_state())
    foreign = _pickled(
        dict(_statistics_methods={'mean': _stat('max')}, max_length=1))
    body = (_HISTORY_BUFFER_GLOBAL + b')\x81' + state + b'b' + foreign + b'b')
    return _torch_archive(tmp_path, b'\x80\x02' + body + b'.')


# (id, payload or file builder, words the refusal must contain)
REFUSED = [
    ('statistics-rename',
     _history_buffer(statistics_methods={'mean': _stat('max')}),
     'statistics methods other than'),
    ('statistics-foreign-callable',
     _history_buffer(
         statistics_methods={'mean': torch._utils._rebuild_tensor_v2}),
     'statistics methods other than'),
    ('statistics-extra-name',
     _history_buffer(statistics_methods={'evil': _stat('mean')}),
     'statistics methods other than'),
    ('private-statistics-key',
     _history_buffer(_statistics_methods={'mean': _stat('min')}),
     'statistics methods other than'),
    ('unknown-state-key', _history_buffer(__setstate__=_stat('mean')),
     'HistoryBuffer state with keys'),
    ('history-as-list', _history_buffer(_log_history=[1., 2., 3.]),
     'not a restored 1-D numeric array'),
    ('history-2d',
     _history_buffer(
         _log_history=np.ones((3, 1)), _count_history=np.ones(
             (3, 1))), 'not a restored 1-D numeric array'),
    ('history-before-its-state',
     _history_buffer(
         _log_history=_Reduce(_RECONSTRUCT, np.ndarray, (0, ), b'b'),
         _count_history=np.array([], dtype=np.int8)),
     'not a restored 1-D numeric array'),
    ('history-lengths', _history_buffer(_count_history=np.array([1, 1])),
     'different lengths'),
    ('max-length', _history_buffer(max_length=0), 'max_length'),
    ('buffer-call', _Reduce(HistoryBuffer, [1e9], [1]), 'HistoryBuffer(...)'),
    ('buffer-newobj-args', _NewObj(HistoryBuffer, [1e9],
                                   [1]), 'HistoryBuffer(...) with arguments'),
    ('build-class', _build_class_file, 'Can only build'),
    ('build-twice', _build_twice_file, 'Can only build'),
    ('getattr-register', _stat('register_statistics'),
     "getattr(HistoryBuffer, 'register_statistics')"),
    ('getattr-setstate', _stat('__setstate__'),
     "getattr(HistoryBuffer, '__setstate__')"),
    ('getattr-class-dict', _stat('_statistics_methods'),
     "getattr(HistoryBuffer, '_statistics_methods')"),
    ('getattr-mro', _stat('mro'), "getattr(HistoryBuffer, 'mro')"),
    ('getattr-subclasses', _stat('__subclasses__'),
     "getattr(HistoryBuffer, '__subclasses__')"),
    ('getattr-instance', _stat('mean', owner=_history_buffer()),
     "getattr(a HistoryBuffer, 'mean')"),
    ('getattr-str', _Reduce(getattr, 'text',
                            'join'), "getattr(a str, 'join')"),
    ('rebuild-calls-register',
     _rebuild_from_type(
         _stat('register_statistics'), HistoryBuffer,
         (torch._utils._rebuild_tensor_v2, ),
         {}), "getattr(HistoryBuffer, 'register_statistics')"),
    ('rebuild-calls-statistic',
     _rebuild_from_type(
         _stat('mean'), HistoryBuffer, (_history_buffer(), ),
         {}), 'a call of HistoryBuffer.mean'),
    ('rebuild-sets-class-dict',
     _rebuild_from_type(getattr, HistoryBuffer,
                        (HistoryBuffer, '_statistics_methods'),
                        {'mean': _stat('max')}),
     "getattr(HistoryBuffer, '_statistics_methods')"),
    ('rebuild-constructs-buffer',
     _rebuild_from_type(HistoryBuffer, HistoryBuffer, (),
                        _buffer_state()), 'HistoryBuffer(...)'),
    ('rebuild-dtype-flags',
     _rebuild_from_type(np.dtype, np.dtype, ('f8', False, False),
                        (3, '<', None, None, None, -1, -1, 1)),
     'numpy dtype state'),
    ('bytes-call', _Reduce(bytes, 1 << 40), 'bytes(...) with arguments'),
    ('os-system', _Reduce(os.system, 'echo crafted > crafted.txt'),
     'refused global posix.system'),
    ('eval', _Reduce(eval, '1 + 1'), 'refused global builtins.eval'),
    ('exec', _Reduce(exec, 'x = 1'), 'refused global builtins.exec'),
    ('namespace', argparse.Namespace(lr=0.1),
     'refused global argparse.Namespace'),
]


def _crafted_file(tmp_path, payload):
    if callable(payload) and not isinstance(payload, (_Reduce, _NewObj)):
        return payload(tmp_path)
    return _save(tmp_path, payload)


@pytest.mark.parametrize(
    'payload,words', [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED])
def test_crafted_file_refused(payload, words, tmp_path, monkeypatch,
                              unchanged_process):
    path = _crafted_file(tmp_path, payload)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointRefusedError) as info:
        load_checkpoint_file(path)
    message = str(info.value)
    assert words in message
    assert message.startswith(f'{path}: ')
    assert '--trust-checkpoint' in message
    assert '\n' not in message
    # torch.load itself refuses too, whatever the caller.
    with pytest.raises((CheckpointRefusedError, pickle.UnpicklingError)):
        torch.load(path, map_location='cpu', weights_only=True)
    assert not (tmp_path / 'crafted.txt').exists()


def test_trusted_file_with_namespace_loads(tmp_path):
    args = argparse.Namespace(lr=0.1, work_dir='x')
    path = _save(tmp_path, args)
    with pytest.raises(
            CheckpointRefusedError,
            match='argparse.Namespace.*--trust-checkpoint'):
        load_checkpoint_file(path)
    assert load_checkpoint_file(path, trust=True)['payload'] == args


def test_a_trusted_load_warns(tmp_path):
    path = _save(tmp_path, argparse.Namespace(lr=0.1))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        load_checkpoint_file(_save(tmp_path, dict(w=1), 'plain.pth'))
        assert records == []
        load_checkpoint_file(path, trust=True)
    finally:
        logger.removeHandler(handler)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, f'Loading {path} with full pickle '
         '(--trust-checkpoint): it can run any code the file names.')
    ]


# -- crafted files that could corrupt memory, in a child interpreter ----------
_CHILD = r'''
import json
import sys

import mmvheat  # noqa: F401
import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from mmvheat.utils.checkpoint_loading import load_checkpoint_file

CODES = '?bBhHiIlLqQefdgFDGOV'


def numpy_state():
    return repr([(np.dtype(c).__reduce__(), np.dtype(c).flags)
                 for c in CODES])


def use(value):
    """What a program does with loaded values: print them, read fields."""
    if isinstance(value, dict):
        for item in value.values():
            use(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            use(item)
    elif isinstance(value, np.ndarray):
        repr(value)
        for name in value.dtype.names or ():
            repr(value[name])
    else:
        repr(value)


def history_state():
    buffer = HistoryBuffer([1., 5., 3.], [1, 1, 1])
    return repr(sorted(HistoryBuffer._statistics_methods.items())), [
        float(buffer.statistics(name)) for name in ('min', 'max', 'mean')]


for case, path in json.loads(sys.argv[1]):
    print(json.dumps(dict(case=case, started=True)), flush=True)
    before = numpy_state(), history_state()
    result = dict(case=case)
    for loader in ('torch.load', 'load_checkpoint_file'):
        try:
            if loader == 'torch.load':
                value = torch.load(path, map_location='cpu',
                                   weights_only=True)
            else:
                value = load_checkpoint_file(path)
            use(value)
            result[loader] = dict(loaded=repr(value)[:200])
        except Exception as exc:
            result[loader] = dict(error=type(exc).__name__,
                                  message=str(exc))
    # float64 still adds up, and nothing else moved.
    result['arithmetic'] = float(np.arange(10.).sum())
    result['unchanged'] = (numpy_state(), history_state()) == before
    print(json.dumps(result), flush=True)
'''


def _dtype_state(flags=0, names=None, fields=None, endian='<', size=-1):
    return (3, endian, None, names, fields, size, -1, flags)


def _dtype(spec, state, copy=True):
    return _Reduce(np.dtype, spec, False, copy, state=state)


def _array(dtype, shape, data):
    return _Reduce(
        _RECONSTRUCT,
        np.ndarray, (0, ),
        b'b',
        state=(1, shape, dtype, False, data))


def _scalar(dtype, data):
    return _Reduce(_SCALAR, dtype, data)


_POINTERS = struct.pack('<2Q', 0x4141414141414141, 0x10)
_FLOAT64 = _dtype('f8', _dtype_state())
# numpy's object dtype, as it pickles (flags: holds references).
_OBJECT = _dtype('O8', _dtype_state(flags=63, endian='|'))


def _structured_array(fields, flags=0):
    """A one-item array of a 16-byte void dtype with ``fields``
    (name: (dtype, offset)) and the given dtype flags."""
    dtype = _dtype(
        'V16',
        _dtype_state(
            endian='|',
            names=tuple(fields),
            fields=fields,
            size=16,
            flags=flags))
    return _array(dtype, (1, ), _POINTERS)


def _array_state_set_twice(tmp_path):
    """An array shared with a tensor (``from_numpy``), then given a new,
    smaller state: the tensor would read freed memory."""
    body = (
        _pickled(np.ones(1 << 16)) + b'q\xff' +  # the array, as memo 255
        b'ctorch._utils\n_rebuild_device_tensor_from_numpy\n' + b'(h\xff' +
        b'ctorch\nfloat64\n' + _opcode_unicode('cpu') +
        b'\x89tR' +  # (array, torch.float64, 'cpu', False) -> a tensor
        b'h\xff' + _pickled((1, (2, ), np.dtype('f8'), False, bytes(16))) +
        b'b' +  # BUILD the array again
        b'\x86')  # (tensor, array)
    return _torch_archive(tmp_path, b'\x80\x02' + body + b'.',
                          'array-state-set-twice.pth')


# (id, payload or file builder, words the refusal must contain)
MEMORY_UNSAFE = [
    ('object-array', _array(_OBJECT, (2, ), _POINTERS), "numpy dtype 'O8'"),
    ('void-array',
     _array(
         _dtype('V16', _dtype_state(endian='|', size=16)), (1, ),
         _POINTERS), "numpy dtype 'V16'"),
    ('structured-object-field',
     _structured_array(dict(a=(_OBJECT, 0), b=(_FLOAT64, 8)),
                       flags=63), "numpy dtype 'V16'"),
    ('structured-object-field-flags-cleared',
     _structured_array(dict(a=(_OBJECT, 0),
                            b=(_FLOAT64, 8))), "numpy dtype 'V16'"),
    ('structured-numeric',
     _structured_array(dict(a=(_FLOAT64, 0),
                            b=(_FLOAT64, 8))), "numpy dtype 'V16'"),
    ('float-told-it-holds-objects',
     _array(_dtype('f8', _dtype_state(flags=63)), (2, ),
            _POINTERS), 'numpy dtype state'),
    ('float-with-fields-past-its-end',
     _array(
         _dtype('f8',
                _dtype_state(names=('a', ),
                             fields={'a': (_FLOAT64, 1 << 40)})), (2, ),
         _POINTERS), 'numpy dtype state'),
    ('shared-float64-flags', _dtype('f8', _dtype_state(flags=63),
                                    copy=False), 'numpy dtype state'),
    ('datetime-array',
     _array(
         _dtype('M8', (4, '<', None, None, None, -1, -1, 0,
                       (None, (b'ns', 1, 1, 1)))), (2, ),
         _POINTERS), "numpy dtype 'M8'"),
    ('object-scalar', _scalar(_OBJECT, _POINTERS[:8]), "numpy dtype 'O8'"),
    ('scalar-short-data', _scalar(_FLOAT64, b'\x00' * 4),
     'numpy float64 scalar from bytes data'),
    ('array-short-data', _array(_FLOAT64, (4, ), _POINTERS), 'from 16 bytes'),
    ('array-object-list', _array(_FLOAT64, (2, ),
                                 [1.0, 2.0]), 'numpy array state'),
    ('array-newobj-buffer',
     _NewObj(np.ndarray, (2, ), _FLOAT64, _POINTERS, 0,
             (1 << 20, )), 'numpy.ndarray(...)'),
    ('array-state-set-twice', _array_state_set_twice,
     'a second state for one numpy array'),
    ('reconstruct-other-type', _Reduce(_RECONSTRUCT, np.ndarray, (2, ),
                                       b'O'), 'numpy _reconstruct arguments'),
    ('reconstruct-sized', _Reduce(_RECONSTRUCT, np.ndarray, (5, ),
                                  b'b'), 'numpy _reconstruct arguments'),
    ('dtype-named-otherwise',
     _array(_dtype('float64', _dtype_state()), (1, ),
            bytes(8)), "numpy dtype 'float64'"),
    ('dtype-of-no-such-size',
     _array(_dtype('f1', _dtype_state(endian='|')), (1, ),
            bytes(1)), "numpy dtype 'f1': no such dtype"),
    ('dtype-align-argument',
     _array(
         _Reduce(np.dtype, 'f8', 2, True, state=_dtype_state()), (1, ),
         bytes(8)), 'numpy dtype arguments'),
    ('dtype-byte-order',
     _array(_dtype('f8', _dtype_state(endian='|')), (1, ),
            bytes(8)), 'numpy dtype state'),
    ('array-33-dims', _array(_FLOAT64, (1, ) * 33,
                             bytes(8)), 'numpy array state'),
    ('array-negative-sides', _array(_FLOAT64, (-1, -2),
                                    bytes(16)), 'numpy array state'),
    ('array-past-numpy-index', _array(_FLOAT64, (1 << 40, 1 << 40, 0),
                                      b''), 'larger than numpy can index'),
]


@pytest.fixture(scope='module')
def memory_unsafe_results(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('memory_unsafe')
    cases = []
    for name, payload, _ in MEMORY_UNSAFE:
        if isinstance(payload, (_Reduce, _NewObj)):
            cases.append((name, _save(tmp_path, payload, f'{name}.pth')))
        else:
            cases.append((name, payload(tmp_path)))
    (tmp_path / 'child.py').write_text(_CHILD)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, 'child.py',
                           json.dumps(cases)],
                          cwd=str(tmp_path),
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    results, started = {}, None
    for line in proc.stdout.splitlines():
        if not line.startswith('{'):
            continue
        record = json.loads(line)
        if record.get('started'):
            started = record['case']
        else:
            results[record['case']] = record
    return dict(
        returncode=proc.returncode,
        results=results,
        last_started=started,
        stderr=proc.stderr[-3000:])


@pytest.mark.parametrize(
    'name,words', [(c[0], c[2]) for c in MEMORY_UNSAFE],
    ids=[c[0] for c in MEMORY_UNSAFE])
def test_memory_unsafe_file_refused(name, words, memory_unsafe_results):
    outcome = memory_unsafe_results
    result = outcome['results'].get(name)
    assert result is not None, (
        f'the child interpreter died (exit {outcome["returncode"]}) while '
        f'loading {outcome["last_started"]!r}:\n{outcome["stderr"]}')
    for loader in ('torch.load', 'load_checkpoint_file'):
        assert result[loader].get('error') == 'CheckpointRefusedError', (
            loader, result[loader])
        assert words in result[loader]['message'], result[loader]
        assert '--trust-checkpoint' in result[loader]['message']
    assert result['arithmetic'] == 45.
    assert result['unchanged']


# -- trusted opt-in through mmengine's loader ---------------------------------
@pytest.fixture
def namespace_checkpoint(trained, tmp_path):
    """The iteration-2 checkpoint with the argparse Namespace of its run."""
    checkpoint = torch.load(
        trained['ckpt2'], map_location='cpu', weights_only=True)
    checkpoint['meta']['args'] = argparse.Namespace(lr=0.1, amp=False)
    path = str(tmp_path / 'with_namespace.pth')
    torch.save(checkpoint, path)
    return path


def test_mmengine_loader_refuses_and_trusts(namespace_checkpoint):
    """``import mmvheat`` guards mmengine's loader for the whole process:
    refused outside the context too; trusted only inside it."""
    model = ToyModel()
    guard = CheckpointLoader.__dict__['load_checkpoint']
    assert guard.__func__.guarded
    for context in (contextlib.nullcontext(), mmengine_checkpoint_loading()):
        with context, pytest.raises(CheckpointRefusedError) as info:
            load_checkpoint(model, namespace_checkpoint, map_location='cpu')
        assert 'argparse.Namespace' in str(info.value)
        assert '--trust-checkpoint' in str(info.value)
        assert '\n' not in str(info.value)
    with mmengine_checkpoint_loading(trust=True):
        checkpoint = load_checkpoint(
            model, namespace_checkpoint, map_location='cpu')
    assert checkpoint['meta']['args'] == argparse.Namespace(lr=0.1, amp=False)
    assert CheckpointLoader.__dict__['load_checkpoint'] is guard
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    # Trust does not outlive the context.
    with pytest.raises(CheckpointRefusedError):
        load_checkpoint(model, namespace_checkpoint, map_location='cpu')


def test_trusted_resume(namespace_checkpoint, trained, tmp_path):

    def resume():
        runner = _runner(
            tmp_path,
            'trusted_resume',
            load_from=namespace_checkpoint,
            resume=True)
        runner.train()
        return runner

    with mmengine_checkpoint_loading():
        with pytest.raises(CheckpointRefusedError, match='argparse.Namespace'):
            resume()
    with mmengine_checkpoint_loading(trust=True):
        runner = resume()
    assert runner.iter == 4
    losses = np.asarray(trained['losses'], dtype=np.float64)
    buffer = runner.message_hub.get_scalar('train/loss')
    # Float32 rounding of the restored state, as in test_resume_loses_nothing.
    np.testing.assert_allclose(buffer.data[0], losses, rtol=1e-6, atol=1e-7)


# -- unreadable files ---------------------------------------------------------
def _records(path) -> dict:
    """The records of the zip archive ``path``, name: bytes, in order."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _pickle_name(records: dict) -> str:
    return next(name for name in records if name.endswith('/data.pkl'))


def _with_pickle(records: dict, data: bytes) -> bytes:
    """An archive of ``records`` whose ``data.pkl`` is ``data``."""
    name = _pickle_name(records)
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w') as archive:
        for record, content in records.items():
            archive.writestr(record, data if record == name else content)
    return out.getvalue()


def _corrupt_files(tmp_path):
    good = str(tmp_path / 'good.pth')
    torch.save(dict(state_dict=dict(w=torch.arange(6.))), good)
    raw = open(good, 'rb').read()
    files = dict(
        truncated=raw[:len(raw) // 2],
        tail_cut=raw[:-10],
        empty=b'',
        text=b'not a checkpoint\n',
        # An unpickler reads 't' as TUPLE, which fails on an empty stack.
        prose=b'this is not a checkpoint\n',
        zeros=bytes(256))
    records = _records(good)
    data = records[_pickle_name(records)]
    files['pickle_truncated'] = _with_pickle(records, data[:len(data) // 2])
    files['pickle_foreign'] = _with_pickle(records, b'\x00 not a pickle')
    paths = {}
    for name, content in files.items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(content)
        paths[name] = str(path)
    paths['missing'] = str(tmp_path / 'missing.pth')
    paths['directory'] = str(tmp_path)
    return paths


_CUT = 'cannot be read as a PyTorch checkpoint, truncated or corrupt ('
_OTHER_KIND = 'is not a PyTorch checkpoint (corrupt, or another kind of file)'
CORRUPT = dict(
    truncated=_CUT,
    tail_cut=_CUT,
    empty='is empty',
    text=_OTHER_KIND,
    prose=_OTHER_KIND,
    zeros=_OTHER_KIND,
    pickle_foreign=_OTHER_KIND,
    missing='no such file',
    directory='is a directory, not a checkpoint file')


@pytest.mark.parametrize('name', CORRUPT)
@pytest.mark.parametrize('trust', [False, True])
def test_unreadable_file(name, trust, tmp_path):
    path = _corrupt_files(tmp_path)[name]
    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_file(path, trust=trust)
    message = str(info.value)
    assert message.startswith(f'{path}: {CORRUPT[name]}')
    assert '\n' not in message
    assert not isinstance(info.value, CheckpointRefusedError)


def test_progress_counts_the_file(tmp_path):
    path = tmp_path / 'c.pth'
    weights = dict(w=torch.arange(50000.))
    torch.save(dict(state_dict=weights), path)
    progress = ByteProgress('reading', stream=io.StringIO())
    loaded = load_checkpoint_file(path, progress=progress)
    assert torch.equal(loaded['state_dict']['w'], weights['w'])
    size = path.stat().st_size
    assert progress.total == size
    # Every byte of the tensor passes through the counter (the reader
    # reads parts of the zip index more than once).
    assert progress.done >= weights['w'].numel() * 4


def test_truncated_pickle(tmp_path):
    """A pickle cut short inside an intact archive, where it ends in a
    half-written global name: corrupt, not refused, whether trusted or
    not."""
    path = _corrupt_files(tmp_path)['pickle_truncated']
    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_file(path)
    assert str(info.value) == (
        f'{path}: cannot be read as a PyTorch checkpoint, truncated or '
        'corrupt (pickle data was truncated)')
    with pytest.raises(CheckpointLoadError, match='truncated or corrupt'):
        load_checkpoint_file(path, trust=True)


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_every_cut_of_a_checkpoint_is_corrupt(legacy, tmp_path):
    """A checkpoint cut short anywhere (its pickle inside torch's archive,
    or the whole file in the legacy format) is truncated or corrupt, in one
    line, trusted or not and through mmengine's loader: never a refused
    global (torch's unpickler reads a global's name cut short as another
    name) and never a traceback."""
    checkpoint = dict(
        state_dict=dict(w=torch.arange(6.)),
        meta=dict(iter=3, lr=0.5, note='x'))
    whole = tmp_path / 'whole.pth'
    torch.save(checkpoint, whole, _use_new_zipfile_serialization=not legacy)
    if legacy:
        raw = whole.read_bytes()
        cuts = [raw[:end] for end in range(1, len(raw))]
    else:
        records = _records(whole)
        data = records[_pickle_name(records)]
        cuts = [_with_pickle(records, data[:end]) for end in range(len(data))]
    path = str(tmp_path / 'cut.pth')
    loaders = dict(
        safe=load_checkpoint_file,
        trusted=functools.partial(load_checkpoint_file, trust=True),
        mmengine=functools.partial(_load_checkpoint, map_location='cpu'))
    for end, data in enumerate(cuts):
        with open(path, 'wb') as file:
            file.write(data)
        for loader, load in loaders.items():
            with pytest.raises(CheckpointLoadError) as info:
                load(path)
            message = str(info.value)
            assert not isinstance(
                info.value, CheckpointRefusedError), (loader, end, message)
            assert message.startswith(f'{path}: {_CUT}'), (loader, end,
                                                           message)
            assert '\n' not in message, (loader, end, message)


@pytest.mark.parametrize('name', ['truncated', 'missing', 'prose', 'empty'])
def test_unreadable_file_through_mmengine(name, tmp_path):
    path = _corrupt_files(tmp_path)[name]
    with mmengine_checkpoint_loading():
        with pytest.raises(CheckpointLoadError) as info:
            load_checkpoint(ToyModel(), path, map_location='cpu')
    assert str(info.value).startswith(f'{path}: {CORRUPT[name]}')
    assert '\n' not in str(info.value)


def test_error_types_are_distinct():
    assert issubclass(CheckpointLoadError, ValueError)
    assert issubclass(CheckpointRefusedError, ValueError)
    assert not issubclass(CheckpointRefusedError, CheckpointLoadError)
    assert not issubclass(CheckpointLoadError, CheckpointRefusedError)
    # Refusals raised inside torch's unpickler pass through it unchanged.
    assert not issubclass(CheckpointRefusedError, pickle.UnpicklingError)


# -- refusals through the progress path, and their words ----------------------
# How every refusal ends.
_REFUSAL_ADVICE = (
    '(weights_only=True builds only tensors, containers, numbers and the '
    'objects mmengine writes); pass --trust-checkpoint only if you trust the '
    'file')


@pytest.mark.parametrize(
    'payload,words', [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED])
def test_crafted_file_refused_while_counting_bytes(payload, words, tmp_path,
                                                   monkeypatch,
                                                   unchanged_process):
    """The tools read through a :class:`ByteProgress`: that path loads
    with the same safe unpickler, so it refuses the same files (and runs
    none of their code) with the same one-line message."""
    path = _crafted_file(tmp_path, payload)
    monkeypatch.chdir(tmp_path)
    progress = ByteProgress('reading', stream=io.StringIO())
    with pytest.raises(CheckpointRefusedError) as info:
        load_checkpoint_file(path, progress=progress)
    message = str(info.value)
    assert words in message
    assert message.startswith(f'{path}: ')
    assert message.endswith(_REFUSAL_ADVICE)
    assert '\n' not in message
    assert progress.total == os.path.getsize(path)  # the counted read
    assert not (tmp_path / 'crafted.txt').exists()


@pytest.mark.parametrize(
    'shape, data', [((4, ), bytes(16)), ((1, ), bytes(16)),
                    ((2, 0, 3), bytes(8))],
    ids=['short', 'long', 'empty-shape'])
def test_array_data_of_the_wrong_length_refused(shape, data, tmp_path):
    """An array's bytes must be exactly its shape's worth of items.

    numpy rejects a short or long buffer too, with a ``ValueError`` of its
    own and before reading it (so these files load in this process); the
    loader's refusal comes first and names the shape, the dtype and the
    byte count.
    """
    path = _save(tmp_path, _array(_FLOAT64, shape, data))
    with pytest.raises(CheckpointRefusedError) as info:
        load_checkpoint_file(path)
    assert str(info.value) == (
        f'{path}: refused numpy array of shape {shape} and dtype float64 '
        f'from {len(data)} bytes {_REFUSAL_ADVICE}')


def test_dtype_kind_checked_beside_its_name(tmp_path, monkeypatch):
    """Two checks keep other dtypes out, each enough alone: the name must
    be one numpy writes for a numeric or bool dtype, and the dtype numpy
    builds from it must be one."""
    monkeypatch.setattr(safe_unpickling, '_DTYPE_SPEC', re.compile('.*'))
    path = _save(tmp_path,
                 _array(_dtype('M8', _dtype_state()), (1, ), bytes(8)))
    with pytest.raises(
            CheckpointRefusedError, match="numpy dtype 'M8' of kind 'M'"):
        load_checkpoint_file(path)
