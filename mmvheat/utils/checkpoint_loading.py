# Copyright (c) mmvheat contributors. All rights reserved.
"""Loading checkpoints safely: mmengine's files under ``weights_only=True``.

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

A checkpoint its user trusts but that holds other objects (a config object,
an ``argparse.Namespace``) loads with full pickle only on request:
``load_checkpoint_file(..., trust=True)`` or, for mmengine's loader,
``with mmengine_checkpoint_loading(trust=True)``; tools expose it as
``--trust-checkpoint``. Refusals raise :class:`CheckpointRefusedError`
naming what was refused; unreadable files raise :class:`CheckpointLoadError`.
"""
import contextlib
import functools
import logging
import math
import os
import os.path as osp
import pickle
import re
import stat
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer

from .io import ByteProgress, ToolError, first_line

__all__ = [
    'CheckpointLoadError', 'CheckpointNotFoundError',
    'CheckpointMismatchError', 'CheckpointRefusedError', 'TRUST_OPTION',
    'allow_mmengine_checkpoints', 'load_checkpoint_file',
    'mmengine_checkpoint_loading'
]

TRUST_OPTION = '--trust-checkpoint'


class CheckpointLoadError(ToolError, ValueError):
    """A checkpoint file that cannot be read: missing, truncated, corrupt or
    not written by ``torch.save``."""


class CheckpointNotFoundError(CheckpointLoadError, FileNotFoundError):
    """A checkpoint file that does not exist."""


class CheckpointMismatchError(ToolError, RuntimeError):
    """A checkpoint whose weights do not match the model's: weights it
    leaves unset, weights the model lacks, or weights of another shape."""


class CheckpointRefusedError(ToolError, ValueError):
    """A checkpoint that holds objects the safe loader does not build.

    The message names the refused global or value. Loading it anyway takes
    an explicit opt-in (``trust=True``, ``--trust-checkpoint``), which runs
    the file's pickle and therefore any code it names.
    """


_REFUSAL_ADVICE = (
    '(weights_only=True builds only tensors, containers, numbers and the '
    f'objects mmengine writes); pass {TRUST_OPTION} only if you trust the '
    'file')


def _refuse(what: str):
    raise CheckpointRefusedError(f'refused {what} {_REFUSAL_ADVICE}')


# -- numpy --------------------------------------------------------------------
# Numeric and bool kinds: their items are plain bytes, never pointers.
_NUMERIC_KINDS = frozenset('biufc')
# How numpy names such a dtype when pickling it ('f8', 'b1', 'c16', ...).
_DTYPE_SPEC = re.compile(r'[biufc][0-9]{1,2}\Z')
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
                    'are loaded')
        if not all(
                type(flag) in (bool, int) and flag in (0, 1)
                for flag in (align, copy)):
            _refuse(f'numpy dtype arguments {(spec, align, copy)!r}')
        dtype = np.dtype(spec)
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
            _refuse(f'numpy dtype {spec!r}: only numeric and bool dtypes '
                    'are loaded')
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


# -- loading with clear errors ------------------------------------------------
# torch wraps its unpickler's refusals in a long message that ends with the
# original one and this advice.
_TORCH_DOCS_ADVICE = '\n\nCheck the documentation of torch.load'
_REFUSED_GLOBAL = re.compile(
    r'GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)')
# What a pickle's GLOBAL names when it is whole: ``module.name``.
_WHOLE_GLOBAL = re.compile(r'\w+(\.\w+)*\.\w+\Z')
# Unpickler messages of a stream that is not a pickle, or ends early.
_NOT_A_PICKLE = re.compile(r'Unsupported operand|invalid load key')
_CUT_SHORT = re.compile(r'truncated|Ran out of input')
_CORRUPT = 'cannot be read as a PyTorch checkpoint, truncated or corrupt'
_OTHER_KIND = 'is not a PyTorch checkpoint (corrupt, or another kind of file)'
_MISSING = 'no such file'
# How files of torch.save begin: a zip archive (torch >= 1.6), or a pickle
# (the legacy format; protocol 2 and up start with the PROTO opcode).
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTOCOL = b'\x80'


