# Copyright (c) mmvheat contributors. All rights reserved.
"""Params and FLOPs of the model of any config, with the HCO counted right.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H [W]]
        [--cfg-options k=v ...] [--depth 2] [--backbone-only]

FLOPs follow the fvcore/mmengine convention of the vHeat and Swin papers: one
multiply-add is one FLOP (i.e. MACs), element-wise ops are not counted. The
HCO's cosine-basis matmuls are counted with a broadcast-correct handler
(mmengine's stock one undercounts them; see :mod:`mmvheat.utils.flops`).

"per image" is the part that scales with the batch; "shared" is computed
once per forward whatever the batch (vHeat: the ``decay ** k`` filters from
the frequency embeddings, cached at inference). The paper's numbers are the
per-image ones.

The model is built from the registry of the config's ``default_scope``
(mmpretrain, mmdet or mmseg) without pretrained weights; detectors and
segmentors are counted on their ``mode='tensor'`` forward (backbone, neck
and heads, no post-processing), like mmdet's and mmseg's own tools.
"""
import argparse
import os.path as osp
import sys

import torch
from torch import nn

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

import mmvheat  # noqa: E402,F401  (before mmpretrain)
from mmvheat.utils.flops import format_count, model_complexity  # noqa: E402

DEFAULT_SHAPES = {
    'mmpretrain': (224, 224),
    'mmseg': (512, 512),
    'mmdet': (800, 1344),
}


class _TensorForward(nn.Module):
    """``model(inputs, [data_samples,] mode='tensor')`` as a plain module."""

    def __init__(self, model: nn.Module, scope: str):
        super().__init__()
        self.model = model
        self.scope = scope

    def forward(self, inputs):
        if self.scope == 'mmdet':
            from mmdet.structures import DetDataSample
            h, w = inputs.shape[-2:]
            samples = [
                DetDataSample(
                    metainfo=dict(
                        img_shape=(h, w),
                        ori_shape=(h, w),
                        pad_shape=(h, w),
                        batch_input_shape=(h, w),
                        scale_factor=(1., 1.)))
                for _ in range(inputs.shape[0])
            ]
            out = self.model(inputs, samples, mode='tensor')
        else:
            out = self.model(inputs, mode='tensor')
        return _tensors(out)


def _tensors(out):
    """Flatten nested outputs to a tuple of tensors (for jit tracing)."""
    if isinstance(out, torch.Tensor):
        return (out, )
    if isinstance(out, dict):
        out = list(out.values())
    flat = []
    if isinstance(out, (list, tuple)):
        for item in out:
            flat.extend(_tensors(item))
    return tuple(flat)


def _registry(scope: str):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def build_model(cfg, scope: str) -> nn.Module:
    """Build ``cfg.model`` with no pretrained weights, SyncBN reverted."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    model_cfg = cfg.model
    if model_cfg.get('backbone') is not None:
        model_cfg.backbone.init_cfg = None
    model_cfg.pop('pretrained', None)
    model = _registry(scope).build(model_cfg)
    return revert_sync_batchnorm(model).eval()


def get_flops(config: str,
              shape=None,
              cfg_options=None,
              backbone_only: bool = False,
              show_table: bool = False,
              depth: int = 2) -> dict:
    """Params and FLOPs (MACs) of a config's model; see the module doc."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmpretrain') or 'mmpretrain'
    if shape is None:
        shape = DEFAULT_SHAPES.get(scope, (224, 224))
    h, w = shape
    model = build_model(cfg, scope)
    in_channels = 3
    if backbone_only:
        target = model.backbone
    else:
        target = _TensorForward(model, scope)
    x = torch.randn(1, in_channels, h, w)
    res = model_complexity(
        target, x, show_table=show_table, max_depth=depth, split_batch=True)
    res.update(scope=scope, shape=(h, w), config=config)
    if hasattr(model, 'backbone'):
        res['backbone_params'] = sum(
            p.numel() for p in model.backbone.parameters())
    return res


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Params and FLOPs (MACs) of a config\'s model')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=None,
        help='input H [W]; default per scope: 224 (mmpretrain), 512 (mmseg), '
        '800x1344 (mmdet)')
    parser.add_argument(
        '--backbone-only', action='store_true', help='count the backbone')
    parser.add_argument(
        '--table', action='store_true', help='print the per-module table')
    parser.add_argument(
        '--depth', type=int, default=2, help='depth of the per-module table')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shape = None
    if args.shape:
        shape = (args.shape[0], args.shape[-1])
    res = get_flops(args.config, shape, args.cfg_options, args.backbone_only,
                    args.table, args.depth)
    if res['table']:
        print(res['table'])
    line = '=' * 60
    print(line)
    print(f'Config:            {args.config} (scope {res["scope"]})')
    print(f'Input shape:       1x3x{res["shape"][0]}x{res["shape"][1]}'
          + (' (backbone only)' if args.backbone_only else ''))
    print(f'FLOPs per image:   {format_count(res["flops_per_image"])} '
          '(MACs, fvcore/mmengine convention, like the paper)')
    print(f'FLOPs shared:      {format_count(res["flops_shared"])} '
          '(once per forward, batch-independent)')
    print(f'FLOPs at batch 1:  {format_count(res["flops"])}')
    print(f'Params:            {format_count(res["params"])}'
          + (f' (backbone {format_count(res["backbone_params"])})'
             if 'backbone_params' in res else ''))
    if res['unsupported_ops']:
        ops = ', '.join(sorted(res['unsupported_ops']))
        print(f'Not counted (element-wise by convention or unsupported): '
              f'{ops}')
    print(line)
    return res


if __name__ == '__main__':
    main()
