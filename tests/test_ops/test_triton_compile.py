# Copyright (c) mmvheat contributors. All rights reserved.
"""Every kernel configuration the dispatcher can run, compiled offline for
sm_80 (A100) and sm_90 (H100/H200) as on those GPUs (3xTF32 dots), without
a GPU.

Each must compile, fit the architecture's shared memory per block, and
spill at most :data:`SPILL_BUDGET` bytes per thread. The budget: a few
spilled 4-byte values are reloaded from L1 inside loops that issue
thousands of tensor-core instructions per iteration, which costs nothing
measurable; what it guards against is a configuration that does not fit
(a 64 x 64 fused slab spills kilobytes). ``test_triton_hco`` checks that
the launches use only these configurations.

The compilations run in parallel processes; Triton's on-disk cache makes
later runs fast.
"""
import pytest

from mmvheat.ops import triton_hco

kernel_resources = pytest.importorskip('mmvheat.ops.kernel_resources')
CompilationError = pytest.importorskip(
    'triton.compiler.errors').CompilationError

ARCHS = (80, 90)
SPILL_BUDGET = 64
CONFIGS = triton_hco.kernel_configurations('tf32x3')


def _name(config):
    params = dict(config.constexprs)
    dtype = dict(config.pointer_dtypes)
    if config.kernel == 'hco_fused_kernel':
        role = {
            (True, False): 'forward',
            (False, True): 'grad-T',
            (True, True): 'grad-x-T'
        }[params['STORE_OUT'], params['NEED_GT']]
        return f'fused-{dtype["x_ptr"]}-{params["HP"]}x{params["WP"]}-{role}'
    role = ('inverse' if params['TRANS'] else 'forward') + \
        ('-transfer' if params['MUL'] else '')
    return (f'gemm-{dtype["in_ptr"]}-{dtype["out_ptr"]}-BM{params["BM"]}-'
            f'{role}')


@pytest.fixture(scope='module')
def compiled():
    return kernel_resources.compile_all(ARCHS, 'tf32x3')


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize(
    'index', range(len(CONFIGS)), ids=[_name(c) for c in CONFIGS])
def test_compiles_within_limits(compiled, index, arch):
    resources, error = compiled[index, arch]
    assert error is None, f'{CONFIGS[index]} on sm_{arch}: {error}'
    assert resources['shared_bytes'] <= \
        kernel_resources.SHARED_MEMORY_LIMIT[arch], resources
    assert resources['spill_bytes'] <= SPILL_BUDGET, resources
    assert resources['registers'] <= 255, resources


def test_names_are_unique():
    assert len({_name(c) for c in CONFIGS}) == len(CONFIGS)


def test_limits_are_enforced(monkeypatch):
    """Controls: a fused slab of 64 x 64 (not a configuration) spills over
    the budget, and an invalid one fails to compile."""
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    forward = CONFIGS[0]
    params = dict(forward.constexprs, HP=64, WP=64, BC=2)
    resources = kernel_resources.compile_offline(
        forward._replace(constexprs=tuple(params.items())), 90)
    assert resources['spill_bytes'] > SPILL_BUDGET, resources
    params = dict(forward.constexprs, BC=3)  # tl.arange needs powers of 2
    with pytest.raises(CompilationError):
        kernel_resources.compile_offline(
            forward._replace(constexprs=tuple(params.items())), 90)
