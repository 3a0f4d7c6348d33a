# Copyright (c) mmvheat contributors. All rights reserved.
import os
import os.path as osp
import sys

import pytest
import torch

# Triton decides when mmvheat.ops.triton_hco is imported whether the HCO
# kernels are compiled or run in its CPU interpreter. Without CUDA, the
# tests run them on CPU tensors in the interpreter; with CUDA, compiled (the
# interpreter-only tests skip). Set before anything imports the kernels.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# Imported first: it prepares torch.load and torchvision for the libraries.
import mmvheat  # noqa: F401,E402

PROJECT_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: Fixtures computed with the published implementations (see its README).
REFERENCE_DIR = osp.join(PROJECT_ROOT, 'tests', 'data')


@pytest.fixture(autouse=True)
def default_scope_restored():
    """Every test leaves mmengine's default scope as it found it.

    The host libraries' APIs (``init_detector``, ``get_model``,
    ``register_all_modules``) set a process-wide default scope and leave it
    set; a later test that builds by a bare type name would then look it up
    in that library's registry and pass or fail by test order.
    """
    from mmengine.registry import DefaultScope
    before = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(before)


@pytest.fixture(scope='session')
def reference_dir():
    """``tests/data``: fixtures from the published implementations.

    Part of the project: a missing folder or file fails the tests that need
    it, it never skips them.
    """
    if not osp.isdir(REFERENCE_DIR):
        pytest.fail(f'reference fixtures not found at {REFERENCE_DIR}')
    return REFERENCE_DIR


@pytest.fixture(scope='session')
def project_root():
    return PROJECT_ROOT


@pytest.fixture(scope='session')
def tiny_vheat_config():
    """The text of a small mmpretrain config: a vHeat classifier of one
    block per stage, 16 channels at first, for 64 x 64 images."""
    return """
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmvheat.VHeat',
        arch=dict(depths=[1, 1, 1, 1], dims=16, post_norm=False,
                  layer_scale=None, mlp_ratio=2.),
        img_size=64),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=128))
"""


class OneDNNSpy:
    """Stands in for the fused oneDNN linear op and records each call's
    post-op (``'none'``, ``'gelu'``, ``'swish'`` or ``'add'``) and whether
    its weight came packed."""

    def __init__(self, ops):
        self.ops = ops
        self.calls = []
        self.packed = []

    def __call__(self, x, weight, bias, attr, scalars, algorithm):
        self._record(attr, weight)
        return self.ops(x, weight, bias, attr, scalars, algorithm)

    def binary(self, x, other, weight, bias, attr):
        self._record(attr, weight)
        return self.ops.binary(x, other, weight, bias, attr)

    def _record(self, attr, weight):
        self.calls.append(attr)
        self.packed.append(weight.is_mkldnn)


@pytest.fixture(autouse=True)
def default_scope_of_its_own():
    """Each test leaves mmengine's default scope as it found it.

    Building through a library (``register_library``, ``build_model``,
    ``init_default_scope``) makes that library the default scope for the
    rest of the process; a test that follows and builds an mmpretrain model
    in mmseg's scope would fail for a reason of order alone. The scopes a
    test created are dropped when it ends, which is how mmengine's own
    ``DefaultScope.overwrite_default_scope`` undoes its scope.
    """
    from mmengine.registry import DefaultScope
    instances = DefaultScope._instance_dict
    before = set(instances)
    yield
    for name in [name for name in instances if name not in before]:
        instances.pop(name)


@pytest.fixture
def onednn_spy(monkeypatch):
    """Record the calls that reach oneDNN's fused linear (skip without it)."""
    import torch

    import mmvheat.models.layers.cpu_fast_paths as fusion
    if fusion._ONEDNN_OPS is None or not torch.backends.mkldnn.is_available():
        pytest.skip('this torch has no oneDNN linear fusion')
    spy = OneDNNSpy(fusion._ONEDNN_OPS)
    monkeypatch.setattr(fusion, '_ONEDNN_OPS', spy)
    return spy


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """Tiny datasets in the real formats: ``coco/``, ``ade/`` and
    ``imagenet/`` (8 training and 4 validation images each)."""
    from demo import data as demo_data
    root = str(tmp_path_factory.mktemp('data'))
    n_train, n_val = 8, 4
    demo_data.make_coco_instances(
        os.path.join(root, 'coco'),
        n_train,
        n_val,
        image_size=(128, 128),
        max_instances=2)
    demo_data.make_ade20k_like(
        os.path.join(root, 'ade'),
        n_train,
        n_val,
        image_size=(128, 128),
        max_instances=2)
    demo_data.make_imagenet_like(
        os.path.join(root, 'imagenet'), n_train, n_val, image_size=(64, 64))
    return root


@pytest.fixture(scope='session')
def trained(tmp_path_factory, data_root):
    """``trained(library)``: that library's tiny model, trained once per
    session through ``tools/train.py`` (see :data:`tiny_runs.RUN_LENGTHS`);
    returns ``(config, work_dir, output)``. The runs' files are shared:
    tests copy what they change."""
    from test_tools.tiny_runs import (CONFIGS, RUN_LENGTHS, TRAIN, run_cmd,
                                      write_file)
    runs = {}

    def train(library):
        if library not in runs:
            tmp = tmp_path_factory.mktemp(library)
            config = write_file(
                tmp / f'vheat_{library}.py',
                CONFIGS[library](data_root, **RUN_LENGTHS.get(library, {})))
            work_dir = str(tmp / 'work_dir')
            out = run_cmd(
                [sys.executable, TRAIN, config, '--work-dir', work_dir],
                cwd=tmp)
            runs[library] = (config, work_dir, out)
        return runs[library]

    return train
