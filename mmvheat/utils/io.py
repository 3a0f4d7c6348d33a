# Copyright (c) mmvheat contributors. All rights reserved.
import os
import os.path as osp
import sys
import tempfile
from typing import Callable, List, Tuple, Type

import torch

__all__ = [
    'CheckpointWriteError', 'save_checkpoint_atomic', 'first_line',
    'run_checkpoint_tool'
]


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the message names the file)."""


def save_checkpoint_atomic(checkpoint, dst: str) -> None:
    """``torch.save`` to ``dst`` through a temporary file in its directory.

    An interrupted or failed write leaves neither a partial ``dst`` nor a
    temporary file behind; an existing ``dst`` stays as it was.

    Raises:
        CheckpointWriteError: when the file system refuses the write.
    """
    try:
        _save(checkpoint, dst)
    except OSError as exc:
        raise CheckpointWriteError(
            f'cannot write {dst}: {exc.strerror or exc}') from exc


def _save(checkpoint, dst: str) -> None:
    dst_dir = osp.dirname(osp.abspath(dst))
    os.makedirs(dst_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f'.{osp.basename(dst)}.', suffix='.tmp', dir=dst_dir)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_checkpoint_tool(run: Callable[[], List[str]], src: str,
                        input_errors: Tuple[Type[Exception], ...]) -> int:
    """Run a checkpoint tool's work for a person at a terminal.

    Prints the summary lines ``run()`` returns and gives 0, or prints one
    ``error: ...`` line (naming ``src`` unless the output could not be
    written) and gives 1.
    """
    try:
        lines = run()
    except CheckpointWriteError as exc:
        message = str(exc)
    except input_errors as exc:
        message = f'{src}: {exc}'
    except Exception as exc:
        message = f'{src}: {type(exc).__name__}: {exc}'
    else:
        print('\n'.join(lines))
        return 0
    print(f'error: {message}', file=sys.stderr)
    return 1
