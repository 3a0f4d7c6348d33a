# Copyright (c) mmvheat contributors. All rights reserved.
"""Export a vHeat backbone (or, with ``--full``, its classifier/segmentor)
to ONNX and check the result against PyTorch with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT \
        --shape H W --out FILE [--full] [--opset N] [--cfg-options ...]

``CHECKPOINT`` may be ``none`` (random initialisation, for tests). The model
runs in eval mode under ``torch.no_grad``, so every stage folds its filters
``decay ** k`` for the exported input size once: the ONNX graph holds them as
constants and is only valid for that ``H x W`` (the batch size is fixed too).

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used:
it needs ``onnx`` only (the dynamo exporter would need ``onnxscript``).
``--full`` exports ``model(x, mode='tensor')`` of an mmpretrain
ImageClassifier (logits) or an mmseg EncoderDecoder (seg logits at the
decode head's resolution; what the TorchScript exporter refuses, such as
UPerHead's adaptive pooling to sizes that do not divide the last feature map,
fails with its message); for mmdet models only the backbone is exported.

The exported model is run with onnxruntime (CPUExecutionProvider) on a random
input; the maximum absolute difference to PyTorch must be <= ``--atol``
(1e-4), else the tool exits with 1 and writes no file. The file is written
atomically (exported to a temporary file in the target directory, then
renamed).
"""
import argparse
import os
import os.path as osp
import sys
import tempfile
import warnings

import mmvheat  # noqa: F401  (first: torch.load and torchvision)
import numpy as np
import torch
from torch import nn

from mmvheat.utils.io import first_line

DEFAULT_OPSET = 17
FULL_LIBRARIES = ('mmpretrain', 'mmseg')


class ExportError(RuntimeError):
    """A problem with the request or the export, reported in one line."""


class BackboneWrapper(nn.Module):
    """``model.backbone(x)``: the tuple of feature maps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        outs = self.model.backbone(x)
        return tuple(outs) if isinstance(outs, (list, tuple)) else (outs, )


class TensorModeWrapper(nn.Module):
    """``model(x, mode='tensor')``: classifier logits or seg logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x, mode='tensor')
        if isinstance(out, (list, tuple)):
            return tuple(out)
        return out


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Export a vHeat backbone (or full classifier/segmentor) '
        'to ONNX and check it with onnxruntime')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        'checkpoint', help="checkpoint file, or 'none' for random weights")
    parser.add_argument(
        '--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
        help='input height and width (the graph is fixed to this size)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument(
        '--full', action='store_true',
        help='export the whole classifier/segmentor (mode="tensor"), not '
        'only the backbone')
    parser.add_argument(
        '--opset', type=int, default=DEFAULT_OPSET,
        help=f'ONNX opset version (default {DEFAULT_OPSET})')
    parser.add_argument(
        '--atol', type=float, default=1e-4,
        help='largest max-abs error accepted against PyTorch (default 1e-4)')
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of the random input')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config (key=value)')
    return parser.parse_args(argv)


