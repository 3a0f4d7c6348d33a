# Copyright (c) mmvheat contributors. All rights reserved.
"""Loading checkpoints safely, in our tools and in the host libraries' code.

Untrusted files load with ``torch.load(weights_only=True)``, passed
explicitly, so that torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn
it off; mmengine's own files read through the checking stand-ins of
:mod:`mmvheat.utils.safe_unpickling`, which also refuses files that would
allocate far beyond their size and leaves no stand-in in what a load
returns.

mmengine loads every checkpoint through ``CheckpointLoader.load_checkpoint``
(``load_from``, ``--resume``, ``Pretrained`` initialisation, the inferencers,
``mmengine.hub``), and calls ``torch.load`` without ``weights_only``.
:func:`guard_mmengine_checkpoint_loading`, which ``import mmvheat`` calls,
puts a guard in front of it for the whole process, so that the same rules
hold in the host libraries' own tools once our package is imported: local
files load through :func:`load_checkpoint_file`, other schemes under
``TORCH_FORCE_WEIGHTS_ONLY_LOAD``; errors are one line naming the file; and
``meta['config']``, a string that mmengine's ``Runner.resume`` runs as
Python (``Config.fromstring``) only to read ``gpu_ids``, is read as data:
``gpu_ids`` is kept when the text assigns it a literal, the rest is
dropped, with a log line.

A checkpoint its user trusts but that holds other objects (a config object,
an ``argparse.Namespace``) loads with full pickle only on request:
``load_checkpoint_file(..., trust=True)`` or, for mmengine's loader,
``with mmengine_checkpoint_loading(trust=True)``; tools expose it as
``--trust-checkpoint``. Refusals raise :class:`CheckpointRefusedError`
naming what was refused; unreadable files raise :class:`CheckpointLoadError`.
"""
import ast
import contextlib
import contextvars
import functools
import logging
import os
import os.path as osp
import pickle
import re
import stat
import struct
import zipfile
from typing import Any, Iterator, List, Optional, Union

import torch
from mmengine.logging import print_log

from .io import ByteProgress, ToolError, first_line
from .safe_unpickling import (REFUSAL_ADVICE, TRUST_OPTION,
                              CheckpointRefusedError,
                              allow_mmengine_checkpoints, check_archive,
                              plain_data)
from .weights import CheckpointMismatchError

__all__ = [
    'CheckpointLoadError', 'CheckpointNotFoundError',
    'CheckpointMismatchError', 'CheckpointRefusedError', 'TRUST_OPTION',
    'allow_mmengine_checkpoints', 'checkpoint_file_problem',
    'guard_mmengine_checkpoint_loading', 'load_checkpoint_file',
    'mmengine_checkpoint_loading'
]


class CheckpointLoadError(ToolError, ValueError):
    """A checkpoint file that cannot be read: missing, truncated, corrupt or
    not written by ``torch.save``."""


class CheckpointNotFoundError(CheckpointLoadError, FileNotFoundError):
    """A checkpoint file that does not exist."""


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


def checkpoint_file_problem(path: str) -> Optional[str]:
    """What keeps ``path`` from being a complete checkpoint file, or None.

    Besides what :func:`load_checkpoint_file` refuses before reading (a
    missing, empty or foreign file), a zip archive (what ``torch.save``
    writes) must be whole: its index is written last, so a file cut short
    lacks it, and every record must match its checksum. Nothing is
    unpickled.
    """
    problem = _file_problem(path)
    if problem is not None:
        return problem
    with open(osp.expanduser(path), 'rb') as file:
        if file.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return None  # the legacy format has no index to check
    try:
        with zipfile.ZipFile(osp.expanduser(path)) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f'{_CORRUPT} ({first_line(exc)})'
    if damaged is not None:
        return f'{_CORRUPT} (record {damaged} fails its checksum)'
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
                f'{source}: refused global {name} {REFUSAL_ADVICE}')
        if _CUT_SHORT.search(detail):
            return CheckpointLoadError(f'{source}: {_CORRUPT} ({detail})')
        if _NOT_A_PICKLE.search(detail):
            return CheckpointLoadError(f'{source}: {_OTHER_KIND}')
        if weights_only:
            return CheckpointRefusedError(
                f'{source}: refused by the weights_only loader: {detail} '
                f'{REFUSAL_ADVICE}')
    if isinstance(exc, (ImportError, AttributeError)) and not weights_only:
        return CheckpointLoadError(
            f'{source}: the checkpoint names an object this environment '
            f'lacks ({type(exc).__name__}: {detail})')
    if isinstance(exc, OSError):
        return CheckpointLoadError(
            f'{source}: cannot be read: {exc.strerror or detail}')
    unreadable = (RuntimeError, EOFError, pickle.PickleError, KeyError,
                  IndexError, TypeError, ValueError, AttributeError,
                  ImportError, struct.error)
    if isinstance(exc, unreadable):
        kind = 'struct.error' if isinstance(
            exc, struct.error) else type(exc).__name__
        return CheckpointLoadError(f'{source}: {_CORRUPT} ({kind}: {detail})')
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
        if not trust:
            check_archive(source)
        if progress is None:
            loaded = torch.load(
                source, map_location=map_location, weights_only=not trust)
        else:
            with open(source, 'rb') as file:
                progress.total = os.fstat(file.fileno()).st_size
                loaded = torch.load(
                    progress.wrap(file),
                    map_location=map_location,
                    weights_only=not trust)
        return loaded if trust else plain_data(loaded)


