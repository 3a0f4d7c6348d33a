# Copyright (c) mmvheat contributors. All rights reserved.
"""``_base_ = 'mmvheat::vheat/...'``: mmvheat as an OpenMMLab package.

OpenMMLab packages carry their configs and model index in ``<package>/.mim``
(mmdet, mmseg and mmpretrain link or copy them there from their setup.py),
and mmengine resolves ``_base_ = 'mmdet::path/to/config.py'`` to
``<mmdet dir>/.mim/configs/path/to/config.py`` for the packages named in
``mmengine.config.utils.MODULE2PACKAGE``. mmvheat keeps ``.mim/configs``,
``.mim/tools`` and ``.mim/model-index.yml`` as links to the repository's
files (setup.py copies them into wheels), and importing mmvheat adds its
prefix to that table.

mmengine attaches ``_scope_ = 'mmvheat'`` to the outermost dicts with a
``type`` that a ``mmvheat::`` base defines without a scope of its own; the
configs here build mmdet, mmseg and mmpretrain objects, so those dicts name
their library's scope themselves or take it from the library base they
extend.
"""
import os.path as osp

__all__ = ['MIM_DIR', 'CONFIG_PREFIX', 'register_config_prefix']

#: ``<package>/.mim``: configs/, tools/ and model-index.yml.
MIM_DIR = osp.join(osp.dirname(osp.abspath(__file__)), '.mim')

#: The part before ``::`` in ``_base_ = 'mmvheat::...'``.
CONFIG_PREFIX = 'mmvheat'

# mmengine finds the ``.mim`` folder of a MODULE2PACKAGE value by its
# distribution first: ``<dist location>/<name>``, which for a PEP 660
# editable install (``pip install -e .``) is a site-packages folder that
# does not exist. A module name that no distribution carries makes it ask
# importlib instead, which answers with the folder of the mmvheat actually
# imported: a wheel, an editable install or a checkout on PYTHONPATH alike.
_LOCATED_BY = 'mmvheat.version'


def register_config_prefix() -> None:
    """Let mmengine resolve ``mmvheat::`` config paths (idempotent)."""
    from mmengine.config.utils import MODULE2PACKAGE
    MODULE2PACKAGE[CONFIG_PREFIX] = _LOCATED_BY
