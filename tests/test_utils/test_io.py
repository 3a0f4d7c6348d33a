# Copyright (c) mmvheat contributors. All rights reserved.
"""``mmvheat.utils.io``: the tools' one file writer and their messages.

The writer's promises are checked on the file system itself: the old file
or the new one and nothing in between, the permissions a plain ``open``
gives, a symlink kept, the directory fsynced after the rename, and the
process umask never touched.
"""
import argparse
import errno
import io
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

from mmvheat.utils.io import (ByteProgress, OutputWriteError, ToolError,
                              UsageError, atomic_write,
                              check_output_is_not_input, check_outputs,
                              ensure_directory, int_at_least, positive_int,
                              run_tool, save_checkpoint_atomic)


@pytest.fixture
def umask_forbidden(monkeypatch):
    """Fail the test if anything changes (or reads through) the umask."""

    def refuse(*args):
        raise AssertionError('os.umask was called')

    monkeypatch.setattr(os, 'umask', refuse)


@pytest.fixture
def umask_027():
    """Run with umask 027, restored afterwards (set before the writer is
    called, so the writer's own use of os.umask stays detectable)."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_new_file_gets_the_umask_permissions(tmp_path, umask_027,
                                             umask_forbidden):
    dst = tmp_path / 'new' / 'model.onnx'
    with atomic_write(str(dst)) as f:
        f.write(b'\x08\x07bytes')
    assert dst.read_bytes() == b'\x08\x07bytes'
    # 0o666 narrowed by umask 027, as open(dst, 'wb') would make it.
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o640
    assert os.listdir(dst.parent) == ['model.onnx']


def test_existing_file_keeps_its_permissions(tmp_path, umask_forbidden):
    dst = tmp_path / 'notes.txt'
    dst.write_text('old')
    os.chmod(dst, 0o604)
    with atomic_write(str(dst), 'w') as f:
        f.write('new, ü')
    assert dst.read_text(encoding='utf-8') == 'new, ü'
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o604


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / 'ckpt.pth'
    dst.write_bytes(b'previous')
    with pytest.raises(KeyError, match='boom'):
        with atomic_write(str(dst)) as f:
            f.write(b'half of the new content')
            raise KeyError('boom')
    assert dst.read_bytes() == b'previous'
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_reader_never_sees_a_partial_file(tmp_path):
    dst = tmp_path / 'ckpt.pth'
    dst.write_bytes(b'previous')
    with atomic_write(str(dst)) as f:
        f.write(b'new')
        f.flush()
        assert dst.read_bytes() == b'previous'  # until the block ends
    assert dst.read_bytes() == b'new'


def test_symlink_is_kept_and_its_target_written(tmp_path):
    target = tmp_path / 'store' / 'real.pth'
    target.parent.mkdir()
    target.write_bytes(b'previous')
    link = tmp_path / 'link.pth'
    link.symlink_to(target)
    with atomic_write(str(link)) as f:
        f.write(b'new')
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert target.read_bytes() == b'new'
    # The temporary file was made beside the target, and is gone.
    assert os.listdir(target.parent) == ['real.pth']
    assert sorted(os.listdir(tmp_path)) == ['link.pth', 'store']


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / 'link.pth'
    link.symlink_to(tmp_path / 'later' / 'real.pth')
    with atomic_write(str(link)) as f:
        f.write(b'new')
    assert link.is_symlink()
    assert (tmp_path / 'later' / 'real.pth').read_bytes() == b'new'


def test_file_then_directory_are_fsynced(tmp_path, monkeypatch):
    """The data reaches the disk before the rename, the rename after."""
    dst = tmp_path / 'ckpt.pth'
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        mode = os.fstat(fd).st_mode
        synced.append(('dir' if stat.S_ISDIR(mode) else 'file', dst.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', recording_fsync)
    with atomic_write(str(dst)) as f:
        f.write(b'new')
    assert synced == [('file', False), ('dir', True)]


@pytest.mark.parametrize('case', ['dst-is-dir', 'parent-is-file'])
def test_unwritable_destination(tmp_path, case):
    if case == 'dst-is-dir':
        dst = tmp_path / 'taken'
        dst.mkdir()
        reason = 'it is a directory'
    else:
        (tmp_path / 'afile').write_text('x')
        dst = tmp_path / 'afile' / 'sub' / 'ckpt.pth'
        reason = f'{tmp_path / "afile"} is not a directory'
    with pytest.raises(OutputWriteError) as info:
        with atomic_write(str(dst)) as f:
            f.write(b'new')
    assert str(info.value) == f'cannot write {dst}: {reason}'
    assert sorted(os.listdir(tmp_path)) == (['taken'] if case == 'dst-is-dir'
                                            else ['afile'])


def test_write_error_inside_the_block_is_reported(tmp_path):
    dst = tmp_path / 'ckpt.pth'
    with pytest.raises(OutputWriteError, match=f'cannot write {dst}: '):
        with atomic_write(str(dst)):
            raise OSError(28, 'No space left on device')
    assert os.listdir(tmp_path) == []


def test_save_checkpoint_atomic_round_trip(tmp_path, umask_forbidden):
    state = {'state_dict': {'w': torch.arange(6.).reshape(2, 3)}}
    save_checkpoint_atomic(state, str(tmp_path / 'c.pth'), show_progress=True)
    loaded = torch.load(tmp_path / 'c.pth', weights_only=True)
    assert torch.equal(loaded['state_dict']['w'], state['state_dict']['w'])
    assert os.listdir(tmp_path) == ['c.pth']


def test_progress_counts_every_byte_written(tmp_path):
    progress = ByteProgress('writing', stream=io.StringIO())
    with atomic_write(str(tmp_path / 'c.pth')) as f:
        torch.save({'w': torch.zeros(1000)}, progress.wrap(f))
    assert progress.done == os.path.getsize(tmp_path / 'c.pth')


@pytest.mark.parametrize('spelling', ['same', 'dotdot', 'symlink', 'hardlink'])
def test_output_that_is_the_input_is_refused(tmp_path, spelling):
    src = tmp_path / 'a' / 'src.pth'
    src.parent.mkdir()
    src.write_bytes(b'input')
    dst = {
        'same': src,
        'dotdot': tmp_path / 'a' / '..' / 'a' / 'src.pth',
        'symlink': tmp_path / 'link.pth',
        'hardlink': tmp_path / 'hard.pth',
    }[spelling]
    if spelling == 'symlink':
        dst.symlink_to(src)
    elif spelling == 'hardlink':
        os.link(src, dst)
    with pytest.raises(ToolError, match='is the input'):
        check_output_is_not_input(str(dst), str(tmp_path / 'other'), str(src))
    # Another file beside it is fine, existing or not.
    check_output_is_not_input(str(tmp_path / 'a' / 'dst.pth'), str(src))
    (tmp_path / 'copy.pth').write_bytes(b'input')
    check_output_is_not_input(str(tmp_path / 'copy.pth'), str(src))


def _run(work, capsys, **kwargs):
    status = run_tool(work, **kwargs)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_run_tool_prints_lines_or_one_error_line(capsys):
    assert _run(lambda: ['done', 'saved'], capsys) == (0, 'done\nsaved\n', '')

    def usage():
        raise UsageError('--tg-size must be\na multiple of 32')

    assert _run(usage,
                capsys) == (2, '',
                            'error: --tg-size must be a multiple of 32\n')

    def bad_input():
        raise ValueError('not a vHeat checkpoint')

    assert _run(
        bad_input, capsys, source='x.pth', input_errors=(ValueError, )) == (
            1, '', 'error: x.pth: not a vHeat checkpoint\n')

    def tool_error():
        raise ToolError('x.pth: is empty')

    assert _run(
        tool_error, capsys,
        source='x.pth') == (1, '', 'error: x.pth: is empty\n')

    def printed_as_it_went():
        print('step 1')

    assert _run(printed_as_it_went, capsys) == (0, 'step 1\n', '')

    def bug():
        raise IndexError('list index out of range\nmore detail')

    # A bug is not the person's to fix: its traceback is kept.
    with pytest.raises(IndexError, match='list index out of range'):
        run_tool(bug, source='x.pth')

    def interrupted():
        raise KeyboardInterrupt

    assert _run(interrupted, capsys) == (130, '', 'error: interrupted\n')


class _Terminal(io.StringIO):

    def isatty(self):
        return True


def test_byte_progress_draws_on_a_terminal_only():
    terminal = _Terminal()
    with ByteProgress(
            'reading x.pth', total=4 << 20, stream=terminal,
            interval=0) as progress:
        stream = progress.wrap(io.BytesIO(bytes(4 << 20)))
        while stream.read(1 << 20):
            pass
    lines = terminal.getvalue().split('\r')[1:]
    assert lines[0] == 'reading x.pth: 1/4 MB (25%)'
    assert lines[-1] == 'reading x.pth: 4/4 MB (100%)\n'

    pipe = io.StringIO()
    with ByteProgress(
            'reading x.pth', total=4, stream=pipe, interval=0) as progress:
        progress.wrap(io.BytesIO(b'abcd')).read()
    assert pipe.getvalue() == ''
    assert progress.done == 4


def test_ensure_directory(tmp_path):
    made = tmp_path / 'a' / 'b'
    assert ensure_directory(str(made), '--work-dir') == str(made)
    assert made.is_dir() and list(made.iterdir()) == []  # no probe left
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    with pytest.raises(OutputWriteError) as info:
        ensure_directory(str(a_file / 'sub'), '--out-dir')
    assert str(info.value) == (f'cannot write --out-dir {a_file}/sub: '
                               f'{a_file} is not a directory')
    with pytest.raises(OutputWriteError, match='it is not a directory'):
        ensure_directory(str(a_file))
    assert a_file.read_text() == ''


@pytest.mark.parametrize('text, value', [('1', 1), ('224', 224)])
def test_positive_int(text, value):
    assert positive_int(text) == value


def test_int_at_least():
    assert int_at_least(0)('0') == 0
    assert int_at_least(16)('16') == 16
    with pytest.raises(
            argparse.ArgumentTypeError, match='at least 16, got '
            '15'):
        int_at_least(16)('15')


@pytest.mark.parametrize('text, words', [('0', 'at least 1, got 0'),
                                         ('-32', 'at least 1, got -32'),
                                         ('1.5', "'1.5' is not an integer")])
def test_positive_int_refuses(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
        positive_int(text)


# -- temporaries a killed write left ------------------------------------------
def _left_by_a_killed_write(path):
    """A temporary named as the writer names them, unlocked: what a write
    killed with SIGKILL leaves (the kernel drops the dead writer's lock)."""
    stale = path.parent / f'.{path.name}.0badc0de.tmp'
    stale.write_bytes(b'half a checkpoint')
    return stale


def test_next_write_removes_stale_temporaries(tmp_path):
    dst = tmp_path / 'iter_4.pth'
    stale = _left_by_a_killed_write(dst)
    other = tmp_path / '.iter_6.pth.0badc0de.tmp'  # another file's
    other.write_bytes(b'x')
    with atomic_write(str(dst)) as f:
        f.write(b'new')
    assert sorted(
        os.listdir(tmp_path)) == ['.iter_6.pth.0badc0de.tmp', 'iter_4.pth']
    assert not stale.exists() and dst.read_bytes() == b'new'


def test_a_live_writers_temporary_is_kept(tmp_path):
    """Two writers of one file: the second leaves the first one's
    temporary alone while the first holds it (and its lock)."""
    dst = tmp_path / 'iter_4.pth'
    with atomic_write(str(dst)) as first:
        first.write(b'first')
        (temporary, ) = [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
        with atomic_write(str(dst)) as second:
            second.write(b'second')
        assert temporary in os.listdir(tmp_path)
    assert dst.read_bytes() == b'first'
    assert os.listdir(tmp_path) == ['iter_4.pth']


def test_what_only_looks_like_a_temporary_is_left_alone(tmp_path):
    """A named pipe or a symlink named as the writer names its temporaries
    is not one of them: the write neither waits on the pipe nor removes
    either. (In a child, so that a write that waits fails the test.)"""
    dst = tmp_path / 'iter_4.pth'
    fifo = tmp_path / f'.{dst.name}.0badc0de.tmp'
    os.mkfifo(fifo)
    kept = tmp_path / 'kept'
    kept.write_bytes(b'kept')
    link = tmp_path / f'.{dst.name}.1badc0de.tmp'
    os.symlink(kept, link)
    code = ('from mmvheat.utils.io import atomic_write\n'
            f'with atomic_write({str(dst)!r}) as f:\n'
            "    f.write(b'new')\n")
    proc = subprocess.run([sys.executable, '-c', code],
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert dst.read_bytes() == b'new'
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.readlink(link) == str(kept) and kept.read_bytes() == b'kept'


class _DiskFullAfter:
    """A file whose writes fail as on a full disk after ``limit`` bytes."""

    def __init__(self, file, limit: int):
        self._file, self._left = file, limit

    def write(self, data):
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.close()


def test_a_checkpoint_save_reports_the_file_systems_error(
        tmp_path, monkeypatch):
    """torch's writer reports a failed write in its own words; the save
    reports the file system's, and leaves nothing behind."""
    fdopen = os.fdopen
    monkeypatch.setattr(
        os, 'fdopen',
        lambda *args, **kwargs: _DiskFullAfter(fdopen(*args, **kwargs), 4096))
    dst = tmp_path / 'c.pth'
    with pytest.raises(OutputWriteError) as info:
        save_checkpoint_atomic({'w': torch.zeros(100000)}, str(dst))
    assert str(
        info.value) == (f'cannot write {dst}: {os.strerror(errno.ENOSPC)}')
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('through_symlink', [False, True])
def test_named_pipe_is_never_replaced(tmp_path, through_symlink):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    dst = fifo
    if through_symlink:
        dst = tmp_path / 'link'
        os.symlink(fifo, dst)
    with pytest.raises(OutputWriteError) as info:
        check_outputs({'--out': str(dst)}, [])
    assert str(info.value) == (f'cannot write --out {dst}: it is a named '
                               'pipe, not a regular file or directory')
    with pytest.raises(OutputWriteError, match='it is a named pipe'):
        with atomic_write(str(dst)) as f:
            f.write(b'replaces the pipe')
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_check_outputs_refuses_an_input_under_any_name(tmp_path):
    source = tmp_path / 'ckpt.pth'
    source.write_bytes(b'weights')
    os.link(source, tmp_path / 'hard.pth')
    for output in (source, tmp_path / 'hard.pth',
                   tmp_path / 'x' / '..' / 'ckpt.pth'):
        with pytest.raises(ToolError, match='would replace the input'):
            check_outputs({'--out': str(output)}, [None, str(source)])
    check_outputs({'--out': str(tmp_path / 'new.pth')}, [str(source)])
    assert source.read_bytes() == b'weights'
