# Copyright (c) mmvheat contributors. All rights reserved.
"""Writing files and talking to people, for the command-line tools.

* :func:`atomic_write` is every tool's one way to write a file: the data
  goes to a temporary file beside the destination, is flushed to disk and
  then renamed over it, so that a reader sees the old file or the new one,
  never a part. The new file gets the permissions a plain ``open`` would
  give it (the kernel applies the umask; the process-wide umask is never
  changed), an existing file keeps its own, and a symlink keeps pointing
  where it pointed: its target is written. A write removes the temporary
  files that earlier writes of the same file left when they were killed
  (a live writer holds a lock on its own).
* :func:`check_outputs`, before a tool does any work, refuses an output
  that is one of the inputs, however it is spelled (symlink, ``..``, hard
  link), or that exists and is neither a regular file nor a directory (a
  device, a named pipe); :func:`atomic_write` refuses the latter too.
* :func:`ensure_directory` makes a directory a tool writes to, or says in
  one line why it cannot.
* :func:`run_tool` turns a tool's work into printed lines and an exit
  status: one ``error: ...`` line and no traceback for a known input error
  (:class:`ToolError`); any other exception is a bug and keeps its
  traceback.
* :func:`int_at_least` (and :data:`positive_int`) are ``argparse`` types
  that refuse out-of-range counts and sizes as usage errors.
* :class:`ByteProgress` shows how far reading or writing a large file has
  got, on a terminal only.
"""
import argparse
import io
import os
import os.path as osp
import re
import secrets
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import (IO, BinaryIO, Callable, Iterable, Iterator, Mapping,
                    Optional, Tuple, Type)

try:
    import fcntl
except ImportError:  # not POSIX: stale temporaries are left for the user
    fcntl = None

__all__ = [
    'ToolError', 'UsageError', 'OutputWriteError', 'atomic_write',
    'save_checkpoint_atomic', 'check_output_is_not_input', 'check_output_path',
    'check_outputs', 'ensure_directory', 'first_line', 'run_tool',
    'add_trust_option', 'parse_device', 'int_at_least', 'positive_int',
    'MAX_IMAGE_SIDE', 'image_side', 'ByteProgress'
]


class ToolError(Exception):
    """A failure a tool reports in one line; the message names the file.

    Every known input error is one (a missing or unreadable file, a
    checkpoint that does not fit, an output that cannot be written), so
    that :func:`run_tool` can tell them from bugs.
    """


class UsageError(ToolError):
    """Option values that cannot work together (exit status 2)."""


class OutputWriteError(ToolError):
    """The output could not be written; the destination is unchanged."""


def _write_target(path: str) -> str:
    """The file a write to ``path`` must replace: a symlink's final target
    (so that the link survives), otherwise ``path`` made absolute."""
    if osp.islink(path):
        return osp.realpath(path)
    return osp.abspath(path)