# -- mmengine's loader --------------------------------------------------------
#: Whether checkpoints loaded through mmengine in this context are trusted.
#: A context variable, so that a trusting tool does not make other threads
#: trust their files.
_TRUSTED = contextvars.ContextVar('mmvheat_trusted_checkpoints', default=False)
_FORCE_OFF, _FORCE_ON = ('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
                         'TORCH_FORCE_WEIGHTS_ONLY_LOAD')


@contextlib.contextmanager
def _torch_load_forced(weights_only: bool) -> Iterator[None]:
    """torch's switches for ``torch.load`` calls that do not pass
    ``weights_only``, as mmengine's remote loaders do; read at each call."""
    on, off = (_FORCE_ON, _FORCE_OFF) if weights_only else (_FORCE_OFF,
                                                            _FORCE_ON)
    saved = {name: os.environ.get(name) for name in (on, off)}
    os.environ[on] = '1'
    os.environ.pop(off, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# A GPU list no run has ever had more of; more is not a list of GPUs.
_MAX_GPU_IDS = 4096


def _literal_gpu_ids(text: str) -> Optional[List[int]]:
    """``gpu_ids`` of a config's text, read without running it: the last
    top-level assignment of a list or tuple of ints, or of ``range(...)``
    of int literals; None otherwise."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    value = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == 'gpu_ids'):
            value = node.value
    if value is None:
        return None
    try:
        if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id == 'range' and not value.keywords
                and 1 <= len(value.args) <= 3):
            bounds = [ast.literal_eval(arg) for arg in value.args]
            if not all(type(bound) is int for bound in bounds):
                return None
            ids = range(*bounds)
        else:
            ids = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    if (not isinstance(ids, (list, tuple, range)) or len(ids) > _MAX_GPU_IDS
            or not all(type(i) is int and i >= 0 for i in ids)):
        return None
    return list(ids)


def _config_text_as_data(checkpoint: Any, source: str) -> None:
    """Replace ``meta['config']`` by the ``gpu_ids`` it assigns, or drop
    it; the text is Python, which ``Runner.resume`` would run."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or 'config' not in meta:
        return
    text = meta['config']
    gpu_ids = _literal_gpu_ids(text) if isinstance(text, str) else None
    if gpu_ids is None:
        del meta['config']
        kept = 'dropped it'
    else:
        meta['config'] = f'gpu_ids = {gpu_ids!r}\n'
        kept = f'kept gpu_ids = {gpu_ids}'
    print_log(
        f"{source}: meta['config'] is Python that resuming would run; read "
        f'it as data and {kept} ({TRUST_OPTION} runs it)',
        logger='current')


def _guarded_load(loader_cls, load, filename, map_location, logger):
    """``CheckpointLoader.load_checkpoint`` under this module's rules."""
    from mmengine.runner.checkpoint import load_from_local
    trust = _TRUSTED.get()
    source = str(filename)
    if loader_cls._get_checkpoint_loader(source) is load_from_local:
        print_log(
            f'Loads checkpoint by local backend from path: {source}',
            logger=logger)
        checkpoint = load_checkpoint_file(
            osp.expanduser(source), map_location, trust)
    else:
        problem = _file_problem(source)
        if problem is not None:
            raise _file_error(source, problem)
        if trust:
            _warn_trusted(source)
        with _errors_explained(source, weights_only=not trust), \
                _torch_load_forced(weights_only=not trust):
            checkpoint = load(loader_cls, filename, map_location, logger)
            if not trust:
                checkpoint = plain_data(checkpoint)
    if not trust:
        _config_text_as_data(checkpoint, source)
    return checkpoint


def guard_mmengine_checkpoint_loading() -> None:
    """Load every checkpoint that goes through mmengine's
    ``CheckpointLoader`` under this module's rules, for the whole process
    (idempotent): ``Runner.load_checkpoint`` and ``Runner.resume``
    (``load_from``, ``--resume``), ``mmengine.runner.load_checkpoint`` and
    ``_load_checkpoint``, ``Pretrained`` initialisation, the libraries'
    inferencers and ``mmengine.hub``. Untrusted unless inside
    :func:`mmengine_checkpoint_loading` with ``trust=True``.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    current = CheckpointLoader.__dict__['load_checkpoint']
    if getattr(current.__func__, 'guarded', False):
        return
    load = current.__func__

    @functools.wraps(load)
    def load_checkpoint(cls, filename, map_location=None, logger='current'):
        return _guarded_load(cls, load, filename, map_location, logger)

    load_checkpoint.guarded = True
    CheckpointLoader.load_checkpoint = classmethod(load_checkpoint)


@contextlib.contextmanager
def mmengine_checkpoint_loading(trust: bool = False) -> Iterator[None]:
    """Within it, checkpoints loaded through mmengine in this thread are
    trusted or not, as ``trust`` says (outside, they never are).

    Covers every load that goes through mmengine's ``CheckpointLoader``
    (see :func:`guard_mmengine_checkpoint_loading`); errors are
    :class:`CheckpointRefusedError` or :class:`CheckpointLoadError`.

    Args:
        trust (bool): Load with full pickle, which runs any code the files
            name. Defaults to False.
    """
    guard_mmengine_checkpoint_loading()
    token = _TRUSTED.set(bool(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)
