# Copyright (c) mmvheat contributors. All rights reserved.
"""The published vHeat classifier, imported from the user's checkout.

:mod:`.published` replays the published dataflow with our modules; to time
the published code itself, :func:`published_classifier` imports the class
``vHeat`` of ``DIR/classification/models/vHeat.py`` from a checkout of
github.com/MzeroMiko/vHeat at run time (nothing of it is copied here), builds
it as the published training and throughput scripts do and loads one of our
classifiers' weights into it (:func:`~mmvheat.converters.to_published_vheat`,
strictly). Its inference mode folds ``decay ** k`` once, in ``infer_init()``,
at the pretraining size.
"""
import hashlib
import importlib
import importlib.util
import os.path as osp
import sys
from functools import lru_cache
from typing import Mapping, Union

from torch import Tensor, nn

from mmvheat.converters import to_published_vheat
from mmvheat.models import VHeat
from mmvheat.utils.io import ToolError, first_line

__all__ = [
    'MODEL_FILE', 'PublishedRepoError', 'is_published_checkout',
    'import_published_vheat', 'published_classifier'
]

#: The file that defines the published classifier, in a checkout.
MODEL_FILE = osp.join('classification', 'models', 'vHeat.py')


class PublishedRepoError(ToolError):
    """The checkout's classifier cannot be imported (one line naming it)."""


def is_published_checkout(path: str) -> bool:
    """Whether ``path`` is a directory holding :data:`MODEL_FILE`."""
    return osp.isdir(path) and osp.isfile(osp.join(path, MODEL_FILE))


def _package(name: str, path: str):
    """An empty package ``name`` whose modules are the files in ``path`` (its
    ``__init__.py`` is not run: it may import what the model does not)."""
    spec = importlib.util.spec_from_loader(name, None, is_package=True)
    spec.submodule_search_locations = [path]
    return importlib.util.module_from_spec(spec)


@lru_cache(maxsize=None)
def _import_model_module(root: str):
    classification = osp.join(root, 'classification')
    package = '_mmvheat_published_' + hashlib.sha1(
        root.encode()).hexdigest()[:8]
    before = set(sys.modules)
    sys.modules[package] = _package(package, classification)
    sys.modules[package + '.models'] = _package(
        package + '.models', osp.join(classification, 'models'))
    # Its sibling modules, imported by absolute name, come from there.
    sys.path.insert(0, classification)
    try:
        return importlib.import_module(package + '.models.vHeat')
    except BaseException:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        raise
    finally:
        sys.path.remove(classification)
        # The siblings stay referenced by the model's module, not by name.
        for name in set(sys.modules) - before:
            if not name.startswith(package) and osp.realpath(
                    getattr(sys.modules[name], '__file__', None)
                    or '/').startswith(root + osp.sep):
                del sys.modules[name]


def import_published_vheat(repo: str) -> type:
    """The class ``vHeat`` of ``repo``'s :data:`MODEL_FILE`, imported once
    per process under a private package name.

    Raises:
        PublishedRepoError: if that file cannot be imported (a module it
            needs is missing, say) or defines no ``vHeat``.
    """
    try:
        module = _import_model_module(osp.realpath(repo))
    except Exception as e:  # noqa: BLE001 -- any failure is the checkout's
        raise PublishedRepoError(
            f'--published-repo {repo}: cannot import {MODEL_FILE}: '
            f'{type(e).__name__}: {first_line(e)}') from None
    if not isinstance(getattr(module, 'vHeat', None), type):
        raise PublishedRepoError(
            f'--published-repo {repo}: {MODEL_FILE} defines no class vHeat')
    return module.vHeat


def published_classifier(repo: str, arch: Union[str, dict], img_size: int,
                         weights: Mapping[str, Tensor],
                         infer_mode: bool) -> nn.Module:
    """The checkout's classifier with ``weights``.

    Args:
        repo (str): The checkout.
        arch (str | dict): Its depths, widths, norm placement and layer
            scale (:meth:`~mmvheat.models.VHeat.parse_arch`).
        img_size (int): The pretraining size (of the frequency embeddings).
        weights (Mapping): An ImageClassifier's state dict: ``backbone.*``
            of a :class:`~mmvheat.models.VHeat`, ``head.fc.*``.
        infer_mode (bool): The published inference mode, folded by
            ``infer_init()`` once the weights are loaded.
    """
    settings = VHeat.parse_arch(arch)
    model = import_published_vheat(repo)(
        in_chans=3,
        patch_size=4,
        num_classes=1000,
        depths=settings['depths'],
        dims=settings['dims'],
        drop_path_rate=0.,
        mlp_ratio=settings['mlp_ratio'],
        post_norm=settings['post_norm'],
        layer_scale=settings['layer_scale'],
        img_size=img_size,
        infer_mode=infer_mode)
    model.load_state_dict(to_published_vheat(weights), strict=True)
    if infer_mode:
        model.infer_init()
    return model
