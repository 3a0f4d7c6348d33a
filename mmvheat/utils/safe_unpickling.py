# Copyright (c) mmvheat contributors. All rights reserved.
"""What ``torch.load(weights_only=True)`` may build from an untrusted file.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: its
unpickler (``torch/_weights_only_unpickler.py``) builds only tensors,
containers, numbers and the globals in its allowlist, which
``torch.serialization.add_safe_globals`` extends for the whole process, either
with objects or with ``(stand-in, 'module.name')`` pairs. mmengine 0.10
checkpoints (``Runner.save_checkpoint``) hold more: the message hub's
``HistoryBuffer`` objects, whose state names their statistics methods as
``getattr(HistoryBuffer, 'mean')``, and numpy arrays and scalars (the
buffers' histories, metrics, ETA), which pickle as ``numpy.dtype``,
``numpy.ndarray``, ``numpy.core.multiarray._reconstruct`` and ``scalar``
(and ``bytes()`` for an empty array's data).

:func:`allow_mmengine_checkpoints` admits exactly those names, each bound to
a stand-in that checks what the file asks of it. Admitting the real objects
would not be safe, because the unpickler hands a file's state to
``__setstate__`` of every allowlisted type:

* ``numpy.dtype.__setstate__`` sets a dtype's fields, size and flags: a void
  dtype with an object field whose flags say otherwise, or a float64 dtype
  with a field far past its end, makes reading the loaded array follow raw
  bytes as pointers or read outside it (the interpreter crashes). Only
  numeric and bool dtypes are built, their state must be the one numpy
  writes, and no real dtype ever receives a file's state.
* ``HistoryBuffer.__setstate__`` merges the file's statistics methods into
  the class-level ``_statistics_methods``, changing every buffer of the
  process. A loaded buffer's state is checked (numeric 1-D histories of equal
  length, only mmengine's own ``min``/``max``/``current``/``mean``), its
  statistics methods are set on the instance, and the class is left alone.
* The real ``getattr`` reaches any attribute, and
  ``torch._tensor._rebuild_from_type_v2`` (allowlisted by torch) calls
  whatever callable a file puts on the stack. ``getattr`` is answered only
  for the four statistics names of ``HistoryBuffer``, with inert tokens that
  refuse to be called.

The allowlist is process-wide rather than scoped to mmengine's loader:
torch's list is global (a scope would be unsafe with threads and would undo
registrations others made under the same names), and checkpoints reach
``torch.load`` through many doors (mmengine's ``CheckpointLoader``, the
libraries' own tools, direct calls). Each admitted name is harmless on its own:
it builds a fresh object from checked arguments and calls nothing else.

Two more checks close what the allowlist leaves open:

* :func:`check_archive`, before unpickling: torch's own allowlist holds
  ``builtins.bytearray``, which allocates whatever size a file asks for
  (a file of a few hundred bytes can ask for gigabytes), and torch's reader
  inflates compressed records, although ``torch.save`` writes every record
  uncompressed: a file whose records declare far more bytes than it holds is
  crafted. Both are refused before anything is allocated.
* :func:`plain_data`, after unpickling: no stand-in stays in what a load
  returns (each becomes the real, checked object, or the load is refused),
  and no container or tensor carries attributes or hooks from the file.
  torch lets a file set instance attributes on an ``OrderedDict`` (shadowing
  ``items`` or ``get``) and give a ``Parameter`` backward hooks that only
  fail at ``.backward()``.
"""
import io
import math
import mmap
import os
import pickle
import pickletools
import re
import zipfile
from collections import Counter, OrderedDict
from typing import Any, Dict

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from .io import ToolError

__all__ = [
    'CheckpointRefusedError', 'REFUSAL_ADVICE', 'TRUST_OPTION',
    'allow_mmengine_checkpoints', 'check_archive', 'plain_data'
]

TRUST_OPTION = '--trust-checkpoint'


