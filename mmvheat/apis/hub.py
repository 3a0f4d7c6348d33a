# Copyright (c) mmvheat contributors. All rights reserved.
"""This package's models by name in mmpretrain's model hub.

mmpretrain finds its own models by name (``mmpretrain.list_models``,
``get_model``, its inferencers) through ``ModelHub``, which reads
mmpretrain's model index the first time it is asked; another package's
models enter through ``ModelHub.register_model_index``, which is what
:func:`register_mmpretrain_models` calls with ours. Importing mmpretrain
costs seconds, so ``import mmvheat`` does not do it: call the function
once, then ask mmpretrain.
"""
import os.path as osp
from typing import List

from mmvheat.mim import MIM_DIR

__all__ = ['register_mmpretrain_models']


def register_mmpretrain_models() -> List[str]:
    """Let mmpretrain find the models of this package's model index.

    Every model of ``model-index.yml`` is registered, each with its task:
    ``mmpretrain.list_models('*vheat*', task='Image Classification')``
    lists the classifiers, ``mmpretrain.get_model(name)`` builds one (the
    detection and segmentation models build too, with their own library's
    registry, which their configs name). Calling it again changes nothing.

    Returns:
        list[str]: The names registered, in lower case as mmpretrain keeps
        them.
    """
    from mmengine.fileio import load
    from mmpretrain.apis.model import ModelHub

    index = osp.join(MIM_DIR, 'model-index.yml')
    names = []
    for metafile in load(index)['Import']:
        names += [
            model['Name'].lower()
            for model in load(osp.join(MIM_DIR, metafile))['Models']
        ]
    if not all(ModelHub.has(name) for name in names):
        ModelHub.register_model_index(index, config_prefix=MIM_DIR)
    return names
