# Copyright (c) mmvheat contributors. All rights reserved.
"""A JSON file that keeps autotuning decisions across processes.

The idea is that of Triton's and cuDNN's on-disk autotuning caches: the
timings that chose an implementation for one shape bucket on one GPU, with
one software stack, stay valid for the next run on the same. The file holds
one table per ``GPU name | torch version | Triton version`` (the caller
builds that key), each mapping a bucket to ``{"choice": name, "times_ms":
{name: ms}}``::

    {"format": "mmvheat-hco-autotune-v1",
     "tables": {"NVIDIA H100 80GB HBM3 | torch 2.4.0 | triton 3.0.0":
                {"200x336x96/bfloat16/train":
                 {"choice": "tiled", "times_ms": {...}}}}}

Writes are atomic (:func:`mmvheat.utils.io.atomic_write`: a temporary file
in the same folder, then ``os.replace``) and merge with what the file holds
at that moment, so
processes sharing the file (the ranks of a distributed job) never see a
half-written file; a concurrent write can at worst drop another process's
newest entries, which are then timed again. A file that is not such a cache
(unreadable, not JSON, another format) is ignored with one warning and never
overwritten.
"""
import json
import logging
import os.path as osp
from typing import Dict, Optional

from mmengine.logging import print_log

from mmvheat.utils.io import OutputWriteError, atomic_write

__all__ = ['AutotuneCache', 'CACHE_FORMAT']

#: The ``format`` field of a cache file.
CACHE_FORMAT = 'mmvheat-hco-autotune-v1'


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    times = entry.get('times_ms')
    return (isinstance(times, dict) and entry.get('choice') in times
            and all(isinstance(t, (int, float)) for t in times.values()))


class AutotuneCache:
    """Decisions persisted in the JSON file at ``path``.

    Args:
        path (str): The cache file; it need not exist yet.
    """

    def __init__(self, path: str):
        self.path = path
        self._tables: Optional[Dict[str, dict]] = None
        self._usable = True

    def _disable(self, reason: str):
        """Stop using the file for the rest of the process, saying why."""
        if self._usable:
            print_log(
                f'HCO autotune cache {self.path} ignored: {reason}. Decisions '
                'stay in memory; the file is left untouched.',
                logger='current',
                level=logging.WARNING)
        self._usable = False

    def _read(self) -> Dict[str, dict]:
        """The tables in the file now (empty if it does not exist)."""
        if not self._usable or not osp.exists(self.path):
            return {}
        try:
            with open(self.path, encoding='utf-8') as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            self._disable(f'cannot be read as JSON ({e})')
            return {}
        if not isinstance(data, dict) or data.get('format') != CACHE_FORMAT \
                or not isinstance(data.get('tables'), dict):
            self._disable(f'not an mmvheat HCO autotune cache (no "format": '
                          f'"{CACHE_FORMAT}" with "tables")')
            return {}
        return {
            name: table
            for name, table in data['tables'].items()
            if isinstance(table, dict)
        }

    def lookup(self, table: str, bucket: str) -> Optional[dict]:
        """The entry for ``bucket`` in ``table``, or None.

        The file is read once, at the first lookup.
        """
        if self._tables is None:
            self._tables = self._read()
        entry = self._tables.get(table, {}).get(bucket)
        return entry if _valid_entry(entry) else None

    def store(self, table: str, bucket: str, entry: dict):
        """Add ``entry`` and write the file atomically (if it is usable)."""
        if not self._usable:
            return
        tables = self._read()
        if not self._usable:
            return
        tables.setdefault(table, {})[bucket] = entry
        self._tables = tables
        try:
            with atomic_write(self.path, 'w') as f:
                json.dump({
                    'format': CACHE_FORMAT,
                    'tables': tables
                },
                          f,
                          indent=1,
                          sort_keys=True)
        except (OSError, OutputWriteError) as e:
            self._disable(f'cannot be written ({e.__cause__ or e})')