class CheckpointRefusedError(ToolError, ValueError):
    """A checkpoint that holds objects the safe loader does not build.

    The message names the refused global or value. Loading it anyway takes
    an explicit opt-in (``trust=True``, ``--trust-checkpoint``), which runs
    the file's pickle and therefore any code it names.
    """


REFUSAL_ADVICE = (
    '(weights_only=True builds only tensors, containers, numbers and the '
    f'objects mmengine writes); pass {TRUST_OPTION} only if you trust the '
    'file')


def _refuse(what: str):
    raise CheckpointRefusedError(f'refused {what} {REFUSAL_ADVICE}')


# -- numpy --------------------------------------------------------------------
# How numpy names a numeric or bool dtype when pickling it ('f8', 'b1',
# 'c16', ...): a kind and a size.
_DTYPE_SPEC = re.compile(r'[biufc][0-9]{1,2}\Z')
# Numeric and bool kinds: their items are plain bytes, never pointers. The
# dtype built from a name is checked too, whatever a numpy version makes of
# the name.
_NUMERIC_KINDS = frozenset('biufc')
# What numpy's dtype.__reduce__ gives as state for every numeric dtype, less
# the byte order: (version, [byte order,] subarray, names, fields, itemsize,
# alignment, flags); the last three are -1, -1, 0 for fixed-size types.
_NUMERIC_DTYPE_STATE = (3, None, None, None, -1, -1, 0)


class _PickledDtype:
    """Stands for ``numpy.dtype`` while a checkpoint loads.

    Built only for numeric and bool dtypes; the file's state may only give
    the byte order numpy writes. Arrays and scalars take the checked dtype
    from it, so no real dtype ever receives a file's state. A re-saved
    ``_PickledDtype`` pickles as its dtype.
    """
    __slots__ = ('dtype', )

    def __new__(cls, spec=None, align=False, copy=True):
        if not (type(spec) is str and _DTYPE_SPEC.match(spec)):
            _refuse(f'numpy dtype {spec!r}: only numeric and bool dtypes '
                    "are loaded, named as numpy pickles them ('f8', 'b1')")
        if not all(
                type(flag) in (bool, int) and flag in (0, 1)
                for flag in (align, copy)):
            _refuse(f'numpy dtype arguments {(spec, align, copy)!r}')
        try:
            dtype = np.dtype(spec)
        except TypeError:  # a size numpy has no such dtype of ('f1')
            _refuse(f'numpy dtype {spec!r}: no such dtype')
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
            _refuse(f'numpy dtype {spec!r} of kind {dtype.kind!r}: only '
                    'numeric and bool dtypes are loaded')
        self = object.__new__(cls)
        self.dtype = dtype
        return self

    def __setstate__(self, state):
        # Any other state would give the dtype fields, a size or flags.
        byte_orders = ('|', ) if self.dtype.itemsize == 1 else ('<', '>')
        # Plain items only, so that == below means what it says.
        if not (type(state) is tuple and len(state) == 8 and all(
                type(item) in (int, str, type(None))
                for item in state) and state[1] in byte_orders
                and state[:1] + state[2:] == _NUMERIC_DTYPE_STATE):
            _refuse(f'numpy dtype state {state!r} for {self.dtype}')
        if state[1] != '|':
            self.dtype = self.dtype.newbyteorder(state[1])

    def __reduce__(self):
        return self.dtype.__reduce__()

    def __repr__(self):
        return repr(self.dtype)


def _checked_dtype(dtype) -> np.dtype:
    if type(dtype) is not _PickledDtype:
        _refuse(f'numpy dtype given as {type(dtype).__name__}')
    return dtype.dtype


# numpy's largest array size in bytes (its index type, npy_intp).
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max


