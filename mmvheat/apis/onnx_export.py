# Copyright (c) mmvheat contributors. All rights reserved.
"""ONNX export of a backbone (or a classifier/segmentor), checked against
PyTorch with onnxruntime; ``tools/deployment/export_onnx.py`` is the command
line.

The model is switched to deploy mode and run once in eval mode under
``torch.no_grad`` before the export, so every vHeat stage holds its filters
``decay ** k`` for the exported input size: the ONNX graph has them as
constants and is valid for that ``H x W`` only (and that batch size).

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used:
it needs ``onnx`` only (the dynamo exporter would need ``onnxscript``). The
full model is ``model(x, mode='tensor')`` of an mmpretrain ImageClassifier
(logits) or an mmseg EncoderDecoder (seg logits at the decode head's
resolution); for mmdet models only the backbone is exported.

The exported model is run with onnxruntime (CPUExecutionProvider) on the
same input; the largest absolute difference to PyTorch must be at most
``atol``, else nothing is written. The export is made and checked in memory
and written with :func:`mmvheat.utils.io.atomic_write`; an output that is
one of the inputs (config, checkpoint) is refused.
"""
import io
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mmvheat.models import switch_to_deploy
from mmvheat.utils.io import ToolError, atomic_write, check_outputs, first_line
from .libraries import detect_library
from .model import TensorModeWrapper, build_model, flat_tensors

__all__ = [
    'DEFAULT_OPSET', 'ExportError', 'check_shape', 'export_module', 'export',
    'export_onnx'
]

DEFAULT_OPSET = 17
FULL_LIBRARIES = ('mmpretrain', 'mmseg')


class ExportError(ToolError, RuntimeError):
    """A problem with the request or the export, reported in one line."""


class BackboneWrapper(nn.Module):
    """``model.backbone(x)``: the tuple of feature maps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        outs = self.model.backbone(x)
        return tuple(outs) if isinstance(outs, (list, tuple)) else (outs, )


def check_shape(model: nn.Module, shape) -> None:
    """Refuse an input size the backbone cannot take whole."""
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


def export_module(model: nn.Module, full: bool) -> nn.Module:
    """The backbone, or with ``full`` the whole model in tensor mode."""
    library = detect_library(model.cfg)
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


def _onnx_export(module, x, file, opset, output_names):
    # PRESERVE: the module is in eval mode already; the default (EVAL)
    # calls ``train(False)``, which drops the filters the deployed stages
    # folded in the forward pass just run, so the trace would record how
    # they are computed (Resize of freq_embed, to_k, Exp) instead of holding
    # them as constants.
    kwargs = dict(
        input_names=['input'],
        output_names=output_names,
        opset_version=opset,
        do_constant_folding=True,
        training=torch.onnx.TrainingMode.PRESERVE)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            torch.onnx.export(module, (x, ), file, dynamo=False, **kwargs)
        except TypeError as exc:  # torch without the dynamo argument
            if 'dynamo' not in str(exc):
                raise
            torch.onnx.export(module, (x, ), file, **kwargs)


def export(module: nn.Module, x: torch.Tensor, out: str, opset: int,
           atol: float) -> List[Tuple[str, tuple, float]]:
    """Export, check with onnxruntime, then write the file.

    Returns:
        list: ``(name, shape, max abs error)`` of each output.

    Raises:
        ExportError: when the export fails, the graph is not what it should
            be, or an output differs from PyTorch's by more than ``atol``
            (no file is written then).
        OutputWriteError: when ``out`` cannot be written (it is left as it
            was).
    """
    import onnx
    import onnxruntime as ort

    with torch.no_grad():
        expected = [t.detach().cpu().numpy() for t in flat_tensors(module(x))]
    if len(expected) == 1:
        names = ['output']
    else:
        names = [f'output{i}' for i in range(len(expected))]

    buffer = io.BytesIO()
    try:
        with torch.no_grad():
            module(x)  # fold (or refresh) the filters for this size
            _onnx_export(module, x, buffer, opset, names)
    except Exception as exc:
        raise ExportError(
            f'torch.onnx.export failed: {first_line(exc)}') from exc
    serialized = buffer.getvalue()
    model_proto = onnx.load_from_string(serialized)
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
        serialized, providers=['CPUExecutionProvider'])
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
    report = [(name, tuple(a.shape), err)
              for name, a, err in zip(names, got, errors)]
    if not max_err <= atol:
        raise ExportError(f'max abs error {max_err:.3e} exceeds {atol:g}; '
                          f'{out} not written')
    with atomic_write(out) as file:
        file.write(serialized)
    return report


def export_onnx(config: str,
                checkpoint: Optional[str],
                shape: Tuple[int, int],
                out: str,
                full: bool = False,
                opset: int = DEFAULT_OPSET,
                atol: float = 1e-4,
                seed: int = 0,
                cfg_options: Optional[dict] = None,
                strict: bool = True,
                trust: bool = False,
                allow_nonfinite: bool = False):
    """Build a config's model, switch it to deploy mode and :func:`export`
    it for a random ``1 x 3 x H x W`` input.

    Args:
        config (str): The config file.
        checkpoint (str, optional): Its weights (see
            :func:`mmvheat.apis.build_model`); None for random weights.
        shape (tuple[int, int]): ``(H, W)``.
        out (str): The ``.onnx`` file; not the config or the checkpoint.
        full (bool): The whole classifier/segmentor, not only the backbone.
            Defaults to False.
        opset (int): ONNX opset. Defaults to :data:`DEFAULT_OPSET`.
        atol (float): Largest max-abs error accepted. Defaults to 1e-4.
        seed (int): Seed of the input. Defaults to 0.
        cfg_options (dict, optional): Merged into the config.
        strict (bool): Refuse a checkpoint that does not fit the model.
            Defaults to True.
        trust (bool): Unpickle objects other than tensors in the
            checkpoint. Defaults to False.
        allow_nonfinite (bool): Accept NaN and Inf weights. Defaults to
            False.

    Returns:
        tuple: the model and :func:`export`'s report.
    """
    check_outputs({'--out': out}, [config, checkpoint])
    model = build_model(
        config,
        checkpoint,
        cfg_options,
        strict=strict,
        trust=trust,
        allow_nonfinite=allow_nonfinite)
    check_shape(model, shape)
    switch_to_deploy(model)
    module = export_module(model, full).eval()
    torch.manual_seed(seed)
    x = torch.rand(1, 3, *shape)
    return model, export(module, x, out, opset, atol)
