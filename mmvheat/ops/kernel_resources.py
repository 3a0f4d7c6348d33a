# Copyright (c) mmvheat contributors. All rights reserved.
"""Offline compilation of the HCO kernels for a GPU architecture.

Triton compiles for any NVIDIA target without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))``),
and the CUDA tools in its wheel read the resources of the resulting cubin
(``cuobjdump --dump-resource-usage``): registers, stack (where ptxas puts
spilled registers; the kernels keep no local arrays) and shared memory. The
interpreter sees none of these, so this is how CI without a GPU checks that
every variant the launchers run (:func:`launched_variants`: each
configuration of :func:`~mmvheat.ops.triton_hco.kernel_configurations` with
its integer arguments specialised as Triton specialises them at run time)
builds and fits on the architectures users run.
"""
import multiprocessing
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = [
    'SHARED_MEMORY_LIMIT', 'compile_offline', 'compile_all',
    'launched_variants'
]

#: Shared memory a block may use (with the opt-in), bytes, by compute
#: capability: 163 KB on sm_80 (A100), 227 KB on sm_90 (H100/H200).
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _cuobjdump() -> str:
    import triton
    return osp.join(
        osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')


def _triton_hco():
    """The kernel module, imported on first use: a worker process of
    :func:`compile_all` clears ``TRITON_INTERPRET`` before Triton and the
    kernels are imported (both read it then), so this module imports
    neither at its top."""
    from . import triton_hco
    return triton_hco


def compile_offline(variant, arch: int) -> Dict[str, float]:
    """Compile one kernel variant for ``sm_<arch>``.

    Pointers are taken 16-byte aligned (the launchers pass them so);
    integer arguments are specialised as the variant says (an integer
    equal to 1 compiled in as a constant, a multiple of 16 marked
    divisible), as Triton compiles them for a launch.

    Args:
        variant (KernelVariant | KernelConfig): What to compile; a
            configuration alone is compiled with no integer specialised.
        arch (int): The compute capability, e.g. 80 or 90.

    Returns:
        dict: ``registers`` and ``spill_bytes`` per thread,
        ``shared_bytes`` per block (dynamic and static), ``seconds`` spent.

    Raises:
        RuntimeError: The kernels of this process run in Triton's
            interpreter (imported with ``TRITON_INTERPRET=1``), which
            compiles nothing.
        triton.compiler.errors.CompilationError: And other errors of the
            compiler or ptxas.
    """
    hco = _triton_hco()
    if hco.triton_interpret_enabled():
        raise RuntimeError('the kernels of this process were imported for '
                           "Triton's interpreter; compile in a process "
                           'without TRITON_INTERPRET (compile_all does)')
    if isinstance(variant, hco.KernelConfig):
        variant = hco.KernelVariant(variant, ())
    config = variant.config
    start = time.perf_counter()
    integers = dict(variant.integers)
    signature = config.signature()
    constexprs = dict(config.constexprs)
    attrs = {}
    for i, (name, kind) in enumerate(signature.items()):
        if kind.startswith('*') or integers.get(name) == 'D':
            attrs[(i, )] = [['tt.divisibility', 16]]
        elif integers.get(name) == 1:
            signature[name] = 'constexpr'
            constexprs[name] = 1
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    compiled = triton.compile(
        ASTSource(
            hco.KERNELS[config.kernel],
            signature,
            constexprs=constexprs,
            attrs=attrs),
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


def launched_variants(shapes: Sequence[Tuple[int, int, int, int]],
                      prec: str = 'tf32x3') -> list:
    """The kernel variants that calls on maps of ``shapes`` launch: every
    path that takes the shape, every activation dtype, the forward and each
    set of gradients of the backward, with dot precision ``prec``.

    Found by running the launchers on ``meta`` tensors under
    :func:`~mmvheat.ops.triton_hco.recorded_launches` (nothing is computed
    or launched).

    Args:
        shapes (sequence): ``(B, H, W, C)`` of the maps.
        prec (str): The ``tl.dot`` precision. Defaults to ``'tf32x3'``.

    Returns:
        list[KernelVariant]: Sorted, each once.
    """
    import torch
    hco = _triton_hco()
    meta = torch.device('meta')
    with hco.recorded_launches() as launched:
        for shape in set(map(tuple, shapes)):
            transfer = torch.empty(shape[1:], device=meta)
            for dtype in hco.SUPPORTED_DTYPES:
                x = torch.empty(shape, dtype=dtype, device=meta)
                for path in hco.kernel_paths(*shape[1:3]):
                    hco.launch_forward(x, transfer, path)
                    for need in ((True, False), (False, True), (True, True)):
                        hco.launch_backward(x, transfer, x, *need, path)
    variants = set()
    for variant in launched:
        constexprs = tuple((name, prec if name == 'PREC' else value)
                           for name, value in variant.config.constexprs)
        variants.add(
            variant._replace(
                config=variant.config._replace(constexprs=constexprs)))
    return sorted(variants, key=repr)


def _compile_job(job):
    variant, arch = job
    try:
        return compile_offline(variant, arch), None
    except Exception as e:  # reported per variant by the caller
        return None, f'{type(e).__name__}: {e}'


def _worker_setup():
    os.environ.pop('TRITON_INTERPRET', None)
    if 'triton' in sys.modules:
        raise RuntimeError('triton was imported before TRITON_INTERPRET was '
                           'cleared: its library functions would be '
                           'interpreted ones')


def compile_all(variants: Sequence,
                archs=(80, 90),
                workers: Optional[int] = None) -> Dict[Tuple[int, int], Any]:
    """:func:`compile_offline` for every variant and architecture, in
    parallel worker processes (Triton's compilation is CPU-bound) that
    import the kernels without Triton's interpreter.

    Args:
        variants (sequence): :class:`KernelVariant` (or
            :class:`KernelConfig`) to compile.
        archs (tuple): Compute capabilities. Defaults to ``(80, 90)``.
        workers (int, optional): Processes. Defaults to None: the CPUs.

    Returns:
        dict: ``(variant index, arch)`` -> ``(resources, error)``, one of
        them None.
    """
    jobs = [(i, arch) for i in range(len(variants)) for arch in archs]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context('spawn'),
            initializer=_worker_setup) as pool:
        results = pool.map(_compile_job,
                           [(variants[i], arch) for i, arch in jobs])
        return dict(zip(jobs, results))
