# Copyright (c) mmvheat contributors. All rights reserved.
"""``_base_ = 'mmvheat::...'``: the packaged configs seen from a user's
project, as ``_base_ = 'mmdet::...'`` works for mmdet's.

A user's config in a temporary folder, parsed from another working
directory, inherits ours and builds its model in the right library; every
object the runner and the tools build from an inherited config is the class
that the same config names when loaded by its path; what ``custom_imports``
can and cannot do for the prefix. The wheel: tests/test_packaging.py.
"""
import copy
import glob
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine import registry as mm_registry
from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.fileio import load
from mmengine.registry import DefaultScope
from mmengine.utils import get_installed_path
from torch import nn

import mmvheat
from mmvheat.mim import CONFIG_PREFIX, MIM_DIR

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(ROOT, 'configs')
ALL_CONFIGS = sorted(
    osp.relpath(path, CONFIG_DIR)
    for path in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True))
MODEL_CASES = {
    'mmdet': ('vheat/mask-rcnn_vheat-t_fpn_1x_coco.py',
              'mmdet.models.detectors.mask_rcnn.MaskRCNN'),
    'mmseg': ('vheat/vheat-tiny_upernet_8xb2-160k_ade20k-512x512.py',
              'mmseg.models.segmentors.encoder_decoder.EncoderDecoder'),
    'mmpretrain': ('vheat/vheat-tiny_16xb128_in1k.py',
                   'mmpretrain.models.classifiers.image.ImageClassifier'),
}


def _user_config(folder, base, body=''):
    path = osp.join(str(folder), 'my_config.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = 'mmvheat::{base}'\n" + textwrap.dedent(body))
    return path


def _qualname(cls):
    return f'{cls.__module__}.{cls.__qualname__}'


def _register(library):
    from importlib import import_module
    import_module(f'{library}.utils').register_all_modules(
        init_default_scope=False)


def test_import_registers_the_prefix():
    assert CONFIG_PREFIX in MODULE2PACKAGE
    # mmengine's own lookup finds the mmvheat that is imported, whatever
    # installed it (this checkout on PYTHONPATH, an editable install, a
    # wheel).
    package_dir = get_installed_path(MODULE2PACKAGE[CONFIG_PREFIX])
    assert osp.samefile(package_dir, osp.dirname(mmvheat.__file__))
    assert osp.samefile(osp.join(package_dir, '.mim'), MIM_DIR)


def test_mim_dir_links_the_repository():
    for name in ('configs', 'tools', 'model-index.yml'):
        assert osp.exists(osp.join(MIM_DIR, name)), name
        assert osp.samefile(osp.join(MIM_DIR, name), osp.join(ROOT, name))


def test_model_index_imports_every_metafile():
    index = load(osp.join(MIM_DIR, 'model-index.yml'))
    metafiles = sorted(
        osp.relpath(path, ROOT)
        for path in glob.glob(osp.join(CONFIG_DIR, '*', 'metafile.yml')))
    assert sorted(index['Import']) == metafiles == [
        'configs/mpvit/metafile.yml', 'configs/vheat/metafile.yml'
    ]
    for metafile in index['Import']:
        models = load(osp.join(MIM_DIR, metafile))['Models']
        assert models
        for model in models:
            assert osp.isfile(osp.join(MIM_DIR, model['Config'])), model


@pytest.mark.parametrize('library', list(MODEL_CASES))
def test_user_config_inherits_and_builds(library, tmp_path, monkeypatch):
    base, model_class = MODEL_CASES[library]
    project = tmp_path / 'my_project'
    project.mkdir()
    # Only what keeps the test fast differs: no checkpoint to load.
    path = _user_config(
        project, base, """
        model = dict(backbone=dict(init_cfg=None))
        """)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = Config.fromfile(path)
    assert cfg.default_scope == library
    assert cfg.model.backbone.type == 'mmvheat.VHeat'

    _register(library)
    with DefaultScope.overwrite_default_scope(library):
        model = mm_registry.MODELS.build(cfg.model)
        reference_cfg = Config.fromfile(osp.join(CONFIG_DIR, base))
        reference_cfg.model.backbone.init_cfg = None
        reference = mm_registry.MODELS.build(reference_cfg.model)
    assert _qualname(type(model)) == model_class
    assert _qualname(type(model.backbone)) == \
        'mmvheat.models.backbones.vheat.VHeat'
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}


