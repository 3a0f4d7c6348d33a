# Copyright (c) mmvheat contributors. All rights reserved.
"""What an untrusted load leaves, what it may allocate, and how mmengine's
loader is guarded: :mod:`mmvheat.utils.safe_unpickling` and the guard of
:mod:`mmvheat.utils.checkpoint_loading`, in this process.

The tools a user runs are tested on the same files in
``tests/test_tools/test_trust.py``; here each rule is pinned on its own.
"""
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict

import crafted
import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

import mmvheat  # noqa: F401
from mmvheat.utils.checkpoint_loading import (CheckpointRefusedError,
                                              _literal_gpu_ids,
                                              load_checkpoint_file)
from mmvheat.utils.safe_unpickling import plain_data


def _load(tmp_path, obj):
    return load_checkpoint_file(crafted.save(tmp_path / 'c.pth', obj))


#: A float64 dtype as numpy pickles it: loaded as a stand-in first.
_DTYPE = crafted.Reduce(
    np.dtype, 'f8', False, True, state=(3, '<', None, None, None, -1, -1, 0))


# -- no stand-in left ---------------------------------------------------------
def test_numpy_values_come_back_plain(tmp_path):
    values = dict(
        array=np.arange(3.),
        nested=[(np.float32(1.5), np.arange(2, dtype=np.int64))],
        buffer=HistoryBuffer([1., 2.], [1, 1]))
    loaded = _load(tmp_path, values)
    assert type(loaded['array']) is np.ndarray
    assert type(loaded['nested'][0]) is tuple
    assert type(loaded['nested'][0][0]) is np.float32
    assert type(loaded['nested'][0][1]) is np.ndarray
    np.testing.assert_array_equal(loaded['nested'][0][1], [0, 1])
    assert type(loaded['buffer']) is HistoryBuffer
    assert type(loaded['buffer']._log_history) is np.ndarray


def test_shared_and_self_holding_containers(tmp_path):
    shared = [np.arange(2.)]
    looped = [1]
    looped.append(looped)
    loaded = _load(tmp_path, dict(a=shared, b=shared, looped=looped))
    assert loaded['a'] is loaded['b']
    assert type(loaded['a'][0]) is np.ndarray
    assert loaded['looped'][1] is loaded['looped']


@pytest.mark.parametrize(
    'payload,words',
    [(crafted.NewObj(HistoryBuffer), 'a HistoryBuffer without its state'),
     (crafted.Reduce(crafted.RECONSTRUCT, np.ndarray,
                     (0, ), b'b'), 'a numpy array without its state'),
     (crafted.Reduce(getattr, HistoryBuffer,
                     'mean'), 'HistoryBuffer.mean outside a HistoryBuffer'),
     (crafted.Reduce(torch._utils._rebuild_parameter, torch.ones(2), True,
                     OrderedDict([(0, torch.device('cpu'))
                                  ])), 'a tensor that carries backward hooks'),
     (crafted.Reduce(torch._utils._rebuild_parameter_with_state, torch.ones(2),
                     True, OrderedDict(), dict(backward=1)),
      "a tensor with the attributes ['backward']"),
     ({
         _DTYPE: 1
     }, 'a dictionary key of type _PickledDtype'),
     ({_DTYPE}, 'a set of numpy or HistoryBuffer objects')],
    ids=[
        'buffer-without-state', 'array-without-state', 'statistic-alone',
        'tensor-hooks', 'tensor-attributes', 'dict-key', 'set'
    ])
def test_what_must_not_stay_is_refused(payload, words, tmp_path):
    with pytest.raises(CheckpointRefusedError) as info:
        _load(tmp_path, dict(payload=payload))
    assert words in str(info.value)