def build_model(config, checkpoint, cfg_options=None):
    """Build ``cfg.model`` in the registry of the config's library."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint

    from mmvheat.apis.runner_utils import detect_library, register_library

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    library = detect_library(cfg)
    register_library(library)
    models = __import__(f'{library}.registry', fromlist=['MODELS']).MODELS
    no_checkpoint = checkpoint is None or checkpoint.lower() == 'none'
    if no_checkpoint:
        if cfg.model.get('backbone') is not None:
            cfg.model.backbone.init_cfg = None
        cfg.model.pop('pretrained', None)
    with DefaultScope.overwrite_default_scope(library):
        model = models.build(cfg.model)
        if not no_checkpoint:
            if not osp.isfile(checkpoint):
                raise ExportError(f'checkpoint {checkpoint} does not exist')
            load_checkpoint(model, checkpoint, map_location='cpu')
    model.cpu().eval()
    return model, library


def _check_shape(model, shape):
    h, w = shape
    if h <= 0 or w <= 0:
        raise ExportError(f'--shape must be positive, got {h} {w}')
    backbone = getattr(model, 'backbone', None)
    stages = getattr(backbone, 'num_stages', None) or len(
        getattr(backbone, 'stages', [])) or 4
    div = 4 * 2**(stages - 1)
    if h % div or w % div:
        raise ExportError(
            f'--shape {h} {w}: height and width must be multiples of {div} '
            f'(the total stride of the {stages}-stage backbone)')


def _wrapper(model, library, full):
    if not hasattr(model, 'backbone'):
        raise ExportError(f'{type(model).__name__} has no backbone')
    if not full:
        return BackboneWrapper(model)
    if library not in FULL_LIBRARIES:
        raise ExportError(
            f'--full is not supported for {library} models '
            f'({type(model).__name__}): their post-processing (boxes, NMS, '
            'masks) is not exportable by this tool; only the backbone is '
            'exported, run without --full')
    return TensorModeWrapper(model)


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for o in out:
        flat.extend(_flatten(o))
    return flat


def _onnx_export(module, x, path, opset, output_names):
    # PRESERVE: the module is in eval mode already; the default (EVAL)
    # calls ``train(False)``, which drops the filters the stages folded in
    # the forward pass just run, so the trace would record how they are
    # computed (Resize of freq_embed, to_k, Exp) instead of holding them as
    # constants.
    kwargs = dict(
        input_names=['input'], output_names=output_names,
        opset_version=opset, do_constant_folding=True,
        training=torch.onnx.TrainingMode.PRESERVE)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            torch.onnx.export(module, (x, ), path, dynamo=False, **kwargs)
        except TypeError as exc:  # torch without the dynamo argument
            if 'dynamo' not in str(exc):
                raise
            torch.onnx.export(module, (x, ), path, **kwargs)


def export(module, x, out, opset, atol):
    """Export, check with onnxruntime, then move the file into place."""
    import onnx
    import onnxruntime as ort

    with torch.no_grad():
        expected = [t.detach().cpu().numpy() for t in _flatten(module(x))]
    if len(expected) == 1:
        names = ['output']
    else:
        names = [f'output{i}' for i in range(len(expected))]

    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix='.' + osp.basename(out) + '.', suffix='.tmp', dir=out_dir)
    os.close(fd)
    try:
        try:
            with torch.no_grad():
                module(x)  # fold (or refresh) the filters for this size
                _onnx_export(module, x, tmp, opset, names)
        except Exception as exc:
            raise ExportError(
                f'torch.onnx.export failed: {first_line(exc)}') from exc
        model_proto = onnx.load(tmp)
        onnx.checker.check_model(model_proto)
        inputs = [i.name for i in model_proto.graph.input]
        if inputs != ['input']:
            raise ExportError(
                f'the ONNX graph has inputs {inputs}, expected only the '
                "image 'input' (the folded filters should be constants)")
        unfolded = sorted(n.name for n in model_proto.graph.node
                          if n.op_type == 'Exp' and 'stages.' in n.name)
        if unfolded:
            raise ExportError(
                'the heat filters decay ** k were not folded into constants '
                f'(Exp nodes {unfolded[:4]} in the graph)')
        session = ort.InferenceSession(
            tmp, providers=['CPUExecutionProvider'])
        got = session.run(None, {'input': x.numpy()})
        if len(got) != len(expected):
            raise ExportError(f'onnxruntime returned {len(got)} outputs, '
                              f'PyTorch {len(expected)}')
        errors = []
        for name, a, b in zip(names, got, expected):
            if a.shape != b.shape:
                raise ExportError(f'{name}: onnxruntime shape {a.shape} != '
                                  f'PyTorch shape {b.shape}')
            errors.append(float(np.abs(a - b).max()) if a.size else 0.)
        max_err = max(errors)
        for name, a, err in zip(names, got, errors):
            print(f'  {name}: shape {tuple(a.shape)}, max abs error '
                  f'{err:.3e}')
        print(f'max abs error vs PyTorch: {max_err:.3e} (atol {atol:g})')
        if not max_err <= atol:
            raise ExportError(
                f'max abs error {max_err:.3e} exceeds {atol:g}; '
                f'{out} not written')
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates it 0600
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return max_err


def main(argv=None):
    args = parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        print(f'error: {exc}; install onnx and onnxruntime', file=sys.stderr)
        return 1
    try:
        model, library = build_model(args.config, args.checkpoint,
                                     args.cfg_options)
        _check_shape(model, args.shape)
        module = _wrapper(model, library, args.full).eval()
        torch.manual_seed(args.seed)
        x = torch.rand(1, 3, *args.shape)
        what = 'full model' if args.full else 'backbone'
        print(f'exporting the {what} of {type(model).__name__} ({library}) '
              f'for input 1x3x{args.shape[0]}x{args.shape[1]}, opset '
              f'{args.opset}, TorchScript exporter')
        export(module, x, args.out, args.opset, args.atol)
    except (ExportError, ValueError, FileNotFoundError) as exc:
        print(f'error: {first_line(exc)}', file=sys.stderr)
        return 1
    size = osp.getsize(args.out)
    print(f'saved {args.out} ({size / 2**20:.2f} MiB, {size} bytes)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