# -- every object is built in its library -------------------------------------
# The registries the runner and the tools build each top-level field with.
_FIELDS = {
    'model': mm_registry.MODELS,
    'tta_model': mm_registry.MODELS,
    'optim_wrapper': mm_registry.OPTIM_WRAPPERS,
    'param_scheduler': mm_registry.PARAM_SCHEDULERS,
    'custom_hooks': mm_registry.HOOKS,
    'train_cfg': mm_registry.LOOPS,
    'val_cfg': mm_registry.LOOPS,
    'test_cfg': mm_registry.LOOPS,
    'val_evaluator': mm_registry.METRICS,
    'test_evaluator': mm_registry.METRICS,
    'visualizer': mm_registry.VISUALIZERS,
    'log_processor': mm_registry.LOG_PROCESSORS,
}


def _resolve(registry, cfg, scope, path, found):
    """The class ``registry.build(cfg)`` would make under ``scope``, as
    mmengine's build_from_cfg finds it; the scope ``cfg``'s own contents
    are built in."""
    own_scope = cfg.get('_scope_', None)
    try:
        with DefaultScope.overwrite_default_scope(scope):
            with registry.switch_scope_and_registry(own_scope) as switched:
                obj_cls = switched.get(cfg['type'])
        found[path] = (_qualname(obj_cls) if obj_cls is not None else None,
                       own_scope)
    except Exception as error:  # an unknown type is a finding too
        found[path] = (f'{type(error).__name__}: {error}'[:200], own_scope)
    return own_scope or scope


def _resolve_pipeline(pipeline, scope, path, found):
    for i, transform in enumerate(pipeline or []):
        inner = _resolve(mm_registry.TRANSFORMS, transform, scope,
                         f'{path}[{i}]', found)
        for j, branch in enumerate(transform.get('transforms', None) or []):
            branch = branch if isinstance(branch, (list, tuple)) else [branch]
            _resolve_pipeline(branch, inner, f'{path}[{i}].transforms[{j}]',
                              found)


def _built_classes(cfg):
    """{field path: (class, _scope_)} of what a run builds from ``cfg``."""
    library = cfg.default_scope
    found = {}
    for field, registry in _FIELDS.items():
        value = cfg.get(field, None)
        for i, item in enumerate(
                value if isinstance(value, list) else [value]):
            if isinstance(item, dict) and 'type' in item:
                _resolve(registry, item, library, f'{field}[{i}]', found)
    for name, hook in (cfg.get('default_hooks', None) or {}).items():
        if hook:
            _resolve(mm_registry.HOOKS, hook, library, f'default_hooks.{name}',
                     found)
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader', None)
        if not loader:
            continue
        dataset, path, scope = loader.dataset, f'{split}_dataloader', library
        while dataset is not None:  # through dataset wrappers
            path += '.dataset'
            scope = _resolve(mm_registry.DATASETS, dataset, scope, path, found)
            _resolve_pipeline(
                dataset.get('pipeline', None), scope, f'{path}.pipeline',
                found)
            dataset = dataset.get('dataset', None)
        if split == 'test' and cfg.get('tta_pipeline', None):
            # tools/test.py --tta puts it in the test dataset.
            _resolve_pipeline(cfg.tta_pipeline, scope, 'tta_pipeline', found)
    return found


def _scopes(value, scope, path='', found=None):
    """{path: (type, the scope it is built in)} of every typed dict in a
    config, however deep, top-level variables (``train_pipeline``,
    ``dataset``...) included: what ``{{_base_.x}}`` and the libraries'
    APIs (``inference_model`` reads ``test_pipeline``) build."""
    found = {} if found is None else found
    if isinstance(value, dict):
        if 'type' in value:
            scope = value.get('_scope_', None) or scope
            found[path] = (value['type'], scope)
        for key, item in value.items():
            _scopes(item, scope, f'{path}.{key}' if path else key, found)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _scopes(item, scope, f'{path}[{i}]', found)
    return found


def _classes_of(obj):
    """The classes a built object is made of: a model's modules, a
    dataset's pipeline, a pipeline's transforms (``TestTimeAug``'s
    branches too)."""
    if isinstance(obj, nn.Module):
        return sorted({_qualname(type(m)) for m in obj.modules()})
    classes = [_qualname(type(obj))]
    for transform in getattr(
            getattr(obj, 'pipeline', obj), 'transforms', None) or []:
        classes += _classes_of(transform)
    for branch in getattr(obj, 'subroutines', None) or []:
        classes += _classes_of(branch)
    return classes


