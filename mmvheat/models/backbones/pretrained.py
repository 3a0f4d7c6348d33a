# Copyright (c) mmvheat contributors. All rights reserved.
"""The backbones' ``Pretrained`` initialisation, strict.

mmengine's ``PretrainedInit`` loads with ``strict=False`` and only logs what
it left out, so a wrong file trains from random weights. The backbones'
``init_weights`` (:class:`StrictPretrainedModule`) loads through
:func:`mmvheat.utils.weights.load_state_dict_strictly` (as the tools do)
and says, when the file does not fit, whether it is a published checkpoint
to convert first.
"""
import os.path as osp
from typing import Optional, Tuple

from mmengine.logging import MMLogger
from mmengine.model import BaseModule

from mmvheat.utils.checkpoint_loading import CheckpointNotFoundError
from mmvheat.utils.weights import (SHOWN_NAMES, CheckpointContentError,
                                   CheckpointMismatchError,
                                   load_state_dict_strictly)

__all__ = ['StrictPretrainedModule']


def _weights_under(state_dict: dict, prefix: str, filename: str) -> dict:
    """The weights whose names start with ``prefix``, without it."""
    if not prefix.endswith('.'):
        prefix += '.'
    selected = {
        k[len(prefix):]: v
        for k, v in state_dict.items()
        if isinstance(k, str) and k.startswith(prefix)
    }
    if not selected:
        firsts = sorted({str(k).split('.', 1)[0] + '.' for k in state_dict})
        raise CheckpointMismatchError(
            f'{filename} holds no weights under the prefix {prefix!r} '
            f'(its names begin with {firsts[:SHOWN_NAMES]})')
    return selected


class StrictPretrainedModule(BaseModule):
    """A module whose ``Pretrained`` ``init_cfg`` loads strictly
    (:meth:`load_pretrained`); any other ``init_cfg`` initialises as in
    mmengine, then :meth:`_init_own_weights` runs.

    Subclasses set ``arch_settings`` (named in errors) and the attributes
    below.
    """
    #: A regular expression on the weights a checkpoint may lack or hold in
    #: excess, or None.
    optional_weights: Optional[str] = None
    #: Key prefixes that mark a checkpoint in the published layout, and the
    #: tool that converts it (named in errors).
    published_prefixes: Tuple[str, ...] = ()
    converter = ''
    #: What to do when the checkpoint does not exist; '' for: convert the
    #: published weights, or train from scratch.
    missing_checkpoint_hint = ''

    def init_weights(self):
        """Initialise the weights, or load a ``Pretrained`` config's
        checkpoint strictly."""
        if (isinstance(self.init_cfg, dict)
                and self.init_cfg.get('type') == 'Pretrained'):
            self.load_pretrained(self.init_cfg)
            self._is_init = True
        else:
            super().init_weights()
            self._init_own_weights()

    def _init_own_weights(self):
        """Initialise what ``init_cfg``'s layer rules cannot reach."""

    def load_pretrained(self, init_cfg: dict) -> None:
        """Load the weights a ``Pretrained`` ``init_cfg`` names, strictly.

        The checkpoint's ``state_dict`` (or the whole file), or its
        ``model`` entry (the published layout), is taken, then the weights
        under ``init_cfg['prefix']`` if one is given. A weight left unset,
        one the module lacks or one of another shape is an error, but for
        those :attr:`optional_weights` matches.

        Args:
            init_cfg (dict): ``type='Pretrained'``, ``checkpoint`` (a file
                or URL), and optionally ``prefix``, ``map_location``
                (defaults to ``'cpu'``) and ``allow_nonfinite`` (defaults
                to False).

        Raises:
            CheckpointNotFoundError: no such file.
            CheckpointContentError: the file holds no state dict, or
                weights that are not weights.
            CheckpointMismatchError: the weights do not fit the module.
        """
        from mmengine.runner.checkpoint import _load_checkpoint
        logger = MMLogger.get_current_instance()
        name = type(self).__name__
        filename = init_cfg['checkpoint']
        prefix = init_cfg.get('prefix')
        if '://' not in filename and not osp.isfile(filename):
            raise CheckpointNotFoundError(
                f'Pretrained {name} checkpoint not found: {filename}. ' +
                (self.missing_checkpoint_hint
                 or f'Convert the published weights with {self.converter}, or '
                 'set model.backbone.init_cfg=None to train from scratch.'))
        logger.info(f'Load {name} weights from {filename}' +
                    (f' (prefix {prefix!r})' if prefix else ''))
        checkpoint = _load_checkpoint(filename,
                                      init_cfg.get('map_location', 'cpu'))
        state_dict = checkpoint
        if isinstance(checkpoint, dict):
            state_dict = checkpoint.get('state_dict', checkpoint)
            if isinstance(state_dict, dict) and isinstance(
                    state_dict.get('model'), dict):
                state_dict = state_dict['model']
        if not isinstance(state_dict, dict):
            raise CheckpointContentError(f'{filename} holds no state dict (a '
                                         f'{type(state_dict).__name__})')
        if prefix:
            state_dict = _weights_under(state_dict, prefix, filename)
        if any(
                isinstance(k, str) and k.startswith(self.published_prefixes)
                for k in state_dict):
            hint = (f'it is a published {name} checkpoint: convert it '
                    f'with {self.converter}')
        else:
            hint = (f'is it a {name} checkpoint of this arch '
                    f'({self.arch_settings}) in mmvheat layout (see '
                    f'{self.converter}), with the right prefix?')
        fresh, unused = load_state_dict_strictly(
            self,
            state_dict,
            f'The checkpoint {filename}',
            optional=self.optional_weights,
            allow_nonfinite=init_cfg.get('allow_nonfinite', False),
            hint=hint)
        if fresh:
            logger.info(f'Initialised afresh: {fresh}')
        if unused:
            logger.info(f'Unused weights of the checkpoint: {unused}')