def _unpickler_reason(message: str) -> str:
    lines = message.split(_TORCH_DOCS_ADVICE)[0].strip().splitlines()
    return lines[-1].strip() if lines else 'unreadable pickle'


def _file_problem(source: str) -> Optional[str]:
    """What keeps ``source`` from being a checkpoint file, seen before its
    content is unpickled, or None (also for a URL)."""
    if '://' in source:
        return None
    source = osp.expanduser(source)
    try:
        status = os.stat(source)
        if stat.S_ISDIR(status.st_mode):
            return 'is a directory, not a checkpoint file'
        if status.st_size == 0:
            return 'is empty'
        with open(source, 'rb') as file:
            start = file.read(len(_ZIP_MAGIC))
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        return f'cannot be read: {exc.strerror or exc}'
    # Unpickling anything else fails in whatever way its bytes lead to.
    if not start.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL)):
        return _OTHER_KIND
    return None


def _file_error(source: str, problem: str) -> CheckpointLoadError:
    error = (
        CheckpointNotFoundError
        if problem == _MISSING else CheckpointLoadError)
    return error(f'{source}: {problem}')


def _explained(exc: Exception, source: str,
               weights_only: bool) -> Optional[Exception]:
    """The one-line error that replaces ``exc`` raised by loading
    ``source``, or None for errors that are not about the file."""
    if isinstance(exc, CheckpointRefusedError):
        return CheckpointRefusedError(f'{source}: {exc}')
    if isinstance(exc, CheckpointLoadError):
        return exc
    problem = _file_problem(source)
    if problem is not None:
        return _file_error(source, problem)
    detail = first_line(exc)
    if isinstance(exc, pickle.UnpicklingError):
        detail = _unpickler_reason(str(exc))
        found = _REFUSED_GLOBAL.search(str(exc)) if weights_only else None
        if found:
            name = found.group(1)
            # torch names builtins without their module.
            name = name if '.' in name else f'builtins.{name}'
            if not _WHOLE_GLOBAL.match(name):  # the pickle ends inside it
                return CheckpointLoadError(
                    f'{source}: {_CORRUPT} (a name cut short: {name!r})')
            return CheckpointRefusedError(
                f'{source}: refused global {name} {_REFUSAL_ADVICE}')
        if _CUT_SHORT.search(detail):
            return CheckpointLoadError(f'{source}: {_CORRUPT} ({detail})')
        if _NOT_A_PICKLE.search(detail):
            return CheckpointLoadError(f'{source}: {_OTHER_KIND}')
        if weights_only:
            return CheckpointRefusedError(
                f'{source}: refused by the weights_only loader: {detail} '
                f'{_REFUSAL_ADVICE}')
    if isinstance(exc, (ImportError, AttributeError)) and not weights_only:
        return CheckpointLoadError(
            f'{source}: the checkpoint names an object this environment '
            f'lacks ({type(exc).__name__}: {detail})')
    if isinstance(exc, OSError):
        return CheckpointLoadError(
            f'{source}: cannot be read: {exc.strerror or detail}')
    unreadable = (RuntimeError, EOFError, pickle.PickleError, KeyError,
                  IndexError, TypeError, ValueError, AttributeError,
                  ImportError)
    if isinstance(exc, unreadable):
        return CheckpointLoadError(
            f'{source}: {_CORRUPT} ({type(exc).__name__}: {detail})')
    return None


@contextlib.contextmanager
def _errors_explained(source: str, weights_only: bool) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: B902  (sorted out by _explained)
        explained = _explained(exc, source, weights_only)
        if explained is None:
            raise
        raise explained from exc