def _built(cfg):
    """What builds from ``cfg`` without data or weights, as the runner and
    the tools build it: the model and the TTA model around it (on the meta
    device), each dataloader's dataset (not yet reading its annotations)
    with its pipeline, and the TTA pipeline."""
    from mmengine.dataset import Compose
    library = cfg.default_scope
    built = {}
    with DefaultScope.overwrite_default_scope(library):
        if cfg.get('model', None):
            model_cfg = copy.deepcopy(cfg.model)
            if model_cfg.get('backbone', None):
                model_cfg.backbone.init_cfg = None
            with torch.device('meta'):
                built['model'] = _classes_of(
                    mm_registry.MODELS.build(model_cfg))
                if cfg.get('tta_model', None):
                    built['tta_model'] = _classes_of(
                        mm_registry.MODELS.build(
                            dict(**cfg.tta_model, module=model_cfg)))
        for split in ('train', 'val', 'test'):
            loader = cfg.get(f'{split}_dataloader', None)
            if loader:
                dataset = copy.deepcopy(loader.dataset)
                dataset.lazy_init = True
                built[f'{split}_dataloader.dataset'] = _classes_of(
                    mm_registry.DATASETS.build(dataset))
        if cfg.get('tta_pipeline', None):
            built['tta_pipeline'] = _classes_of(Compose(cfg.tta_pipeline))
    return built


# mmengine gives the outermost typed dicts that a ``mmvheat::`` base sets
# without a scope ``_scope_='mmvheat'``, and this registry does not hold
# mmdet's, mmseg's or mmpretrain's classes: the typed dicts our configs
# define themselves (tta_model/tta_pipeline, param_scheduler, custom_hooks,
# a model with ``_delete_``, pipelines...) carry ``_scope_='<library>'``.
@pytest.mark.parametrize('base', ALL_CONFIGS)
def test_inherited_config_builds_in_its_library(base, tmp_path):
    reference = Config.fromfile(osp.join(CONFIG_DIR, base))
    library = reference.get('default_scope', None)
    if library is None:  # a fragment such as vheat/mask-rcnn_tta.py
        library = 'mmdet'
        reference.default_scope = library
    inherited = Config.fromfile(_user_config(tmp_path, base))
    inherited.default_scope = library
    _register(library)

    # Every typed dict, however deep, is built in the same scope.
    expected_scopes = _scopes(reference.to_dict(), library)
    assert _scopes(inherited.to_dict(), library) == expected_scopes
    # What builds without data builds as the same classes.
    assert _built(inherited) == _built(reference)

    expected = _built_classes(reference)
    found = _built_classes(inherited)
    assert found.keys() == expected.keys()
    wrong = {
        path: (found[path], expected[path][0])
        for path in expected if found[path][0] != expected[path][0] or (
            found[path][1] == CONFIG_PREFIX
            and not str(found[path][0]).startswith('mmvheat.'))
    }
    assert not wrong, '\n'.join(f'{path}: {got} (scope {scope}), not {want}'
                                for path, ((got, scope),
                                           want) in wrong.items())


# -- what custom_imports can do for the prefix --------------------------------
def _parse_in_fresh_python(config, tmp_path, import_first=False):
    """Parse ``config`` in a new interpreter, as another library's
    tools/train.py does, optionally importing mmvheat first."""
    code = ('import mmvheat\n' if import_first else '') + textwrap.dedent(f"""
        from mmengine.config import Config
        cfg = Config.fromfile({config!r})
        print('BACKBONE', cfg.model.backbone.type)
        """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, '-c', code],
                          cwd=str(tmp_path),
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=120)


def test_custom_imports_cannot_resolve_the_prefix_alone(tmp_path):
    # mmengine resolves _base_ before it imports custom_imports.
    config = _user_config(
        tmp_path, 'vheat/vheat-tiny_16xb128_in1k.py', """
        custom_imports = dict(imports=['mmvheat'], allow_failed_imports=False)
        """)
    result = _parse_in_fresh_python(config, tmp_path)
    assert result.returncode != 0
    assert 'does not support to load mmvheat config' in result.stderr
    result = _parse_in_fresh_python(config, tmp_path, import_first=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'BACKBONE mmvheat.VHeat' in result.stdout


def test_a_first_base_that_imports_mmvheat_resolves_the_prefix(tmp_path):
    # Bases are parsed in order and each one's code runs: a first base that
    # imports mmvheat registers the prefix for the next. __import__, not an
    # import statement, which would make mmengine read the file as a
    # lazy-import config.
    (tmp_path / 'import_mmvheat.py').write_text("__import__('mmvheat')\n")
    config = tmp_path / 'my_config.py'
    config.write_text(
        "_base_ = ['./import_mmvheat.py',\n"
        "          'mmvheat::vheat/vheat-tiny_16xb128_in1k.py']\n")
    result = _parse_in_fresh_python(str(config), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'BACKBONE mmvheat.VHeat' in result.stdout