@pytest.mark.parametrize('item', [np.arange(2.), 5], ids=['array', 'int'])
def test_a_tuple_that_holds_itself_is_refused(item, tmp_path):
    # Its plain form could not hold itself: a stand-in would stay reachable
    # through the old tuple.
    path = crafted.self_holding_tuple(tmp_path / 'c.pth', item)
    with pytest.raises(CheckpointRefusedError, match='a tuple that holds'):
        load_checkpoint_file(path)


class _TensorSubclass(torch.Tensor):
    pass


def test_what_others_allowlist_does_not_pass_the_checks(tmp_path):
    """A user may allowlist numpy's dtype classes (torch's refusal suggests
    it) or a tensor subclass: their objects still never reach a loaded
    array's state or what a load returns."""
    dtype = crafted.Reduce(np.dtypes.Float64DType)
    array = crafted.Reduce(
        crafted.RECONSTRUCT,
        np.ndarray, (0, ),
        b'b',
        state=(1, (1, ), dtype, False, bytes(8)))
    with torch.serialization.safe_globals([np.dtypes.Float64DType]):
        with pytest.raises(
                CheckpointRefusedError,
                match='numpy dtype given as Float64DType'):
            _load(tmp_path, dict(array=array))
    tensor = torch.ones(2).as_subclass(_TensorSubclass)
    with torch.serialization.safe_globals([_TensorSubclass]):
        with pytest.raises(
                CheckpointRefusedError,
                match='a tensor of type _TensorSubclass'):
            _load(tmp_path, dict(tensor=tensor))


def test_ordered_dict_keeps_only_torch_metadata(tmp_path):
    state = torch.nn.BatchNorm2d(2).state_dict()
    loaded = _load(tmp_path, state)
    assert vars(loaded) == {'_metadata': OrderedDict([('', {'version': 2})])}
    for name in ('items', 'keys', 'get', '__deepcopy__'):
        shadowed = crafted.ordered_dict([('w', torch.ones(1))],
                                        {name: torch.device('cpu')})
        with pytest.raises(
                CheckpointRefusedError, match=rf"the attributes \['{name}'\]"):
            _load(tmp_path, shadowed)
    beside = crafted.ordered_dict(
        [('w', torch.ones(1))],
        dict(_metadata=OrderedDict([('', dict(version=1))]), items=1))
    with pytest.raises(
            CheckpointRefusedError,
            match=r"the attributes \['_metadata', 'items'\]"):
        _load(tmp_path, beside)
    odd = torch.nn.Linear(1, 1).state_dict()
    odd._metadata[''] = dict(version='1; import os')
    with pytest.raises(CheckpointRefusedError, match="'_metadata'"):
        _load(tmp_path, odd)


def test_plain_data_needs_no_recursion():
    deep = []
    for _ in range(100000):
        deep = [deep]
    assert plain_data(deep) is deep


