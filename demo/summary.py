# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's closing picture: validation images, their ground truth and
the trained models' predictions side by side.

One column per validation image. Detection rows: the ground-truth
instances (masks, boxes, class names), then the predictions that
``tools/test.py --out predictions.pkl`` dumped (mmdet's ``DumpDetResults``:
boxes, scores, RLE masks) above a score threshold. Segmentation rows: the
image, the ground-truth label map, then the predicted label map that
``tools/test.py --out DIR`` wrote (mmseg's ``IoUMetric``: one PNG per image,
in the dataset's labels). One legend of the class colours below. Drawn with
matplotlib's object API (no pyplot, no global backend).
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ['DetPanels', 'SegPanels', 'draw_summary']

#: Figure inches per image panel, and the dots per inch of the PNG.
PANEL_INCHES = 2.0
DPI = 100
_LABEL_INCHES = 1.15
_TITLE_INCHES = 0.5
_BLOCK_TITLE_INCHES = 0.35
_LEGEND_INCHES = 0.45
_GAP_INCHES = 0.08
_LABEL_POINTS = 6.5
_LABEL_PAD = 0.8


class DetPanels:
    """Where the detection rows come from.

    Args:
        title (str): The model's name, shown beside its rows.
        image_dir (str): The validation images.
        ann_file (str): Their COCO annotations.
        predictions (str): The pickle of ``tools/test.py --out``.
        classes (Sequence[str]): The class names, in label order.
        palette (Sequence[Sequence[int]]): An RGB colour per class.
        score_thr (float): The lowest score drawn. Defaults to 0.5.
    """

    def __init__(self,
                 title: str,
                 image_dir: str,
                 ann_file: str,
                 predictions: str,
                 classes: Sequence[str],
                 palette: Sequence[Sequence[int]],
                 score_thr: float = 0.5):
        self.title = title
        self.image_dir = image_dir
        self.ann_file = ann_file
        self.predictions = predictions
        self.classes = list(classes)
        self.palette = [tuple(c) for c in palette]
        self.score_thr = score_thr


class SegPanels:
    """Where the segmentation rows come from.

    Args:
        title (str): The model's name, shown beside its rows.
        image_dir (str): The validation images (``<stem>.jpg``).
        label_dir (str): Their label maps (``<stem>.png``).
        prediction_dir (str): The PNGs of ``tools/test.py --out``.
        classes (Sequence[str]): The class names, in label order.
        palette (Sequence[Sequence[int]]): An RGB colour per class.
        reduce_zero_label (bool): The PNGs hold label + 1, 0 is ignored
            (ADE20K). Defaults to True.
    """

    def __init__(self,
                 title: str,
                 image_dir: str,
                 label_dir: str,
                 prediction_dir: str,
                 classes: Sequence[str],
                 palette: Sequence[Sequence[int]],
                 reduce_zero_label: bool = True):
        self.title = title
        self.image_dir = image_dir
        self.label_dir = label_dir
        self.prediction_dir = prediction_dir
        self.classes = list(classes)
        self.palette = [tuple(c) for c in palette]
        self.reduce_zero_label = reduce_zero_label


def _read_rgb(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_labels(path: str, reduce_zero_label: bool) -> np.ndarray:
    """Class indices (H, W); -1 where the label is ignored."""
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise FileNotFoundError(f'cannot read label map {path}')
    labels = labels.astype(np.int64)
    return labels - 1 if reduce_zero_label else labels


def colour_labels(labels: np.ndarray,
                  palette: Sequence[Sequence[int]]) -> np.ndarray:
    """An RGB picture of a label map; ignored labels (-1) are black."""
    table = np.array(list(palette) + [(0, 0, 0)], np.uint8)
    index = np.where((labels >= 0) & (labels < len(palette)), labels,
                     len(palette))
    return table[index]


def _det_samples(panels: DetPanels, num_images: int) -> List[dict]:
    """The first ``num_images`` validation images with their ground truth
    and predictions."""
    import mmengine
    from pycocotools import mask as mask_utils
    with open(panels.ann_file, encoding='utf-8') as f:
        coco = json.load(f)
    category_label = {
        c['id']: panels.classes.index(c['name'])
        for c in coco['categories']
    }
    predicted = {}
    for sample in mmengine.load(panels.predictions):
        predicted[osp.basename(sample['img_path'])] = sample['pred_instances']
    images = sorted(coco['images'], key=lambda i: i['file_name'])
    samples = []
    for info in images[:num_images]:
        h, w = info['height'], info['width']
        truth = []
        for ann in coco['annotations']:
            if ann['image_id'] != info['id']:
                continue
            rle = mask_utils.frPyObjects(ann['segmentation'], h, w)
            mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
            x, y, bw, bh = ann['bbox']
            truth.append(
                dict(
                    label=category_label[ann['category_id']],
                    box=(x, y, x + bw, y + bh),
                    mask=mask,
                    score=None))
        if info['file_name'] not in predicted:
            raise ValueError(f'{panels.predictions} holds no prediction for '
                             f'{info["file_name"]}')
        pred = predicted[info['file_name']]
        found = []
        for i in np.argsort(-np.asarray(pred['scores']), kind='stable'):
            score = float(pred['scores'][i])
            if score < panels.score_thr:
                continue
            mask = (
                mask_utils.decode(pred['masks'][i]).astype(bool)
                if 'masks' in pred else None)
            found.append(
                dict(
                    label=int(pred['labels'][i]),
                    box=tuple(float(v) for v in pred['bboxes'][i]),
                    mask=mask,
                    score=score))
        samples.append(
            dict(
                image=_read_rgb(osp.join(panels.image_dir, info['file_name'])),
                truth=truth,
                predicted=found))
    return samples


def _seg_samples(panels: SegPanels, num_images: int) -> List[dict]:
    stems = sorted(
        osp.splitext(name)[0] for name in os.listdir(panels.label_dir)
        if name.endswith('.png'))
    samples = []
    for stem in stems[:num_images]:
        prediction = osp.join(panels.prediction_dir, stem + '.png')
        if not osp.isfile(prediction):
            raise FileNotFoundError(f'no predicted label map {prediction}')
        samples.append(
            dict(
                image=_read_rgb(osp.join(panels.image_dir, stem + '.jpg')),
                truth=_read_labels(
                    osp.join(panels.label_dir, stem + '.png'),
                    panels.reduce_zero_label),
                predicted=_read_labels(prediction, panels.reduce_zero_label)))
    return samples


def _label_spot(box: Tuple[float, ...], size: Tuple[float, ...],
                image_size: Tuple[int, int], taken: List[tuple]) -> tuple:
    """Where a box's label goes: above the box, else just inside its top,
    else below it, whichever first stays in the image and clear of the
    labels ``taken`` (image pixels; the choice is appended to ``taken``).
    Returns ``(x, y, vertical alignment)``."""
    x0, y0, _, y1 = box
    width, height = size
    h, w = image_size
    x = min(max(x0 - 0.5, -0.5), w - 0.5 - width)
    spots = [(y0 - 0.5 - height, 'bottom'), (y0 - 0.5, 'top'),
             (y1 - 0.5, 'top')]
    inside = [(top, va) for top, va in spots
              if top >= -0.5 and top + height <= h - 0.5] or spots[1:2]
    for top, va in inside:
        clear = all(x + width <= a or b <= x or top + height <= c or d <= top
                    for a, c, b, d in taken)
        if clear:
            break
    else:
        top, va = inside[0]
    taken.append((x, top, x + width, top + height))
    return x, top + (height if va == 'bottom' else 0), va


def _draw_instances(ax, image: np.ndarray, instances: Sequence[dict],
                    classes: Sequence[str],
                    palette: Sequence[Tuple[int, int, int]]) -> None:
    from matplotlib.patches import Rectangle
    shown = image.astype(np.float32)
    for inst in instances:
        if inst['mask'] is not None:
            colour = np.array(palette[inst['label']], np.float32)
            shown[inst['mask']] = 0.45 * shown[inst['mask']] + 0.55 * colour
    ax.imshow(shown.clip(0, 255).astype(np.uint8), interpolation='bilinear')
    h, w = image.shape[:2]
    # a label's size in image pixels: the font's points at the panel's scale
    pixels_per_point = DPI / 72 * w / (PANEL_INCHES * DPI)
    taken = []
    for inst in instances:
        colour = np.array(palette[inst['label']]) / 255
        x0, y0, x1, y1 = inst['box']
        # pixel i spans [i - 0.5, i + 0.5] in imshow's coordinates
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5),
                      x1 - x0,
                      y1 - y0,
                      fill=False,
                      edgecolor=colour,
                      linewidth=1.2))
        text = classes[inst['label']]
        if inst['score'] is not None:
            text += f' {inst["score"]:.2f}'
        size = ((0.56 * _LABEL_POINTS * len(text) + 2 * _LABEL_PAD) *
                pixels_per_point,
                (1.25 * _LABEL_POINTS + 2 * _LABEL_PAD) * pixels_per_point)
        x, y, va = _label_spot(inst['box'], size, (h, w), taken)
        ax.text(
            x + _LABEL_PAD * pixels_per_point,
            y + (-1 if va == 'bottom' else 1) * _LABEL_PAD * pixels_per_point,
            text,
            fontsize=_LABEL_POINTS,
            color='white',
            va=va,
            clip_on=True,
            bbox=dict(
                facecolor=colour, edgecolor='none', pad=_LABEL_PAD,
                alpha=0.85))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _panel_box(ax, fig) -> Tuple[int, int, int, int]:
    """The axes' pixels in the saved PNG: ``(x0, y0, x1, y1)``, origin
    top left."""
    box = ax.get_position()
    width, height = fig.get_size_inches() * fig.dpi
    return (int(round(box.x0 * width)), int(round((1 - box.y1) * height)),
            int(round(box.x1 * width)), int(round((1 - box.y0) * height)))