def _make_directory(directory: str, what: str) -> None:
    """Create ``directory``; an error names ``what`` was to be written."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        blocker = directory
        while not osp.lexists(blocker):
            blocker = osp.dirname(blocker)
        if not osp.isdir(blocker):
            raise OutputWriteError(
                f'cannot write {what}: {blocker} is not a directory') from exc
        raise OutputWriteError(
            f'cannot write {what}: cannot create {directory}: '
            f'{exc.strerror or exc}') from exc


def ensure_directory(directory: str, what: Optional[str] = None) -> str:
    """Create ``directory`` if needed and make sure files can be made in it.

    Args:
        directory (str): The directory.
        what (str, optional): What it is, for the message (e.g.
            ``'--work-dir'``). Defaults to None: the path alone.

    Returns:
        str: ``directory``.

    Raises:
        OutputWriteError: naming the directory and why.
    """
    name = f'{what} {directory}' if what else directory
    if osp.lexists(directory) and not osp.isdir(directory):
        raise OutputWriteError(f'cannot write {name}: it is not a directory')
    _make_directory(directory, name)
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=directory)
    except OSError as exc:
        raise OutputWriteError(
            f'cannot write {name}: {exc.strerror or exc}') from exc
    os.close(fd)
    os.unlink(probe)
    return directory


def _temporary_name(target: str) -> str:
    directory, name = osp.split(target)
    return osp.join(directory, f'.{name}.{secrets.token_hex(4)}.tmp')


def _holds_lock(fd: int) -> bool:
    """Take the lock that marks a temporary file as being written."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_stale_temporaries(target: str) -> None:
    """Remove the temporaries earlier writes of ``target`` left behind
    when they were killed: those whose writer no longer holds their lock
    (the kernel drops it when a process ends)."""
    directory, name = osp.split(target)
    if fcntl is None:
        return
    pattern = re.compile(rf'\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp\Z')
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not pattern.match(entry):
            continue
        path = osp.join(directory, entry)
        try:
            # Neither through a symlink nor waiting on a named pipe: a file
            # named like a temporary that is not a regular file is not one.
            fd = os.open(
                path, os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0)
                | getattr(os, 'O_NONBLOCK', 0))
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and _holds_lock(fd):
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_temporary(target: str) -> Tuple[int, str]:
    """A new file beside ``target``, opened for writing and locked for as
    long as this process writes it.

    Created with mode 0o666, which the kernel narrows by the umask exactly
    as for any new file; when ``target`` exists, its permission bits are
    copied instead.
    """
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(
        os, 'O_CLOEXEC', 0) | getattr(os, 'O_BINARY', 0)
    while True:
        temporary = _temporary_name(target)
        try:
            fd = os.open(temporary, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        _holds_lock(fd)
        if mode is not None:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    return fd, temporary


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; elsewhere a no-op)."""
    if os.name != 'posix':
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str, mode: str = 'wb') -> Iterator[IO]:
    """Write ``path`` all at once: a context manager yielding a file object.

    Whatever is written to the yielded file replaces ``path`` when the
    ``with`` block ends normally (the file and then its directory are
    fsynced, so the new content survives a crash). If the block raises,
    ``path`` is left as it was and the temporary file is removed.

    Example::

        with atomic_write('model.onnx') as f:
            f.write(onnx_model.SerializeToString())

    Args:
        path (str): The destination. Missing directories are created. A
            symlink is kept and its target is replaced.
        mode (str): ``'wb'`` for bytes or ``'w'`` for UTF-8 text.
            Defaults to ``'wb'``.

    Raises:
        OutputWriteError: when the file system refuses the write (the
            message names ``path``). Other exceptions from the block pass
            through unchanged.
    """
    if mode not in ('wb', 'w'):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = _write_target(path)
    if osp.isdir(target):
        raise OutputWriteError(f'cannot write {path}: it is a directory')
    check_output_path(path)
    directory = osp.dirname(target)
    _make_directory(directory, path)
    _remove_stale_temporaries(target)
    try:
        fd, temporary = _create_temporary(target)
    except OSError as exc:
        raise OutputWriteError(
            f'cannot write {path}: {exc.strerror or exc}') from exc
    try:
        with os.fdopen(
                fd, mode,
                **({} if 'b' in mode else dict(encoding='utf-8'))) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OutputWriteError(
                f'cannot write {path}: {exc.strerror or exc}') from exc
        raise
    try:
        _fsync_directory(directory)
    except OSError as exc:
        raise OutputWriteError(
            f'wrote {path}, but could not flush its directory to disk: '
            f'{exc.strerror or exc}') from exc


def save_checkpoint_atomic(checkpoint,
                           path: str,
                           show_progress: bool = False) -> None:
    """``torch.save`` through :func:`atomic_write`.

    Args:
        checkpoint: What to save.
        path (str): The destination.
        show_progress (bool): Count the bytes written on stderr, if it is a
            terminal (:class:`ByteProgress`). Defaults to False.
    """
    import torch
    with ByteProgress(f'writing {path}') as progress, \
            atomic_write(path) as file:
        progress.enabled &= show_progress
        stream = progress.wrap(file)
        try:
            torch.save(checkpoint, stream)
        except RuntimeError as exc:
            # torch's writer reports a failed write in its own words, if
            # at all; the file system's error is the one to show.
            if stream.write_error is None:
                raise
            raise stream.write_error from exc


def _same_file(a: str, b: str) -> bool:
    if osp.exists(a) and osp.exists(b):
        return osp.samefile(a, b)
    return osp.realpath(a) == osp.realpath(b)


def check_output_is_not_input(output: str, *inputs: str) -> None:
    """Refuse to write ``output`` when it is one of ``inputs``.

    The paths are compared as files, not strings: a symlink, another
    spelling of the path or a hard link to an input is the input.

    Raises:
        ToolError: naming both paths.
    """
    for path in inputs:
        if _same_file(output, path):
            raise ToolError(
                f'the output {output} is the input {path}: writing it '
                'would replace the input; choose another output file')


def _special_kind(mode: int) -> Optional[str]:
    for test, kind in ((stat.S_ISCHR, 'character device'), (stat.S_ISBLK,
                                                            'block device'),
                       (stat.S_ISFIFO, 'named pipe'), (stat.S_ISSOCK,
                                                       'socket')):
        if test(mode):
            return kind
    return None


def check_output_path(path: str, what: Optional[str] = None) -> None:
    """Refuse an output that exists and is neither a regular file nor a
    directory (a device, a named pipe, a socket, also behind a symlink):
    writing it would replace the node, or feed a reader.

    Raises:
        OutputWriteError: naming the path and what it is.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a new file, or one the write itself will report
    kind = _special_kind(mode)
    if kind is not None:
        name = f'{what} {path}' if what else path
        raise OutputWriteError(
            f'cannot write {name}: it is a {kind}, not a regular file or '
            'directory')