# -- sizes a file asks for ----------------------------------------------------
def _peak_rss_of(code: str) -> int:
    """Peak resident memory (bytes) of a child that runs ``code`` after
    importing mmvheat, and its output."""
    proc = subprocess.run([
        sys.executable, '-c', 'import mmvheat, resource\n' + code +
        '\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)'
    ],
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return int(lines[-1]) * 1024, lines[:-1]


@pytest.mark.parametrize(
    'slot', [None, 0, 3], ids=['zip', 'legacy-magic', 'legacy-objects'])
def test_bytearray_is_refused_before_it_allocates(slot, tmp_path):
    # 3 GiB from a file of under a kilobyte, in torch's zip format or in
    # its legacy one, in the place of the magic number or of the objects.
    if slot is None:
        path = crafted.bytearray_bomb(tmp_path / 'b.pth', 3 << 30)
    else:
        path = crafted.legacy_bytearray_bomb(tmp_path / 'b.pth', 3 << 30, slot)
    assert os.path.getsize(path) < 1024
    code = (f'from mmvheat.utils.checkpoint_loading import '
            f'load_checkpoint_file\ntry:\n    load_checkpoint_file({path!r})'
            f'\nexcept Exception as exc:\n    print(exc)')
    peak, printed = _peak_rss_of(code)
    assert printed and 'refused global builtins.bytearray' in printed[0]
    baseline, _ = _peak_rss_of('pass')
    assert peak - baseline < 64 << 20, (peak, baseline)


def test_compressed_records_within_bounds_load(tmp_path):
    """A checkpoint someone zipped again with compression still loads:
    only records that inflate far beyond the file are refused."""
    plain = crafted.save(tmp_path / 'plain.pth', dict(w=torch.zeros(4096)))
    packed = tmp_path / 'packed.pth'
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(
            packed, 'w', zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert os.path.getsize(packed) < os.path.getsize(plain) / 4
    assert torch.equal(load_checkpoint_file(packed)['w'], torch.zeros(4096))
    bomb = crafted.deflate_bomb(tmp_path / 'bomb.pth', 64 << 20)
    with pytest.raises(CheckpointRefusedError, match='records declare 67,1'):
        load_checkpoint_file(bomb)


# -- the config text a resume would run ---------------------------------------
@pytest.mark.parametrize('text,ids', [
    ('gpu_ids = [0, 1]\nlr = 0.1', [0, 1]),
    ('gpu_ids = range(0, 4)', [0, 1, 2, 3]),
    ('gpu_ids = (2, )', [2]),
    ('gpu_ids = [0]\ngpu_ids = [0, 1, 2]', [0, 1, 2]),
    ("gpu_ids = __import__('os').system('id')", None),
    ('gpu_ids = range(10**12)', None),
    ('gpu_ids = range(5000)', None),
    ('gpu_ids = range(True, 3)', None),
    ('gpu_ids = [-1]', None),
    ('gpu_ids = [0.5]', None),
    ('import os\nos.system("id")', None),
    ('gpu_ids = ' + '[' * 10000 + ']' * 10000, None),
    ('not python at all (', None),
])
def test_gpu_ids_are_read_without_running_the_text(text, ids):
    assert _literal_gpu_ids(text) == ids


def test_config_text_through_mmengine_is_data(tmp_path):
    marker = tmp_path / 'ran'
    path = crafted.save(
        tmp_path / 'c.pth',
        dict(
            state_dict=dict(w=torch.ones(1)),
            meta=dict(config=crafted.config_running(marker))))
    checkpoint = _load_checkpoint(path, map_location='cpu')
    assert checkpoint['meta']['config'] == 'gpu_ids = [0]\n'
    from mmengine.config import Config
    assert Config.fromstring(checkpoint['meta']['config'],
                             '.py').gpu_ids == [0]
    assert not marker.exists()


def test_remote_schemes_are_forced_to_weights_only(tmp_path, monkeypatch):
    """Schemes other than local files reach torch.load through mmengine's
    own loaders, without ``weights_only``: the guard forces it, whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says."""
    marker = tmp_path / 'ran'
    path = crafted.save(tmp_path / 'c.pth', dict(hook=crafted.touch(marker)))

    def load_from_stand_in(filename, map_location=None):
        return torch.load(filename[len('stand-in://'):], map_location)

    schemes = dict(CheckpointLoader._schemes)
    CheckpointLoader.register_scheme('stand-in://', load_from_stand_in)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    try:
        with pytest.raises(CheckpointRefusedError, match='posix.system'):
            _load_checkpoint(f'stand-in://{path}', map_location='cpu')
        # What such a load returns holds no stand-in either.
        plain = crafted.save(tmp_path / 'plain.pth', dict(a=np.arange(2.)))
        loaded = _load_checkpoint(f'stand-in://{plain}', map_location='cpu')
        assert type(loaded['a']) is np.ndarray
    finally:
        CheckpointLoader._schemes = schemes
    assert not marker.exists()
    assert os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] == '1'
    assert 'TORCH_FORCE_WEIGHTS_ONLY_LOAD' not in os.environ