class _PickledArray(np.ndarray):
    """Stands for ``numpy.ndarray`` while a checkpoint loads: an array
    whose state (shape, checked dtype, raw bytes) is checked before numpy
    sees it. ``HistoryBuffer`` histories are handed over as plain arrays;
    other arrays stay of this subclass and pickle as plain arrays."""

    def __new__(cls, *args, **kwargs):
        # ndarray.__new__ takes a buffer, strides and any dtype: refuse the
        # calls a file could make (NEWOBJ, REDUCE); ``_reconstruct_array``
        # creates instances without this.
        _refuse('numpy.ndarray(...)')

    def __setstate__(self, state):
        # Once only: a second state would free the data that views of the
        # array (a HistoryBuffer's, a tensor's from_numpy) still point to.
        if vars(self).get('_state_set', False):
            _refuse('a second state for one numpy array')
        if not (type(state) is tuple and len(state) == 5):
            _refuse('numpy array state of an unknown layout')
        version, shape, dtype, fortran_order, data = state
        dtype = _checked_dtype(dtype)
        if not (type(version) is int and version == 1 and type(shape) is tuple
                and len(shape) <= 32
                and all(type(side) is int and side >= 0 for side in shape)
                and type(fortran_order) is bool and type(data) is bytes):
            _refuse(f'numpy array state (version {version!r}, shape '
                    f'{shape!r}, data {type(data).__name__})')
        if len(data) != math.prod(shape) * dtype.itemsize:
            _refuse(f'numpy array of shape {shape} and dtype {dtype} from '
                    f'{len(data)} bytes')
        # numpy multiplies the sides that are not 0 as well: past its index
        # range it raises MemoryError, even for an empty array.
        if math.prod(max(side, 1)
                     for side in shape) * dtype.itemsize > _MAX_ARRAY_BYTES:
            _refuse(f'numpy array of shape {shape}: larger than numpy can '
                    'index')
        np.ndarray.__setstate__(self, (1, shape, dtype, fortran_order, data))
        self._state_set = True

    def __reduce_ex__(self, protocol):
        return self.view(np.ndarray).__reduce_ex__(protocol)

    def __reduce__(self):
        return self.view(np.ndarray).__reduce__()

    def __repr__(self):
        return repr(self.view(np.ndarray))


def _reconstruct_array(subtype, shape, typecode):
    """``numpy.core.multiarray._reconstruct``: only the empty array that
    ``ndarray.__reduce__`` asks for, to be filled by its checked state."""
    if not (subtype is _PickledArray and type(shape) is tuple
            and len(shape) == 1 and type(shape[0]) is int and shape[0] == 0
            and typecode in (b'b', 'b')):
        _refuse('numpy _reconstruct arguments')
    return np.ndarray.__new__(_PickledArray, (0, ), np.int8)


def _empty_bytes(*args):
    """``builtins.bytes`` as pickle protocol 2 uses it: ``bytes()`` for the
    data of an empty array (other bytes pickle through ``_codecs.encode``)."""
    if args:
        _refuse('bytes(...) with arguments')
    return b''


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numeric scalar from its bytes."""
    dtype = _checked_dtype(dtype)
    if type(data) is not bytes or len(data) != dtype.itemsize:
        _refuse(f'numpy {dtype} scalar from {type(data).__name__} data')
    return np.frombuffer(data, dtype=dtype)[0]


# -- mmengine's HistoryBuffer -------------------------------------------------
_STOCK_STATISTICS = ('min', 'max', 'current', 'mean')
_REQUIRED_HISTORY_BUFFER_KEYS = frozenset(
    ('max_length', '_log_history', '_count_history'))
# mmengine's __getstate__ adds 'statistics_methods'; a buffer loaded here
# and saved again also carries its instance-level '_statistics_methods'.
_HISTORY_BUFFER_KEYS = _REQUIRED_HISTORY_BUFFER_KEYS | {
    'statistics_methods', '_statistics_methods'
}


class _StockStatistic:
    """What ``getattr(HistoryBuffer, 'mean')`` gives while a checkpoint
    loads: a token for a buffer's state to name, which cannot be called."""
    __slots__ = ('name', )

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        _refuse(f'a call of HistoryBuffer.{self.name}')

    def __repr__(self):
        return f'<HistoryBuffer.{self.name} while loading>'