def check_outputs(outputs: Mapping[str, str], inputs: Iterable[str]) -> None:
    """Refuse, before any work, outputs that would destroy an input or a
    device: :func:`check_output_path` and :func:`check_output_is_not_input`
    for each.

    Args:
        outputs (Mapping[str, str]): The option naming each output (e.g.
            ``'--out'``) and its path.
        inputs (Iterable[str]): The files and folders the run reads.
    """
    inputs = [path for path in inputs if path]
    for what, path in outputs.items():
        check_output_path(path, what)
        check_output_is_not_input(path, *inputs)


def parse_device(text: Optional[str], option: str = '--device'):
    """The ``torch.device`` a tool was given, checked before any work.

    Args:
        text (str, optional): ``cpu``, ``cuda``, ``cuda:1``...; None for
            CUDA when there is one, else the CPU.
        option (str): The option, named in the messages. Defaults to
            ``'--device'``.

    Raises:
        UsageError: ``text`` is no device.
        ToolError: the device is not on this machine.
    """
    import torch
    if text is None:
        text = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f'{option} {text!r}: not a device (cpu, cuda, '
                         'cuda:1, ...)') from None
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ToolError(f'{option} {text}: no CUDA device here; use '
                            f'{option} cpu')
        if device.index is not None and device.index >= count:
            raise ToolError(f'{option} {text}: this machine has {count} CUDA '
                            f'device{"s" if count > 1 else ""}')
    return device


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_tool(
    work: Callable[[], Optional[Iterable[str]]],
    source: Optional[str] = None,
    input_errors: Tuple[Type[Exception], ...] = ()
) -> int:
    """Run a tool's work for a person at a terminal.

    Prints the summary lines ``work()`` returns (if any) and gives 0; or
    prints one ``error: ...`` line on stderr and gives 2 for a
    :class:`UsageError`, 1 for another :class:`ToolError` or one of
    ``input_errors``, 130 for Ctrl-C. Any other exception is a bug, which
    the person cannot fix: it propagates, with its traceback.

    Args:
        work (callable): Does the work; returns the lines to print, or
            None when it printed as it went.
        source (str, optional): The input file, named in front of the
            messages of ``input_errors``. Defaults to None.
        input_errors (tuple[type]): Other exceptions that describe the
            input. Defaults to ``()``.
    """
    status = 1
    try:
        lines = list(work() or ())
    except UsageError as exc:
        message, status = str(exc), 2
    except ToolError as exc:
        message = str(exc)
    except input_errors as exc:
        message = f'{source}: {exc}' if source else str(exc)
    except KeyboardInterrupt:
        message, status = 'interrupted', 130
    else:
        if lines:
            print('\n'.join(lines))
        return 0
    print(f'error: {" ".join(message.split())}', file=sys.stderr)
    return status


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: the explicit opt-in to unpickle a checkpoint's
    objects other than tensors."""
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='unpickle objects other than tensors (a training config, say); '
        'only for files from a source you trust: unpickling can run code')


def int_at_least(minimum: int,
                 maximum: Optional[int] = None) -> Callable[[str], int]:
    """An ``argparse`` type: an integer of at least ``minimum`` (and at
    most ``maximum``, if given).

    Example::

        parser.add_argument('--num-val', type=int_at_least(0))
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f'{text!r} is not an integer') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f'must be at least {minimum}, got {value}')
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f'must be at most {maximum}, got {value}')
        return value

    parse.__name__ = 'int'  # what argparse names in other errors
    return parse


