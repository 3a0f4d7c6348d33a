# Copyright (c) mmvheat contributors. All rights reserved.
"""A config's model as training starts it, saved as a checkpoint.

The demo evaluates this checkpoint with ``tools/test.py`` for its
"untrained" baseline; from the repository root::

    python -m demo.initial_weights CONFIG OUT.pth \
        [--cfg-options K=V ...]

The model is built with its library's registry and initialised with
``init_weights()`` under the config's ``randomness.seed``, which is what
mmengine's ``Runner`` does before the first training iteration.
"""
import argparse
import os
import os.path as osp
from importlib import import_module
from typing import Optional, Sequence

from mmengine.config import Config, DictAction

__all__ = ['save_initial_checkpoint', 'main']


def save_initial_checkpoint(config: str,
                            out: str,
                            cfg_options: Optional[dict] = None) -> str:
    """Build ``config``'s model, initialise it and save its weights.

    Args:
        config (str): An mmdet or mmseg (or mmpretrain) config file.
        out (str): The checkpoint to write (``{'state_dict': ...}``).
        cfg_options (dict, optional): Merged into the config first.
            Defaults to None.

    Returns:
        str: ``out``.
    """
    from mmengine.registry import DefaultScope
    from mmengine.runner import save_checkpoint, set_random_seed

    from mmvheat.apis import detect_library, register_library
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    library = detect_library(cfg)
    register_library(library, default_scope=False)
    seed = (cfg.get('randomness', None) or {}).get('seed', None)
    if seed is not None:
        set_random_seed(seed)
    with DefaultScope.overwrite_default_scope(library):
        model = import_module(f'{library}.registry').MODELS.build(cfg.model)
    model.init_weights()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    save_checkpoint({'state_dict': model.state_dict()}, out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        description='Save the initialised (untrained) model of a config.')
    parser.add_argument('config')
    parser.add_argument('out', help='the checkpoint to write')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    return save_initial_checkpoint(args.config, args.out, args.cfg_options)


if __name__ == '__main__':
    main()