def _history_buffer_getattr(owner, name):
    """``builtins.getattr`` as mmengine's files use it: the statistics
    methods of ``HistoryBuffer``, and nothing else."""
    if (owner is _PickledHistoryBuffer and type(name) is str
            and name in _STOCK_STATISTICS):
        return _StockStatistic(name)
    if owner is _PickledHistoryBuffer:
        owner_name = 'HistoryBuffer'
    elif isinstance(owner, type):
        owner_name = owner.__name__
    else:
        owner_name = f'a {type(owner).__name__}'
    _refuse(f'getattr({owner_name}, {name!r})')


def _checked_statistics(methods) -> Dict[str, Any]:
    if type(methods) is not dict or not all(
            type(token) is _StockStatistic and name == token.name
            for name, token in methods.items()):
        _refuse('HistoryBuffer statistics methods other than '
                f'{", ".join(_STOCK_STATISTICS)}')
    return methods


def _checked_history(history) -> np.ndarray:
    # Restored arrays only: an array's first state replaces its data, which
    # a view taken before would go on pointing to.
    if (type(history) is not _PickledArray
            or not vars(history).get('_state_set', False)
            or history.ndim != 1):
        _refuse('a HistoryBuffer history that is not a restored 1-D '
                'numeric array')
    return history.view(np.ndarray)


class _PickledHistoryBuffer(HistoryBuffer):
    """Stands for ``HistoryBuffer`` while a checkpoint loads.

    Its ``__setstate__`` checks the state mmengine writes and turns the
    object into a plain ``HistoryBuffer``, whose statistics methods are the
    stock ones (with those this process registered) set on the instance,
    where mmengine's own ``__setstate__`` would merge the file's methods
    into the class.
    """

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            _refuse('HistoryBuffer(...) with arguments')
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        # Reached by REDUCE-style calls only; mmengine's files restore a
        # buffer from its state.
        _refuse('HistoryBuffer(...)')

    def __setstate__(self, state):
        if type(state) is not dict:
            _refuse(f'HistoryBuffer state of type {type(state).__name__}')
        if not _REQUIRED_HISTORY_BUFFER_KEYS <= state.keys(
        ) <= _HISTORY_BUFFER_KEYS:
            _refuse('HistoryBuffer state with keys '
                    f'{sorted(map(repr, state))}')
        max_length = state['max_length']
        if type(max_length) is not int or max_length < 1:
            _refuse(f'HistoryBuffer max_length {max_length!r}')
        log_history = _checked_history(state['_log_history'])
        count_history = _checked_history(state['_count_history'])
        if len(log_history) != len(count_history):
            _refuse('HistoryBuffer histories of different lengths')
        for key in ('statistics_methods', '_statistics_methods'):
            _checked_statistics(state.get(key, {}))
        statistics = dict(HistoryBuffer._statistics_methods)
        statistics.update(
            (name, getattr(HistoryBuffer, name)) for name in _STOCK_STATISTICS)
        self.__dict__.update(
            max_length=max_length,
            _log_history=log_history,
            _count_history=count_history,
            _statistics_methods=statistics)
        self.__class__ = HistoryBuffer