#: The ``argparse`` type of options that count or measure.
positive_int = int_at_least(1)

#: The largest image side the tools take. A vHeat-B stage-0 map of an
#: image this size is 2048 x 2048 x 128 float32 values, 2 GiB per tensor;
#: beyond it a single activation outgrows the largest accelerators.
MAX_IMAGE_SIDE = 8192

#: The ``argparse`` type of an image side.
image_side = int_at_least(1, MAX_IMAGE_SIDE)


class _CountingStream(io.RawIOBase):
    """A binary file that tells a :class:`ByteProgress` what passes.

    It has no ``fileno`` so that readers (``torch.load``) go through it.
    """

    def __init__(self, file: BinaryIO, progress: 'ByteProgress'):
        super().__init__()
        self._file = file
        self._progress = progress
        self._count = 0
        #: The first error of a write, which a caller's reader may hide.
        self.write_error: Optional[OSError] = None

    def _advance(self, size: Optional[int]) -> None:
        if size:
            self._count += size
            self._progress.update(self._count)

    def readable(self) -> bool:
        return self._file.readable()

    def writable(self) -> bool:
        return self._file.writable()

    def seekable(self) -> bool:
        return self._file.seekable()

    def readinto(self, buffer) -> int:
        size = self._file.readinto(buffer)
        self._advance(size)
        return size

    def write(self, data) -> int:
        try:
            size = self._file.write(data)
        except OSError as exc:
            self.write_error = self.write_error or exc
            raise
        self._advance(size)
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()


class ByteProgress:
    """One self-updating line on a terminal: ``reading X: 120/352 MB``.

    Reading and writing are the slow parts of the checkpoint tools (seconds
    for hundreds of MB; mapping the keys takes milliseconds), so progress is
    counted in bytes through :meth:`wrap`. Nothing is printed unless
    ``stream`` is a terminal, so logs and pipes get only the tools' result
    lines.

    Args:
        label (str): What is being done, e.g. ``'reading vHeat_base.pth'``.
        total (int, optional): Expected bytes, for a percentage.
            Defaults to None.
        stream (file, optional): Where to print. Defaults to ``sys.stderr``.
        interval (float): Least seconds between redraws. Defaults to 0.1.
    """

    def __init__(self,
                 label: str,
                 total: Optional[int] = None,
                 stream: Optional[IO[str]] = None,
                 interval: float = 0.1):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, 'isatty', None)
        self.enabled = bool(isatty and isatty())
        self.interval = interval
        self.done = 0
        self._drawn_at = None

    def wrap(self, file: BinaryIO) -> BinaryIO:
        """``file``, counting the bytes read from or written to it."""
        return _CountingStream(file, self)

    def _draw(self, end: str = '') -> None:
        megabytes = f'{self.done / 2**20:.0f}'
        if self.total:
            share = min(self.done, self.total) / self.total
            text = (f'{megabytes}/{self.total / 2**20:.0f} MB '
                    f'({share:.0%})')
        else:
            text = f'{megabytes} MB'
        self.stream.write(f'\r{self.label}: {text}{end}')
        self.stream.flush()

    def update(self, done: int) -> None:
        """Record ``done`` bytes so far; redraw at most every interval."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._drawn_at = now
            self._draw()

    def close(self, finished: bool = False) -> None:
        """End the line (only if anything was drawn).

        Args:
            finished (bool): The work is complete: show the total (readers
                skip a file's padding, so the count may fall short of it).
                Defaults to False.
        """
        if finished and self.total:
            self.done = self.total
        if self.enabled and self._drawn_at is not None:
            self._draw(end='\n')
            self._drawn_at = None

    def __enter__(self) -> 'ByteProgress':
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(finished=exc_type is None)
