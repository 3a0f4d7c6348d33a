# Copyright (c) mmvheat contributors. All rights reserved.
"""mmengine's local file backend, writing each file all at once.

mmengine's ``LocalBackend.put`` opens the destination and writes into it:
a run killed while ``CheckpointHook`` saves leaves a truncated
``iter_N.pth``. :class:`AtomicLocalBackend` writes through
:func:`mmvheat.utils.io.atomic_write` (a temporary file beside it, flushed
to disk, then renamed over it), so that a checkpoint is either the old file
or the new one. ``tools/train.py`` gives it to the config's
``CheckpointHook`` (``backend_args=dict(backend='mmvheat_atomic')``) when
the config chooses no backend of its own.
"""
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

from mmvheat.utils.io import atomic_write

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend']

#: The backend's name, for ``backend_args``.
ATOMIC_BACKEND = 'mmvheat_atomic'


class AtomicLocalBackend(LocalBackend):
    """``LocalBackend`` whose writes replace a file all at once."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        with atomic_write(str(filepath)) as file:
            file.write(obj)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        with atomic_write(str(filepath), 'wb') as file:
            file.write(obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