def _safe_globals():
    entries = [
        (_PickledHistoryBuffer,
         'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_getattr, 'builtins.getattr'),
        (_history_buffer_getattr, '__builtin__.getattr'),
        (_PickledDtype, 'numpy.dtype'),
        (_PickledArray, 'numpy.ndarray'),
        (_empty_bytes, 'builtins.bytes'),
        (_empty_bytes, '__builtin__.bytes'),
    ]
    # Files written under numpy 1 and 2 name the module differently.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries.append((_reconstruct_array, f'{module}._reconstruct'))
        entries.append((_numpy_scalar, f'{module}.scalar'))
    return entries


def allow_mmengine_checkpoints():
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints.

    Admits, for the whole process, the globals mmengine's checkpoints name,
    each bound to a checking stand-in (see the module documentation). Safe
    to call repeatedly.
    """
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:  # torch < 2.4 loads them without help
        return
    add_safe_globals(_safe_globals())


# -- before unpickling: what a file may make the loader allocate --------------
# Globals torch's allowlist holds that allocate what a file asks for.
_ALLOCATING_GLOBALS = frozenset(
    ('builtins bytearray', '__builtin__ bytearray'))
# How far a file's records may inflate beyond its own size: torch.save
# stores them uncompressed, so a file it wrote declares at most its size.
# The floor lets a small file that a user compressed again still load.
_MAX_INFLATION = 4
_INFLATION_FLOOR = 1 << 20
# What pickletools says of a pickle that ends before its STOP opcode.
_ENDS_BEFORE_STOP = re.compile(
    r'exhausted before seeing STOP|not enough data in stream|'
    r'no newline found|but only \d+ remain')
# The ``torch.save`` legacy format: the magic number, the protocol and the
# system information pickles come before the one that holds the objects.
_LEGACY_PICKLES = 4


def _scan_pickle(stream) -> None:
    """Refuse a pickle that names a global which allocates at the file's
    word; torch's unpickler takes no other way to name a global than the
    ``GLOBAL`` opcode. A pickle cut short raises ``UnpicklingError``
    (torch's unpickler would read a global's name cut short as another
    name, and refuse it); a stream that is no pickle is left to torch's
    reader, whose error says so."""
    names = set()
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name == 'GLOBAL':
                names.add(arg)
    except ValueError as exc:
        if _ENDS_BEFORE_STOP.search(str(exc)):
            raise pickle.UnpicklingError('pickle data was truncated') from None
    except (EOFError, UnicodeDecodeError):
        pass
    if names & _ALLOCATING_GLOBALS:
        _refuse('global builtins.bytearray: it allocates any size a file '
                'asks for')


def check_archive(path: str) -> None:
    """Refuse a checkpoint file that would make loading allocate far more
    than the file holds, before it is unpickled.

    Raises:
        CheckpointRefusedError: naming the declared size or the global.
    """
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        # The legacy format: pickles one after another, then raw storages.
        # Read through a map, so that a length a crafted opcode declares
        # is never allocated.
        with open(path, 'rb') as file, mmap.mmap(
                file.fileno(), 0, access=mmap.ACCESS_READ) as stream:
            for _ in range(_LEGACY_PICKLES):
                _scan_pickle(stream)
        return
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            declared = sum(record.file_size for record in records)
            if declared > max(_MAX_INFLATION * size, _INFLATION_FLOOR):
                _refuse(f'an archive whose records declare {declared:,} '
                        f'bytes in a file of {size:,} bytes (torch.save '
                        'writes them uncompressed)')
            pickles = [
                record for record in records
                if record.filename.rsplit('/', 1)[-1] == 'data.pkl'
            ]
            for record in pickles:
                _scan_pickle(io.BytesIO(archive.read(record)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            EOFError, OSError):
        return  # torch's reader says what is wrong with the archive


# -- after unpickling: the real objects, and nothing from the file's state ----
# Values that hold no references to other objects.
_ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.dtype,
          torch.device, torch.Size, torch.layout, np.generic, np.dtype)
# What torch writes on a state dict: each module's version.
_METADATA_VALUES = (int, bool, type(None))


def _plain_leaf(value):
    """The real object a loaded leaf stands for, or ``value`` itself."""
    kind = type(value)
    if kind is _PickledArray:
        if not vars(value).get('_state_set', False):
            _refuse('a numpy array without its state')
        return value.view(np.ndarray)
    if kind is _PickledDtype:
        return value.dtype
    if kind is _PickledHistoryBuffer:
        _refuse('a HistoryBuffer without its state')
    if kind is _StockStatistic:
        _refuse(f'HistoryBuffer.{value.name} outside a HistoryBuffer')
    if isinstance(value, torch.Tensor):
        if kind not in (torch.Tensor, torch.nn.Parameter):
            _refuse(f'a tensor of type {kind.__name__}')
        if value._backward_hooks:
            _refuse('a tensor that carries backward hooks')
        if vars(value):
            _refuse(f'a tensor with the attributes {sorted(vars(value))}')
    return value


def _checked_metadata(container) -> None:
    """A loaded ``OrderedDict`` may carry only torch's ``_metadata``: the
    version of each module whose weights it holds."""
    attributes = vars(container)
    if not attributes:
        return
    metadata = attributes.get('_metadata')
    if set(attributes) != {
            '_metadata'
    } or type(metadata) not in (dict, OrderedDict) or not all(
            type(name) is str and type(entry) is dict and all(
                type(key) is str and type(item) in _METADATA_VALUES
                for key, item in entry.items())
            for name, entry in dict.items(metadata)):
        _refuse('an OrderedDict with the attributes '
                f'{sorted(map(str, attributes))} (a state dict holds only '
                "the modules' versions)")


def _children(value):
    """The objects a loaded container holds, or None for a leaf."""
    kind = type(value)
    if kind in (dict, OrderedDict, Counter):
        if kind is OrderedDict:
            _checked_metadata(value)
        return [item for pair in dict.items(value) for item in pair]
    if kind in (list, tuple, set, frozenset):
        return list(value)
    return None


def _rebuilt(value, plain: Dict[int, Any]):
    """``value`` holding the plain objects of its children: the same
    container, changed in place, unless it is immutable."""
    kind = type(value)
    if kind in (dict, OrderedDict, Counter):
        for key, item in list(dict.items(value)):
            if plain.get(id(key), key) is not key:
                _refuse(f'a dictionary key of type {type(key).__name__}')
            if plain.get(id(item), item) is not item:
                dict.__setitem__(value, key, plain[id(item)])
        return value
    # A container that holds itself is its own plain object.
    if kind is list:
        value[:] = [plain.get(id(item), item) for item in value]
        return value
    items = [plain.get(id(item), item) for item in value]
    if all(new is old for new, old in zip(items, value)):
        return value
    if kind is tuple:
        return tuple(items)
    _refuse(f'a {kind.__name__} of numpy or HistoryBuffer objects')


def plain_data(loaded):
    """What ``torch.load(weights_only=True)`` gave, with no stand-in left.

    Restored numpy arrays and dtypes replace their stand-ins (containers
    are changed in place, tuples rebuilt); a stand-in that never received
    its state, a statistics token outside its buffer, a tensor with
    attributes or backward hooks, and an ``OrderedDict`` with attributes
    other than torch's ``_metadata`` are refused. The walk keeps its own
    stack, so that however deep a file nests its containers, it needs no
    recursion.

    Raises:
        CheckpointRefusedError: naming what was refused.
    """
    plain: Dict[int, Any] = {}
    seen = []  # keeps every visited object alive, so ids stay unique
    pending = set()
    stack = [(loaded, False)]
    while stack:
        value, children_done = stack.pop()
        key = id(value)
        if key in plain:
            continue
        if children_done:
            pending.discard(key)
            plain[key] = _rebuilt(value, plain)
            continue
        if isinstance(value, _ATOMS):
            plain[key] = value
            continue
        children = _children(value)
        seen.append(value)
        if children is None:
            plain[key] = _plain_leaf(value)
            continue
        if key in pending:  # a container that holds itself
            if type(value) is tuple:
                _refuse('a tuple that holds itself')
            continue
        pending.add(key)
        stack.append((value, True))
        stack.extend(
            (child, False) for child in children if id(child) not in plain)
    return plain[id(loaded)]
