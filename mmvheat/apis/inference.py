# Copyright (c) mmvheat contributors. All rights reserved.
"""Image inference with each library's inferencer: ``tools/inference.py``.

mmpretrain's ``ImageClassificationInferencer``, mmdet's ``DetInferencer`` and
mmseg's ``MMSegInferencer`` (the library is the config's ``default_scope``)
run the config's test pipeline and model and draw with the config's
visualizer. Around them this module adds what a command over many files
needs: images collected from folders, arguments checked before the model is
built, the checkpoint read with ``weights_only=True`` unless trusted (by
this module and by the inferencer, which reads it again), a checkpoint that
does not fit the model refused (the inferencers load with ``strict=False``
and only log what stayed random; see :func:`mmvheat.apis.fit_state_dict`),
one progress bar over all images, and one layout for every library:

    OUT_DIR/vis/<name>     the image with the predictions drawn, input size
    OUT_DIR/preds/<stem>.json
        classification: pred_label, pred_score, pred_class, pred_scores
        detection: labels, scores, bboxes (x1, y1, x2, y2 in input pixels),
            masks (COCO RLE) when the model predicts them: mmdet's own
            prediction files
        segmentation: label_map (the file below), the pixels of each class
    OUT_DIR/preds/<stem>.png   segmentation: the label map, input size

``<name>`` is the image's path below the folder it was found in (or its file
name); each JSON also names the image (``img_path``), its ``height`` and
``width`` and the model's ``classes``.
"""
import contextlib
import copy
import io
import json
import os
import os.path as osp
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.logging import MMLogger, print_log

import mmvheat  # noqa: F401  (first: torch.load and torchvision)
from mmvheat.utils.checkpoint_loading import (load_checkpoint_file,
                                              mmengine_checkpoint_loading)
from mmvheat.utils.io import (ToolError, add_trust_option, check_outputs,
                              ensure_directory, parse_device)

__all__ = [
    'IMAGE_EXTENSIONS', 'InferenceError', 'collect_images', 'read_checkpoint',
    'ImageInferencer', 'run_inference', 'inference_parser', 'inference'
]

#: What mmdet's DetInferencer takes from a folder.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                    '.tiff', '.webp')


class InferenceError(ToolError, ValueError):
    """A bad argument, said in one line: a missing image, no images, an
    image that cannot be read."""