def _warn_trusted(source: str):
    print_log(
        f'Loading {source} with full pickle ({TRUST_OPTION}): it can run any '
        'code the file names.',
        logger='current',
        level=logging.WARNING)


def load_checkpoint_file(path: Union[str, os.PathLike],
                         map_location: Any = 'cpu',
                         trust: bool = False,
                         progress: Optional[ByteProgress] = None) -> Any:
    """Load a checkpoint file with ``torch.load``, safely unless trusted.

    Every failure is one line that starts with the path and says what is
    wrong with the file: missing, a directory, empty, unreadable, not a
    PyTorch checkpoint, truncated or corrupt, or holding an object the safe
    loader refuses (named, with the option that loads it anyway).

    Args:
        path (str | os.PathLike): The checkpoint file.
        map_location (Any): As for ``torch.load``. Defaults to ``'cpu'``.
        trust (bool): Load with full pickle (``weights_only=False``), which
            runs any code the file names; for files from a trusted source
            that hold objects beyond tensors, containers, numbers and what
            mmengine writes. Defaults to False.
        progress (ByteProgress, optional): Counts the bytes read; its total
            is set to the file's size. Defaults to None.

    Returns:
        Any: What the file holds.

    Raises:
        CheckpointRefusedError: ``trust`` is False and the file holds an
            object the safe loader does not build; the message names it.
        CheckpointLoadError: The file is missing, empty, truncated, corrupt
            or was not written by ``torch.save``.
    """
    source = os.fspath(path)
    problem = _file_problem(source)
    if problem is not None:
        raise _file_error(source, problem)
    if trust:
        _warn_trusted(source)
    with _errors_explained(source, weights_only=not trust):
        if progress is None:
            return torch.load(
                source, map_location=map_location, weights_only=not trust)
        with open(source, 'rb') as file:
            progress.total = os.fstat(file.fileno()).st_size
            return torch.load(
                progress.wrap(file),
                map_location=map_location,
                weights_only=not trust)


@contextlib.contextmanager
def _torch_load_without_weights_only() -> Iterator[None]:
    # torch's switch for calls that do not pass ``weights_only``, as
    # mmengine's loaders do; read at each ``torch.load``.
    force_off, force_on = ('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
                           'TORCH_FORCE_WEIGHTS_ONLY_LOAD')
    saved = {name: os.environ.get(name) for name in (force_off, force_on)}
    os.environ[force_off] = '1'
    os.environ.pop(force_on, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def mmengine_checkpoint_loading(trust: bool = False) -> Iterator[None]:
    """Within it, mmengine's checkpoint loading gives one-line errors and
    honours ``trust``.

    Covers every load that goes through mmengine's ``CheckpointLoader``:
    ``Runner.load_checkpoint`` and ``Runner.resume`` (``load_from``,
    ``--resume``), ``mmengine.runner.load_checkpoint`` and
    ``_load_checkpoint``, and ``Pretrained`` initialisation. Errors become
    :class:`CheckpointRefusedError` or :class:`CheckpointLoadError`.
    Not thread-safe: it patches ``CheckpointLoader`` (and, with ``trust``,
    torch's environment switch) until it exits.

    Args:
        trust (bool): Load with full pickle, which runs any code the files
            name. Defaults to False.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    original = CheckpointLoader.__dict__['load_checkpoint']
    load = original.__func__

    @functools.wraps(load)
    def load_checkpoint(cls, filename, map_location=None, logger='current'):
        problem = _file_problem(str(filename))
        if problem is not None:
            raise _file_error(str(filename), problem)
        if trust:
            _warn_trusted(filename)
            switch = _torch_load_without_weights_only()
        else:
            switch = contextlib.nullcontext()
        with _errors_explained(str(filename), weights_only=not trust), switch:
            return load(cls, filename, map_location, logger)

    CheckpointLoader.load_checkpoint = classmethod(load_checkpoint)
    try:
        yield
    finally:
        CheckpointLoader.load_checkpoint = original
