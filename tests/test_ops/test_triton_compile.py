# Copyright (c) mmvheat contributors. All rights reserved.
"""The kernel variants the model zoo's runs launch, compiled offline for
sm_80 (A100) and sm_90 (H100/H200) as on those GPUs (3xTF32 dots), without
a GPU.

The variants are those Triton compiles at run time: each configuration with
its integer arguments specialised (an argument equal to 1 compiled in as a
constant, a multiple of 16 marked divisible, which allows wider loads and
``cp.async``), as the launches for every stage shape of vHeat-T/S/B on
ImageNet, ADE20K and COCO (``workloads.py``) make them
(``kernel_resources.launched_variants``, on ``meta`` tensors); and every
configuration unspecialised (any other shape).

Each must compile, fit the architecture's shared memory per block, and
spill at most :data:`SPILL_BUDGET` bytes per thread. The budget: a few
spilled 4-byte values are reloaded from L1 inside loops that issue
thousands of tensor-core instructions per iteration, which costs nothing
measurable; what it guards against is a configuration that does not fit
(a 64 x 64 fused slab spills kilobytes). ``test_triton_hco`` checks that
the launches use only listed configurations.

The compilations run in parallel processes that import the kernels without
Triton's interpreter; Triton's on-disk cache makes later runs fast.
"""
import pytest

from .workloads import zoo_shapes

triton_hco = pytest.importorskip('mmvheat.ops.triton_hco')
kernel_resources = pytest.importorskip('mmvheat.ops.kernel_resources')
CompilationError = pytest.importorskip(
    'triton.compiler.errors').CompilationError

ARCHS = (80, 90)
SPILL_BUDGET = 64
CONFIGS = triton_hco.kernel_configurations('tf32x3')


def _name(config):
    params = dict(config.constexprs)
    dtype = dict(config.pointer_dtypes)
    if config.kernel in ('hco_fused_kernel', 'hco_row_kernel'):
        role = {
            (True, False): 'forward',
            (False, True): 'grad-T',
            (True, True): 'grad-x-T'
        }[params['STORE_OUT'], params['NEED_GT']]
        if config.kernel == 'hco_row_kernel':
            return f'row-{params["WP"]}-{role}'
        return f'fused-{dtype["x_ptr"]}-{params["HP"]}x{params["WP"]}-{role}'
    role = ('inverse' if params['TRANS'] else 'forward') + \
        ('-transfer' if params['MUL'] else '')
    return (f'gemm-{dtype["in_ptr"]}-{dtype["out_ptr"]}-BM{params["BM"]}-'
            f'{role}')


@pytest.fixture(scope='module')
def variants():
    """Every configuration unspecialised, then the zoo's variants."""
    return [triton_hco.KernelVariant(c, ()) for c in CONFIGS] + \
        kernel_resources.launched_variants(zoo_shapes(), 'tf32x3')


@pytest.fixture(scope='module')
def compiled(variants):
    return kernel_resources.compile_all(variants, ARCHS)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('config', CONFIGS, ids=_name)
def test_compiles_within_limits(variants, compiled, config, arch):
    """Every variant of ``config`` (at least the unspecialised one)."""
    checked = 0
    for index, variant in enumerate(variants):
        if variant.config != config:
            continue
        resources, error = compiled[index, arch]
        what = f'{variant.integers or "unspecialised"} on sm_{arch}'
        assert error is None, f'{what}: {error}'
        assert resources['shared_bytes'] <= \
            kernel_resources.SHARED_MEMORY_LIMIT[arch], (what, resources)
        assert resources['spill_bytes'] <= SPILL_BUDGET, (what, resources)
        assert resources['registers'] <= 255, (what, resources)
        checked += 1
    assert checked >= 1


def test_names_are_unique():
    assert len({_name(c) for c in CONFIGS}) == len(CONFIGS)


def test_variants_are_what_triton_specialises():
    """Triton's own rule (its binder's ``native_specialize_impl``) on the
    integer arguments of a launch gives the variant ``kernel_variant``
    lists."""
    native = pytest.importorskip('triton._C.libtriton').native_specialize_impl
    backend = pytest.importorskip('triton.backends.compiler').BaseBackend
    config = CONFIGS[0]
    names = [n for n, kind in triton_hco._KERNEL_ARGS[config.kernel]]
    for values in ([1, 16, 7, 96, 1, 12], [2, 32, 48, 3, 17,
                                           1], [64, 1, 1, 768, 2, 384]):
        args = [None] * (len(names) - len(values)) + values
        variant = triton_hco.kernel_variant(config, args)
        expected = []
        for value in values:
            kind, spec = native(backend, value, False, True, True)
            expected.append(1 if kind == 'constexpr' else spec)
        assert [v for _, v in variant.integers] == expected


def test_zoo_launches_specialise_integers(variants):
    """A control: the zoo's launches do make specialised variants (a batch
    of one, a transform of 16 or 32, 96 channels), which an unspecialised
    compile would not have checked, and they are not all of one kind."""
    specialised = [v for v in variants if v.integers]
    assert {value for v in specialised for _, value in v.integers} == \
        {1, 'D', ''}
    assert len(specialised) > len(CONFIGS)


def test_limits_are_enforced():
    """Controls: a fused slab of 64 x 64 (not a configuration) spills over
    the budget, and an invalid one fails to compile."""
    forward = CONFIGS[0]
    params = dict(forward.constexprs, HP=64, WP=64, BC=2)
    bad = dict(forward.constexprs, BC=3)  # tl.arange needs powers of 2
    results = kernel_resources.compile_all([
        forward._replace(constexprs=tuple(params.items())),
        forward._replace(constexprs=tuple(bad.items()))
    ], (90, ))
    resources, error = results[0, 90]
    assert error is None and resources['spill_bytes'] > SPILL_BUDGET
    resources, error = results[1, 90]
    assert resources is None and error.startswith(CompilationError.__name__)


def test_interpreted_kernels_are_not_compiled():
    """In this process the kernels may be Triton's interpreted ones: the
    offline compile says so instead of compiling something else."""
    if not triton_hco.triton_interpret_enabled():
        pytest.skip('the kernels of this session are compiled ones')
    with pytest.raises(RuntimeError, match='interpreter'):
        kernel_resources.compile_offline(CONFIGS[0], 90)
