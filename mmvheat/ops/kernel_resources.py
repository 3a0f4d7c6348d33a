# Copyright (c) mmvheat contributors. All rights reserved.
"""Offline compilation of the HCO kernels for a GPU architecture.

Triton compiles for any NVIDIA target without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))``),
and the CUDA tools in its wheel read the resources of the resulting cubin
(``cuobjdump --dump-resource-usage``): registers, stack (where ptxas puts
spilled registers; the kernels keep no local arrays) and shared memory. The
interpreter sees none of these, so this is how CI without a GPU checks that
every configuration of :func:`~mmvheat.ops.triton_hco.kernel_configurations`
builds and fits on the architectures users run.
"""
import multiprocessing
import os
import os.path as osp
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Optional, Tuple

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_hco

__all__ = ['SHARED_MEMORY_LIMIT', 'compile_offline', 'compile_all']

#: Shared memory a block may use (with the opt-in), bytes, by compute
#: capability: 163 KB on sm_80 (A100), 227 KB on sm_90 (H100/H200).
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _cuobjdump() -> str:
    return osp.join(
        osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')


def compile_offline(config: triton_hco.KernelConfig,
                    arch: int) -> Dict[str, float]:
    """Compile one kernel configuration for ``sm_<arch>``.

    Pointers are taken 16-byte aligned (as torch allocates); integer
    arguments unspecialised.

    Args:
        config (KernelConfig): The configuration.
        arch (int): The compute capability, e.g. 80 or 90.

    Returns:
        dict: ``registers`` and ``spill_bytes`` per thread,
        ``shared_bytes`` per block (dynamic and static), ``seconds`` spent.

    Raises:
        RuntimeError: Triton's interpreter is on (it compiles nothing).
        triton.compiler.errors.CompilationError: And other errors of the
            compiler or ptxas.
    """
    if triton_hco.triton_interpret_enabled():
        raise RuntimeError('unset TRITON_INTERPRET to compile kernels')
    start = time.perf_counter()
    signature = config.signature()
    aligned = {
        (i, ): [['tt.divisibility', 16]]
        for i, kind in enumerate(signature.values()) if kind.startswith('*')
    }
    kernel = getattr(triton_hco._kernels(False), config.kernel)
    compiled = triton.compile(
        ASTSource(
            kernel,
            signature,
            constexprs=dict(config.constexprs),
            attrs=aligned),
        target=GPUTarget('cuda', arch, 32),
        options={'num_warps': config.num_warps})
    with tempfile.TemporaryDirectory() as folder:
        cubin = osp.join(folder, 'kernel.cubin')
        with open(cubin, 'wb') as f:
            f.write(compiled.asm['cubin'])
        usage = subprocess.run([_cuobjdump(), '--dump-resource-usage', cubin],
                               check=True,
                               capture_output=True,
                               text=True,
                               env=dict(os.environ, LC_ALL='C')).stdout
    fields = dict(re.findall(r'\b(REG|STACK|SHARED|LOCAL):(\d+)', usage))
    return {
        'registers': int(fields['REG']),
        'spill_bytes': int(fields['STACK']) + int(fields['LOCAL']),
        'shared_bytes': compiled.metadata.shared + int(fields['SHARED']),
        'seconds': time.perf_counter() - start,
    }


def _compile_job(job):
    config, arch = job
    try:
        return compile_offline(config, arch), None
    except Exception as e:  # reported per configuration by the caller
        return None, f'{type(e).__name__}: {e}'


def _worker_setup():
    os.environ.pop('TRITON_INTERPRET', None)


def compile_all(
        archs=(80, 90), prec: str = 'tf32x3',
        workers: Optional[int] = None) -> Dict[Tuple[int, int], Any]:
    """:func:`compile_offline` for every configuration and architecture,
    in parallel worker processes (Triton's compilation is CPU-bound).

    Args:
        archs (tuple): Compute capabilities. Defaults to ``(80, 90)``.
        prec (str): ``tl.dot`` precision of the configurations. Defaults to
            ``'tf32x3'``, what GPUs of compute capability 8 and up run.
        workers (int, optional): Processes. Defaults to None: the CPUs.

    Returns:
        dict: ``(configuration index, arch)`` -> ``(resources, error)``,
        one of them None.
    """
    configs = triton_hco.kernel_configurations(prec)
    jobs = [(i, arch) for i in range(len(configs)) for arch in archs]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context('spawn'),
            initializer=_worker_setup) as pool:
        results = pool.map(_compile_job,
                           [(configs[i], arch) for i, arch in jobs])
        return dict(zip(jobs, results))