def _instances_row(samples, key, panels):

    def draw(ax, j):
        _draw_instances(ax, samples[j]['image'], samples[j][key],
                        panels.classes, panels.palette)

    return draw


def _label_map_row(samples, key, panels):

    def draw(ax, j):
        ax.imshow(
            colour_labels(samples[j][key], panels.palette),
            interpolation='nearest')

    return draw


def _image_row(samples):

    def draw(ax, j):
        ax.imshow(samples[j]['image'], interpolation='bilinear')

    return draw


def draw_summary(out: str,
                 det: Optional[DetPanels] = None,
                 seg: Optional[SegPanels] = None,
                 num_images: int = 4,
                 title: Optional[str] = None) -> Dict[str, list]:
    """Draw the summary picture and save it as a PNG.

    Args:
        out (str): The PNG to write.
        det (DetPanels, optional): Detection rows: ground truth, then
            predictions. Defaults to None (none).
        seg (SegPanels, optional): Segmentation rows: image, ground truth,
            prediction. Defaults to None (none).
        num_images (int): Validation images (columns): the first ones in
            file-name order. Defaults to 4.
        title (str, optional): The figure's title. Defaults to None.

    Returns:
        dict: ``{row: [(x0, y0, x1, y1) per column]}``, each panel's pixels
        in the PNG (origin top left), rows ``'det truth'``, ``'det
        predicted'``, ``'seg image'``, ``'seg truth'``, ``'seg predicted'``
        as drawn; ``'size'``: the PNG's ``(width, height)``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    if det is None and seg is None:
        raise ValueError('nothing to draw: give det and/or seg')
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    blocks = []  # (title, [(row key, row label, draw(ax, column))])
    legend = {}
    columns = num_images
    if det is not None:
        samples = _det_samples(det, num_images)
        columns = min(columns, len(samples))
        blocks.append((f'{det.title}: instances', [
            ('det truth', 'ground truth',
             _instances_row(samples, 'truth', det)),
            ('det predicted', f'predicted\n(score ≥ {det.score_thr:g})',
             _instances_row(samples, 'predicted', det)),
        ]))
        legend.update(zip(det.classes, det.palette))
    if seg is not None:
        samples = _seg_samples(seg, num_images)
        columns = min(columns, len(samples))
        blocks.append((f'{seg.title}: label maps', [
            ('seg image', 'image', _image_row(samples)),
            ('seg truth', 'ground truth',
             _label_map_row(samples, 'truth', seg)),
            ('seg predicted', 'predicted',
             _label_map_row(samples, 'predicted', seg)),
        ]))
        # the segmentation classes' order: background first
        legend = dict(
            zip(seg.classes, seg.palette), **{
                name: colour
                for name, colour in legend.items() if name not in seg.classes
            })
    if columns == 0:
        raise ValueError('no validation images to draw')

    panel, gap = PANEL_INCHES, _GAP_INCHES
    num_rows = sum(len(rows) for _, rows in blocks)
    width = _LABEL_INCHES + columns * (panel + gap)
    height = (
        _TITLE_INCHES * (1 if title else 0.3) +
        len(blocks) * _BLOCK_TITLE_INCHES + num_rows * (panel + gap) +
        _LEGEND_INCHES)
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor='white')
    boxes = {}
    top = height - _TITLE_INCHES * (1 if title else 0.3)
    grid_centre = (_LABEL_INCHES + columns * (panel + gap) / 2) / width
    for block_title, rows in blocks:
        fig.text(
            grid_centre, (top - _BLOCK_TITLE_INCHES / 2) / height,
            block_title,
            ha='center',
            va='center',
            fontsize=10,
            fontweight='bold')
        top -= _BLOCK_TITLE_INCHES
        for row, label, draw in rows:
            bottom = top - panel
            boxes[row] = []
            for j in range(columns):
                left = _LABEL_INCHES + j * (panel + gap)
                ax = fig.add_axes([
                    left / width, bottom / height, panel / width,
                    panel / height
                ])
                draw(ax, j)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor('#999999')
                    spine.set_linewidth(0.6)
                boxes[row].append(_panel_box(ax, fig))
            fig.text(
                (_LABEL_INCHES - 0.1) / width, (bottom + panel / 2) / height,
                label,
                ha='right',
                va='center',
                fontsize=9)
            top = bottom - gap
    if title:
        fig.text(
            grid_centre,
            1 - _TITLE_INCHES / 2 / height,
            title,
            ha='center',
            va='center',
            fontsize=11.5)
    fig.legend(
        handles=[
            Patch(
                facecolor=np.array(colour) / 255,
                edgecolor='#666666',
                label=name) for name, colour in legend.items()
        ],
        loc='center',
        ncol=len(legend),
        frameon=False,
        fontsize=9,
        bbox_to_anchor=(grid_centre, _LEGEND_INCHES / 2 / height))
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor='white')
    boxes['size'] = [int(round(width * DPI)), int(round(height * DPI))]
    return boxes