# -- arguments ----------------------------------------------------------------
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def collect_images(inputs: Sequence[str]) -> List[Tuple[str, str]]:
    """Image files given or found below folders, each with an output name.

    Args:
        inputs (Sequence[str]): Image files and folders (searched
            recursively, in sorted order).

    Returns:
        list[tuple[str, str]]: ``(path, name)`` once per file, in the order
        given; ``name`` is the path below its folder (the file name for a
        file given directly), made unique with ``-1``, ``-2``... suffixes.
    """
    found = []
    for given in inputs:
        if osp.isdir(given):
            below = sorted(
                osp.relpath(osp.join(root, name), given)
                for root, _, names in os.walk(given, followlinks=True)
                for name in names if _is_image(name))
            found += [(osp.join(given, rel), rel) for rel in below]
        elif osp.isfile(given):
            if not _is_image(given):
                raise InferenceError(
                    f'{given} is not an image file (the extensions read '
                    f'are {", ".join(IMAGE_EXTENSIONS)})')
            found.append((given, osp.basename(given)))
        else:
            raise InferenceError(f'no such file or folder: {given}')
    if not found:
        raise InferenceError(
            f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in '
            f'{", ".join(inputs)}')

    images, seen, used = [], set(), set()
    for path, name in found:
        real = osp.realpath(path)
        if real in seen:  # a file given twice, or inside a given folder
            continue
        seen.add(real)
        stem, ext = osp.splitext(name)
        unique, suffix = name, 0
        while osp.splitext(unique)[0].lower() in used:
            suffix += 1
            unique = f'{stem}-{suffix}{ext}'
        used.add(osp.splitext(unique)[0].lower())
        images.append((path, unique))
    return images


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Read a checkpoint's weights (and check it is a checkpoint at all).

    The inferencers read the same file again, with mmengine's loader (as
    safely, see :class:`ImageInferencer`).

    Args:
        path (str): A checkpoint saved by mmengine (or a bare state dict).
        trust (bool): Unpickle objects other than tensors. Defaults to
            False.

    Returns:
        dict: The state dict (``state_dict`` entry, ``module.`` prefixes
        removed as mmengine does).

    Raises:
        CheckpointLoadError, CheckpointRefusedError: see
            :func:`mmvheat.utils.checkpoint_loading.load_checkpoint_file`.
        CheckpointContentError: it holds no weights.
    """
    from .model import checkpoint_state_dict
    return checkpoint_state_dict(
        load_checkpoint_file(path, 'cpu', trust), path)


# -- the inferencers ----------------------------------------------------------
class ImageInferencer:
    """One of the libraries' inferencers, chosen by the config.

    Args:
        config (str | Config): An mmpretrain, mmdet or mmseg config.
        checkpoint (str): Its weights, saved by mmengine.
        device (str, optional): ``'cpu'``, ``'cuda:0'``... Defaults to
            None: CUDA when there is one.
        score_thr (float): Detection only: the lowest score drawn (all
            detections are in the JSON, as mmdet writes them). Defaults to
            0.3.
        state_dict (dict, optional): The checkpoint's weights, when
            :func:`read_checkpoint` has read them already. Defaults to None.
        strict (bool): Refuse a checkpoint that does not fit the model (see
            :func:`mmvheat.apis.fit_state_dict`). Defaults to True.
        trust (bool): Unpickle objects other than tensors in the
            checkpoint, here and in the inferencer. Defaults to False.
        allow_nonfinite (bool): Accept NaN and Inf weights. Defaults to
            False.
    """

    def __init__(self,
                 config,
                 checkpoint: str,
                 device: Optional[str] = None,
                 score_thr: float = 0.3,
                 state_dict: Optional[dict] = None,
                 strict: bool = True,
                 trust: bool = False,
                 allow_nonfinite: bool = False):
        from mmvheat.apis import detect_library, register_library
        from .configs import read_config
        from .model import fit_state_dict

        if isinstance(config, str):
            config = read_config(config)
        self.library = detect_library(config)
        if state_dict is None:
            state_dict = read_checkpoint(checkpoint, trust)
        device = str(parse_device(device))
        self.score_thr = score_thr
        register_library(self.library)
        # The inferencers load non-strictly and print what does not fit;
        # that is kept back until the checkpoint is known to fit, so that a
        # refused one ends in the one line that says why.
        said = io.StringIO()
        # A logger made while stdout is held back would keep writing there.
        MMLogger.get_current_instance()
        with mmengine_checkpoint_loading(trust), \
                contextlib.redirect_stdout(said if strict else sys.stdout):
            self.inferencer = self._inferencer(config, checkpoint, device)
        self.model = self.inferencer.model
        fit_state_dict(self.model, state_dict, checkpoint, strict,
                       allow_nonfinite)
        sys.stdout.write(said.getvalue())
        meta = getattr(self.model, 'dataset_meta', None) or getattr(
            self.model, '_dataset_meta', None) or {}
        self.classes = list(meta.get('classes') or [])

    def _inferencer(self, config, checkpoint: str, device: str):
        visualizer = config.get('visualizer', None)
        if visualizer is not None and visualizer.get('vis_backends', None):
            # The drawings are written here, one file an image; a backend
            # without a save_dir would be left out with a warning.
            config = copy.deepcopy(config)
            config.visualizer.vis_backends = None
        if self.library == 'mmdet':
            from mmdet.apis import DetInferencer
            return DetInferencer(
                model=config,
                weights=checkpoint,
                device=device,
                show_progress=False)
        if self.library == 'mmseg':
            from mmseg.apis import MMSegInferencer
            inferencer = MMSegInferencer(
                model=config, weights=checkpoint, device=device)
            inferencer.show_progress = False
            return inferencer
        from mmpretrain.apis import ImageClassificationInferencer
        from mmpretrain.visualization import UniversalVisualizer
        self.cls_visualizer = UniversalVisualizer()
        return ImageClassificationInferencer(
            model=config, pretrained=checkpoint, device=device)

    def __call__(self, paths: Sequence[str]) -> List[Tuple[np.ndarray, dict]]:
        """Predict a batch of image files.

        Returns:
            list[tuple[np.ndarray, dict]]: For each image, the drawing (RGB,
            the image's size) and the prediction: detection and
            classification as JSON-ready dicts, segmentation with the label
            map (``sem_seg``, an array).
        """
        paths = list(paths)
        try:
            return self._predict(paths)
        except Exception:
            # A file that is no image fails deep inside the pipeline.
            import mmcv
            for path in paths:
                if mmcv.imread(path) is None:
                    raise InferenceError(f'cannot read image {path}')
            raise

    def _predict(self, paths):
        if self.library == 'mmdet':
            out = self.inferencer(
                paths,
                batch_size=len(paths),
                return_vis=True,
                pred_score_thr=self.score_thr,
                no_save_vis=True,
                no_save_pred=True)
            return list(zip(out['visualization'], out['predictions']))
        if self.library == 'mmseg':
            out = self.inferencer(
                paths, batch_size=len(paths), return_vis=True)
            drawn, maps = out['visualization'], out['predictions']
            if len(paths) == 1:  # MMSegInferencer unwraps a single image
                drawn, maps = [drawn], [maps]
            return [(vis, dict(sem_seg=label_map))
                    for vis, label_map in zip(drawn, maps)]
        return self._classify(paths)

    def _classify(self, paths):
        # ImageClassificationInferencer.__call__ always shows its own bar,
        # and draws only into files or windows: its steps, then its drawer.
        import mmcv

        samples = []
        for data in self.inferencer.preprocess(paths, batch_size=len(paths)):
            samples.extend(self.inferencer.forward(data))
        results = []
        for path, sample, pred in zip(
                paths, samples, self.inferencer.postprocess(samples, None)):
            image = mmcv.imread(path, channel_order='rgb')
            drawn = self.cls_visualizer.visualize_cls(
                image,
                sample,
                classes=self.classes or None,
                draw_gt=False,
                draw_pred=True,
                draw_score=True,
                name=osp.basename(path))
            pred = dict(pred, pred_scores=pred['pred_scores'].tolist())
            results.append((drawn, pred))
        return results


# -- files and progress -------------------------------------------------------
def _write_outputs(out_dir: str, path: str, name: str, drawn: np.ndarray,
                   pred: dict, classes: List[str]) -> str:
    import mmcv
    stem = osp.splitext(name)[0]
    mmcv.imwrite(
        np.ascontiguousarray(drawn[..., ::-1]), osp.join(out_dir, 'vis', name))
    height, width = drawn.shape[:2]
    record = dict(
        img_path=osp.abspath(path),
        height=height,
        width=width,
        classes=classes)
    if 'sem_seg' in pred:
        label_map = np.asarray(pred['sem_seg'])
        # 8 bits as mmseg writes its maps, 16 beyond 256 classes.
        dtype = np.uint8 if label_map.max(initial=0) < 256 else np.uint16
        mmcv.imwrite(
            label_map.astype(dtype), osp.join(out_dir, 'preds', stem + '.png'))
        labels, counts = np.unique(label_map, return_counts=True)
        record.update(
            label_map=osp.basename(stem) + '.png',  # next to the JSON
            pixels=[
                dict(
                    label=int(label),
                    count=int(count),
                    name=classes[label] if label < len(classes) else None)
                for label, count in zip(labels, counts)
            ])
    else:
        record.update(pred)
    json_path = osp.join(out_dir, 'preds', stem + '.json')
    os.makedirs(osp.dirname(json_path), exist_ok=True)
    with open(json_path, 'w') as f:
        json.dump(record, f)
    return json_path


def _batches(images, batch_size: int, show: bool) -> Iterator[list]:
    """Batches of ``images``, with a progress bar over the images: live in
    a terminal, a log line at each tenth otherwise (no flood in a file)."""
    batches = [
        images[i:i + batch_size] for i in range(0, len(images), batch_size)
    ]
    total = len(images)
    if not show:
        yield from batches
        return
    from rich.console import Console
    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import Progress
        with Progress(console=console) as progress:
            task = progress.add_task('Inference', total=total)
            for batch in batches:
                yield batch
                progress.advance(task, len(batch))
        return
    done, next_report = 0, 0
    for batch in batches:
        yield batch
        done += len(batch)
        if done >= next_report or done == total:
            print_log(f'inference: {done}/{total} images', logger='current')
            next_report = done + max(1, total // 10)


def run_inference(config,
                  checkpoint: str,
                  inputs: Sequence[str],
                  out_dir: str,
                  device: Optional[str] = None,
                  score_thr: float = 0.3,
                  batch_size: int = 1,
                  progress: bool = True,
                  strict: bool = True,
                  trust: bool = False,
                  allow_nonfinite: bool = False) -> Dict[str, list]:
    """Predict every image in ``inputs``; write drawings and JSON.

    Args:
        config (str): An mmpretrain, mmdet or mmseg config.
        checkpoint (str): Its weights.
        inputs (Sequence[str]): Image files and folders.
        out_dir (str): Where ``vis/`` and ``preds/`` are written.
        device (str, optional): Defaults to None: CUDA when there is one.
        score_thr (float): Detection: the lowest score drawn. Defaults to
            0.3.
        batch_size (int): Images per forward pass. Defaults to 1.
        progress (bool): Show a progress bar. Defaults to True.
        strict (bool): Refuse a checkpoint that does not fit the model.
            Defaults to True.
        trust (bool): Unpickle objects other than tensors in the
            checkpoint. Defaults to False.
        allow_nonfinite (bool): Accept NaN and Inf weights. Defaults to
            False.

    Returns:
        dict: ``library``, ``images`` (the paths read), ``preds`` (the JSON
        files written), ``out_dir``.
    """
    if batch_size < 1:
        raise InferenceError(f'--batch-size must be >= 1, not {batch_size}')
    from mmengine.registry import DefaultScope

    from mmvheat.apis import detect_library
    from .configs import read_config

    # Everything that can be checked without the model first; the out-dir
    # is made last, when nothing else can be wrong.
    if isinstance(config, str):
        config = read_config(config)
    library = detect_library(config)
    parse_device(device)
    images = collect_images(inputs)
    check_outputs({'--out-dir': out_dir}, [
        getattr(config, 'filename', None), checkpoint, *inputs,
        *(path for path, _ in images)
    ])
    state_dict = read_checkpoint(checkpoint, trust)
    ensure_directory(out_dir, '--out-dir')

    # The inferencers make their library the global default scope; the
    # caller's comes back afterwards.
    with DefaultScope.overwrite_default_scope(library):
        inferencer = ImageInferencer(
            config,
            checkpoint,
            device=device,
            score_thr=score_thr,
            state_dict=state_dict,
            strict=strict,
            trust=trust,
            allow_nonfinite=allow_nonfinite)
        written = []
        for batch in _batches(images, batch_size, progress):
            paths = [path for path, _ in batch]
            for (path, name), (drawn, pred) in zip(batch, inferencer(paths)):
                written.append(
                    _write_outputs(out_dir, path, name, drawn, pred,
                                   inferencer.classes))
    return dict(
        library=library,
        images=[path for path, _ in images],
        preds=written,
        out_dir=out_dir)


# -- command line -------------------------------------------------------------
def inference_parser():
    import argparse

    from .arguments import add_allow_nonfinite_option, add_non_strict_option
    parser = argparse.ArgumentParser(
        description='Predict image files with an mmpretrain, mmdet or mmseg '
        "config (the library is the config's default_scope): drawings in "
        'OUT_DIR/vis, predictions as JSON in OUT_DIR/preds')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        'inputs',
        nargs='+',
        help='image files and folders (searched recursively)')
    parser.add_argument(
        '--out-dir', required=True, help='where vis/ and preds/ are written')
    parser.add_argument(
        '--device',
        default=None,
        help='cpu, cuda, cuda:1... (default: CUDA if any)')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection: the lowest score drawn')
    parser.add_argument(
        '--batch-size', type=int, default=1, help='images per forward pass')
    add_non_strict_option(parser)
    add_trust_option(parser)
    add_allow_nonfinite_option(parser)
    return parser


def inference(argv: Optional[List[str]] = None) -> Dict[str, list]:
    """``tools/inference.py``; raises a
    :class:`~mmvheat.utils.io.ToolError` for a bad argument."""
    args = inference_parser().parse_args(argv)
    return run_inference(
        args.config,
        args.checkpoint,
        args.inputs,
        args.out_dir,
        device=args.device,
        score_thr=args.score_thr,
        batch_size=args.batch_size,
        strict=not args.non_strict,
        trust=args.trust_checkpoint,
        allow_nonfinite=args.allow_nonfinite)
