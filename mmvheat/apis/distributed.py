# Copyright (c) mmvheat contributors. All rights reserved.
"""Distributed runs without CUDA: gloo, and a CPU data-parallel wrapper.

mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its runner
gives DistributedDataParallel ``device_ids``: neither works on the CPU.
"""
import contextlib
import logging

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

from mmvheat.engine import CPU_DDP

__all__ = ['setup_cpu_distributed', 'shutdown_distributed']


def _find_types(obj, name):
    if isinstance(obj, dict):
        return obj.get('type') == name or any(
            _find_types(v, name) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_find_types(v, name) for v in obj)
    return False


@contextlib.contextmanager
def _no_cuda_set_device():
    # mmengine's init_dist calls torch.cuda.set_device(LOCAL_RANK), which a
    # CPU-only torch cannot do.
    set_device = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = set_device


def setup_cpu_distributed(cfg: Config) -> None:
    """Without CUDA, run ``--launcher pytorch|slurm|mpi`` on gloo.

    Sets ``env_cfg.dist_cfg.backend = 'gloo'`` (if it is ``nccl``, the
    libraries' default), initialises the process group the way mmengine's
    runner would, minus ``torch.cuda.set_device``, and wraps the model in a
    DistributedDataParallel that takes no ``device_ids``.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    from mmengine.dist import init_dist, is_distributed

    cfg.env_cfg = cfg.get('env_cfg', None) or ConfigDict()
    cfg.env_cfg.dist_cfg = cfg.env_cfg.get('dist_cfg', None) or ConfigDict()
    backend = cfg.env_cfg.dist_cfg.get('backend', 'nccl')
    if backend in ('nccl', 'hccl', 'cncl', 'mccl'):
        cfg.env_cfg.dist_cfg.backend = 'gloo'
        print_log(
            f'CUDA is not available: distributed backend {backend} '
            'replaced by gloo.',
            logger='current')

    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type=CPU_DDP,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel'):
        wrapper.type = CPU_DDP

    if _find_types(cfg.get('model', {}), 'SyncBN') or cfg.get('sync_bn'):
        print_log(
            'The model uses SyncBN, which torch runs on GPUs only: '
            'distributed training on the CPU will fail. Use BN in '
            'the config, or run one process.',
            logger='current',
            level=logging.WARNING)

    if not is_distributed():
        with _no_cuda_set_device():
            init_dist(cfg.launcher, **cfg.env_cfg.dist_cfg)


def shutdown_distributed() -> None:
    """Wait for every process, then destroy the process group.

    mmengine leaves the group to the interpreter's exit, where gloo can
    abort a process that finishes first ("terminate called without an
    active exception"); torch asks for ``destroy_process_group`` anyway.
    """
    import torch.distributed as torch_dist
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
