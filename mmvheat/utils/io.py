# Copyright (c) mmvheat contributors. All rights reserved.
import os
import os.path as osp
import tempfile

import torch

__all__ = ['save_checkpoint_atomic', 'first_line']


def save_checkpoint_atomic(checkpoint, dst: str) -> None:
    """``torch.save`` to ``dst`` through a temporary file in its directory.

    An interrupted or failed write leaves neither a partial ``dst`` nor a
    temporary file behind; an existing ``dst`` stays as it was.
    """
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
