# Copyright (c) mmvheat contributors. All rights reserved.
"""Resuming a training run: which checkpoint, and whether it can resume.

mmengine's auto-resume reads the file named in ``work_dir/last_checkpoint``,
which ``CheckpointHook`` rewrites in place after every save: a run killed
at that moment leaves it empty, and a run killed while saving leaves a
truncated ``iter_N.pth`` behind it. :func:`find_resumable_checkpoint` takes
the newest complete checkpoint instead, and says which it took and which it
passed over.

``Runner.resume`` then uses what the file says without asking: an
iteration of ``10**30`` makes ``IterBasedTrainLoop`` draw that many batches
before the first step (it never ends), a negative one trains past the
schedule, a string seed or a malformed optimizer state fails deep inside
mmengine or torch. :func:`check_resume_state` refuses the first kinds in
one line before anything is resumed; :func:`resume_errors_explained` turns
what fails while the runner applies the rest into one line naming the file.
"""
import functools
import glob
import os
import os.path as osp
from typing import Optional

from mmengine.logging import print_log

from mmvheat.utils.checkpoint_loading import checkpoint_file_problem
from mmvheat.utils.io import ToolError, first_line
from mmvheat.utils.weights import CheckpointContentError

__all__ = [
    'find_resumable_checkpoint', 'check_resume_state',
    'resume_errors_explained'
]

# What the runner raises when a resumed state does not fit what it has
# built; none of them is about anything else while it resumes.
_STATE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError,
                 AssertionError, RuntimeError)
_MESSAGE_HUB_PARTS = ('log_scalars', 'runtime_info', 'resumed_keys')


def _modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return float('-inf')


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint of ``work_dir``, or None.

    The file ``last_checkpoint`` names comes first, then every ``*.pth`` of
    the folder, newest first; the first that is a complete checkpoint file
    (:func:`mmvheat.utils.checkpoint_loading.checkpoint_file_problem`) is
    taken. Which was taken, and which were passed over and why, is logged.
    """
    candidates = sorted(
        glob.glob(osp.join(glob.escape(work_dir), '*.pth')),
        key=_modified,
        reverse=True)
    try:
        with open(
                osp.join(work_dir, 'last_checkpoint'),
                encoding='utf-8') as file:
            named = file.read().strip()
    except (OSError, UnicodeDecodeError):
        named = ''
    if named:
        candidates.insert(0, named)
    skipped, seen = [], set()
    for path in candidates:
        real = osp.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        problem = checkpoint_file_problem(path)
        if problem is None:
            passed = f'; passed over {"; ".join(skipped)}' if skipped else ''
            print_log(
                f'Resuming from {path}, the newest complete checkpoint in '
                f'{work_dir}{passed}',
                logger='current')
            return path
        skipped.append(f'{path} ({problem})')
    if not named:
        skipped.insert(0, 'last_checkpoint (empty or missing)')
    print_log(
        f'No complete checkpoint to resume in {work_dir} '
        f'({"; ".join(skipped)}): training from the start',
        logger='current')
    return None


def check_resume_state(checkpoint, runner, source: str) -> None:
    """Refuse a checkpoint whose training state the runner cannot resume.

    ``meta`` must hold the ``iter`` and ``epoch`` the runner saved:
    integers of at least 0 and at most the schedule's end; ``seed`` an
    integer or None; ``message_hub`` the three parts mmengine saves.

    Raises:
        CheckpointContentError: one line naming the file and the entry.
    """

    def refuse(what: str):
        raise CheckpointContentError(
            f'{source}: cannot resume from it: {what}')

    if not isinstance(checkpoint, dict) or not isinstance(
            checkpoint.get('meta'), dict):
        refuse('it holds no meta (the iteration and epoch to go on from); '
               'to start from its weights, use load_from instead')
    meta = checkpoint['meta']
    loop = runner.train_loop
    ends = dict(iter=loop.max_iters, epoch=getattr(loop, 'max_epochs', None))
    for name, end in ends.items():
        value = meta.get(name)
        if type(value) is not int or value < 0:
            refuse(f"meta['{name}'] is {value!r}, not an integer of at least "
                   '0')
        if end is not None and value > end:
            refuse(f"meta['{name}'] is {value}, past the end of the schedule "
                   f'(max_{name}s = {end})')
    seed = meta.get('seed')
    if seed is not None and type(seed) is not int:
        refuse(f"meta['seed'] is {seed!r}, not an integer")
    hub = checkpoint.get('message_hub')
    if not isinstance(hub, dict) or not all(
            isinstance(hub.get(part), dict) for part in _MESSAGE_HUB_PARTS):
        refuse('its message_hub is not the state mmengine saves (a dict of '
               f'{", ".join(_MESSAGE_HUB_PARTS)})')


def resume_errors_explained(runner) -> None:
    """Make a failure of ``runner.resume`` while it applies a checkpoint's
    state (optimizer, schedulers, message hub) one line naming the file.

    The runner's method is replaced on this instance only.
    """
    resume = runner.resume

    @functools.wraps(resume)
    def resume_explained(filename, *args, **kwargs):
        try:
            return resume(filename, *args, **kwargs)
        except ToolError:
            raise
        except _STATE_ERRORS as exc:
            raise CheckpointContentError(
                f'{filename}: cannot resume from it: {type(exc).__name__}: '
                f'{first_line(exc)}') from exc

    runner.resume = resume_explained
