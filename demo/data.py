# Copyright (c) mmvheat contributors. All rights reserved.
"""Deterministic generators of small datasets in the real on-disk formats.

No dataset can be downloaded where the demo and the tests run, so these
functions draw synthetic pictures of a few shape classes and write them in
exactly the layouts that OpenMMLab's loaders read:

* :func:`make_coco_instances` -- COCO instances (mmdet ``CocoDataset``)::

    root/train2017/000000000001.jpg ...
    root/val2017/000001000001.jpg ...
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json

* :func:`make_ade20k_like` -- ADE20K (mmseg, ``reduce_zero_label=True``)::

    root/images/{training,validation}/ADE_{train,val}_00000001.jpg
    root/annotations/{training,validation}/ADE_{train,val}_00000001.png

  Label maps are single-channel uint8: 1 = background, 2.. = the shapes,
  0 is never written. With ``reduce_zero_label=True`` they become
  0..K-1 = :data:`DEMO_SEG_CLASSES`.

* :func:`make_imagenet_like` -- ImageNet / class folders (mmpretrain)::

    root/train/<class>/train_000001.JPEG ...
    root/val/<class>/val_000001.JPEG ...
    root/meta/train.txt, root/meta/val.txt   ("<class>/<file> <label>")
    root/meta/classes.txt                     (one class name a line)

Every picture is a textured background (colour gradient + stripes + noise)
with 1..``max_instances`` non-overlapping shapes (one, large, for
classification) of random size, position, rotation and colour; the colour
says nothing about the class, the outline does. Every split is balanced:
each class has as many shapes as the others, to one or two
(:class:`BalancedLabels`; classification: picture ``i`` has class
``i % K``).

Each picture has its own random stream seeded by ``(seed, task, split,
index)``: the same seed gives byte-identical files, and a smaller dataset
is a prefix of a larger one. A finished dataset holds a marker
(``root/.mmvheat_demo.json``) with the generator version and parameters; a
second call with the same parameters returns at once, other parameters
regenerate it. The dataset is written into a temporary sibling directory
and renamed into place, so an interrupted run never leaves a dataset that
looks complete.

This module needs only numpy, OpenCV and the standard library.
"""
import colorsys
import json
import os
import os.path as osp
import shutil
import sys
import time
import uuid
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = [
    'GENERATOR_VERSION', 'MARKER_NAME', 'DEMO_SHAPES', 'DEMO_DET_CLASSES',
    'DEMO_DET_PALETTE', 'DEMO_DET_METAINFO', 'DEMO_SEG_CLASSES',
    'DEMO_SEG_PALETTE', 'DEMO_SEG_METAINFO', 'DEMO_CLS_CLASSES',
    'DEMO_CLS_METAINFO', 'DEFAULTS', 'TASK_DIRS', 'BalancedLabels',
    'render_scene', 'make_coco_instances', 'make_ade20k_like',
    'make_imagenet_like', 'make_demo_data'
]

#: Bump whenever the pictures or the layout change: older datasets on disk
#: are then regenerated instead of reused.
GENERATOR_VERSION = 2
#: The generator's name in the datasets it writes (their marker, the COCO
#: files' ``info``): the module's name when they were first written, kept so
#: that the files, and the datasets already generated, stay as they are.
GENERATOR_NAME = 'mmvheat.demo.data'
MARKER_NAME = '.mmvheat_demo.json'
JPEG_QUALITY = 92

#: The shape classes, sorted: mmpretrain's ``CustomDataset`` numbers class
#: folders in sorted order, so this is also the folder order.
DEMO_SHAPES = ('circle', 'square', 'triangle')

DEMO_DET_CLASSES = DEMO_SHAPES
DEMO_DET_PALETTE = [(220, 20, 60), (0, 130, 230), (250, 170, 30)]
DEMO_DET_METAINFO = dict(classes=DEMO_DET_CLASSES, palette=DEMO_DET_PALETTE)

#: Index k here is label k+1 in the PNGs (0 is ADE20K's ignored "other").
DEMO_SEG_CLASSES = ('background', ) + DEMO_SHAPES
DEMO_SEG_PALETTE = [[120, 120, 120]] + [list(c) for c in DEMO_DET_PALETTE]
DEMO_SEG_METAINFO = dict(classes=DEMO_SEG_CLASSES, palette=DEMO_SEG_PALETTE)

DEMO_CLS_CLASSES = DEMO_SHAPES
DEMO_CLS_METAINFO = dict(classes=DEMO_CLS_CLASSES)

#: Defaults per task, sized for a CPU demo (see README / make_demo_data.py).
DEFAULTS = dict(
    det=dict(num_train=300, num_val=50, image_size=(128, 128)),
    seg=dict(num_train=300, num_val=50, image_size=(128, 128)),
    cls=dict(num_train=600, num_val=150, image_size=(64, 64)),
)
#: Sub-directory of :func:`make_demo_data`'s ``out`` for each task.
TASK_DIRS = dict(det='coco', seg='ade', cls='imagenet')

#: Shape sizes (equal-area radius / min(H, W)) for det/seg and for cls.
DET_SEG_SIZE = (0.11, 0.2)
CLS_SIZE = (0.2, 0.3)

_SPLIT_SALT = dict(train=1, val=2)
_TASK_SALT = dict(det=11, seg=12, cls=13)
_LABELS_SALT = 21
_CIRCLE_VERTICES = 32
_NUM_VERTICES = dict(circle=_CIRCLE_VERTICES, square=4, triangle=3)
# circumradius / radius of the circle of the same area, per class
_AREA_FACTOR = [
    float(np.sqrt(np.pi / (0.5 * n * np.sin(2 * np.pi / n))))
    for n in (_NUM_VERTICES[c] for c in DEMO_SHAPES)
]

ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------
def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(
        [int(seed), _TASK_SALT[task], _SPLIT_SALT[split],
         int(index)])


def _labels_rng(seed: int, task: str, split: str) -> np.random.Generator:
    """The split's stream of classes (a seed of another length than the
    pictures' streams)."""
    return np.random.default_rng(
        [int(seed), _TASK_SALT[task], _SPLIT_SALT[split], 0, _LABELS_SALT])


def _render_balanced(seed: int, task: str, split: str, index: int,
                     labels: 'BalancedLabels', image_size, max_instances: int,
                     **kwargs) -> dict:
    """Picture ``index`` of a det/seg split: 1..``max_instances`` shapes
    whose classes ``labels`` deals."""
    rng = _rng(seed, task, split, index)
    count = int(rng.integers(1, max_instances + 1))
    scene = render_scene(
        rng,
        image_size,
        labels=labels.peek(count),
        radius_frac=DET_SEG_SIZE,
        **kwargs)
    labels.take([inst['label'] for inst in scene['instances']])
    return scene


def _shape_polygon(label: int, cx: float, cy: float, radius: float,
                   angle: float) -> np.ndarray:
    """Vertices (N, 2) in COCO pixel coordinates, rounded to 0.01 px."""
    n = _NUM_VERTICES[DEMO_SHAPES[label]]
    t = angle + 2 * np.pi * np.arange(n) / n
    pts = np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
    return np.round(pts, 2)


def _rasterize(polygon: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean mask of the pixels whose centre lies in the convex
    ``polygon`` (COCO coordinates: pixel i spans [i, i+1)), which is what
    pycocotools' polygon decoding gives too."""
    mask = np.zeros((h, w), bool)
    x0, y0 = np.maximum(np.floor(polygon.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(polygon.max(0)).astype(int), [w, h])
    if x1 <= x0 or y1 <= y0:
        return mask
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
    p, q = polygon[:, :, None, None], np.roll(polygon, -1, 0)[:, :, None, None]
    cross = ((q[:, 0] - p[:, 0]) * (ys - p[:, 1]) - (q[:, 1] - p[:, 1]) *
             (xs - p[:, 0]))
    mask[y0:y1, x0:x1] = (cross >= 0).all(0) | (cross <= 0).all(0)
    return mask


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # A gradient between two muted colours in a random direction ...
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    grey = rng.uniform(0.3, 0.7)
    c0 = grey * c0 + (1 - grey) * c0.mean()
    c1 = grey * c1 + (1 - grey) * c1.mean()
    a = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(a) + yy * np.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    # ... tinted stripes of random period and orientation ...
    period = rng.uniform(5, 18) * max(h, w) / 128
    b = rng.uniform(0, np.pi)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * (xx * np.cos(b) + yy * np.sin(b)) / period +
                     phase)
    amp = rng.uniform(8, 22) * rng.uniform(0.4, 1.0, size=3)
    img += stripes[..., None] * amp
    # ... and low-frequency blotches.
    blot = cv2.resize(
        rng.normal(0, 1, size=(4, 4, 3)).astype(np.float32), (w, h),
        interpolation=cv2.INTER_CUBIC)
    img += blot * rng.uniform(5, 15)
    return img


def _shape_colour(rng: np.random.Generator,
                  against: np.ndarray,
                  min_dist: float = 80.) -> np.ndarray:
    """A vivid colour at least ``min_dist`` (RGB) away from ``against``."""
    best, best_d = None, -1.
    for _ in range(16):
        rgb = 255 * np.array(
            colorsys.hsv_to_rgb(
                rng.uniform(0, 1), rng.uniform(0.55, 1.0),
                rng.uniform(0.45, 1.0)))
        d = float(np.linalg.norm(rgb - against))
        if d >= min_dist:
            return rgb
        if d > best_d:
            best, best_d = rgb, d
    return best


class BalancedLabels:
    """The classes of a split's shapes, dealt in turn so that every class
    is drawn as often as the others.

    Independent draws leave small datasets unbalanced by chance (300
    pictures of 1-4 shapes: one class often has a fifth fewer shapes than
    another), and a model that cannot tell the shapes apart yet then
    favours the commoner ones. Here the classes come in blocks, each a
    random order of all of them, from the split's own random stream; a
    shape that finds no room gives its class back to the next picture. The
    counts of placed shapes therefore differ by at most one or two, and a
    smaller dataset is still a prefix of a larger one.

    Args:
        rng: The split's random stream (not a picture's).
        num_classes: Defaults to ``len(DEMO_SHAPES)``.
    """

    def __init__(self,
                 rng: np.random.Generator,
                 num_classes: int = len(DEMO_SHAPES)):
        self.rng = rng
        self.num_classes = num_classes
        self._queue = []

    def peek(self, count: int) -> List[int]:
        """The next ``count`` classes (dealt by :meth:`take`)."""
        while len(self._queue) < count:
            self._queue += self.rng.permutation(self.num_classes).tolist()
        return self._queue[:count]

    def take(self, placed: Sequence[int]) -> None:
        """Deal the classes of the shapes that were placed; the others
        stay first in line."""
        for label in placed:
            self._queue.remove(label)


def render_scene(rng: np.random.Generator,
                 image_size: Tuple[int, int],
                 num_instances: Union[int, Tuple[int, int]] = (1, 4),
                 radius_frac: Tuple[float, float] = DET_SEG_SIZE,
                 label: Optional[int] = None,
                 centred: bool = False,
                 with_label_map: bool = False,
                 labels: Optional[Sequence[int]] = None) -> dict:
    """Draw one picture.

    Args:
        rng: The random stream of this picture.
        image_size: ``(H, W)``.
        num_instances: A count, or an inclusive ``(min, max)`` range.
            Shapes are placed at least 2 px apart; one that finds no room
            is dropped (never the first).
        radius_frac: Range of the size as a fraction of ``min(H, W)``; the
            size is the radius of the circle of the same area (a triangle
            of size s has a circumradius of 1.56 s, a square 1.25 s).
        label: Force the class of every shape (classification).
        centred: Keep the shape near the centre (classification).
        with_label_map: Also return the ADE-style label map.
        labels: The classes of the shapes, in the order they are placed
            (their number replaces ``num_instances``; see
            :class:`BalancedLabels`). Defaults to None: each drawn at
            random.

    Returns:
        dict: ``img`` (H, W, 3) uint8 RGB; ``instances``: list of dicts with
        ``label`` (index into :data:`DEMO_SHAPES`) and ``polygon`` (N, 2)
        in COCO coordinates; ``label_map`` (H, W) uint8 if asked
        (1 = background, 2.. = shapes).
    """
    h, w = int(image_size[0]), int(image_size[1])
    if labels is not None:
        n = len(labels)
    elif isinstance(num_instances, int):
        n = num_instances
    else:
        n = int(rng.integers(num_instances[0], num_instances[1] + 1))
    img = _background(rng, h, w)
    label_map = np.ones((h, w), np.uint8) if with_label_map else None
    side = min(h, w)
    margin = 1.5
    # pixels taken by earlier shapes, grown by 2 px: shapes never touch
    taken = np.zeros((h, w), bool)
    instances = []
    for k in range(n):
        if labels is not None:
            cls = int(labels[k])
        elif label is not None:
            cls = label
        else:
            cls = int(rng.integers(len(DEMO_SHAPES)))
        lo, hi = radius_frac
        for attempt in range(64):
            # equal-area radius -> circumradius, so that all classes cover
            # about the same area for the same size; shrink towards the
            # smallest size while no room is found
            size = rng.uniform(lo, hi - (hi - lo) * attempt / 64)
            r = min(size * side * _AREA_FACTOR[cls], side / 2 - margin - 0.5)
            if centred:
                jx = max(w / 2 - r - margin, 0) * 0.6
                jy = max(h / 2 - r - margin, 0) * 0.6
                cx = w / 2 + rng.uniform(-jx, jx)
                cy = h / 2 + rng.uniform(-jy, jy)
            else:
                cx = rng.uniform(r + margin, w - r - margin)
                cy = rng.uniform(r + margin, h - r - margin)
            polygon = _shape_polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi))
            m = _rasterize(polygon, h, w)
            if m.any() and not (m & taken).any():
                break
        else:
            continue  # no room: drop this shape
        taken |= cv2.dilate(m.view(np.uint8), np.ones((5, 5),
                                                      np.uint8)).astype(bool)
        colour = _shape_colour(rng, img[m].mean(0))
        # a gentle shading across the shape so it is not perfectly flat
        yy, xx = np.nonzero(m)
        a = rng.uniform(0, 2 * np.pi)
        shade = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / max(r, 1)
        img[m] = colour + shade[:, None] * rng.uniform(4, 14)
        if label_map is not None:
            label_map[m] = cls + 2
        instances.append(dict(label=cls, polygon=polygon))
    img += rng.normal(0, 6, size=img.shape)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    out = dict(img=img, instances=instances)
    if label_map is not None:
        out['label_map'] = label_map
    return out


def _write_jpeg(path: str, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, path
    with open(path, 'wb') as f:
        f.write(buf.tobytes())


def _write_png(path: str, gray: np.ndarray) -> None:
    ok, buf = cv2.imencode('.png', gray)
    assert ok, path
    with open(path, 'wb') as f:
        f.write(buf.tobytes())


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(0.5 *
                 abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ---------------------------------------------------------------------------
# Progress, markers and atomic writes
# ---------------------------------------------------------------------------
def print_progress(done: int, total: int, desc: str) -> None:
    """A plain progress printer: a live counter on a terminal, else a line
    every 25 %."""
    if sys.stdout.isatty():
        end = '\n' if done == total else ''
        print(f'\r  {desc}: {done}/{total}', end=end, flush=True)
    elif done == total or done % max(total // 4, 1) == 0:
        print(f'  {desc}: {done}/{total}', flush=True)


def _progress_fn(progress) -> Optional[ProgressFn]:
    if progress is True:
        return print_progress
    if callable(progress):
        return progress
    return None


def _read_marker(root: str) -> Optional[dict]:
    try:
        with open(osp.join(root, MARKER_NAME), encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _count_files(root: str) -> int:
    return sum(
        len([f for f in files if f != MARKER_NAME])
        for _, _, files in os.walk(root))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _clean_stale(parent: str, name: str) -> None:
    """Remove temporary directories left by interrupted runs."""
    if not osp.isdir(parent):
        return
    for entry in os.listdir(parent):
        for kind in ('tmp', 'old'):
            prefix = f'.{name}.{kind}-'
            if not entry.startswith(prefix):
                continue
            try:
                pid = int(entry[len(prefix):].split('-')[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(osp.join(parent, entry), ignore_errors=True)


def _generate(root: str, fmt: str, params: dict, writer, overwrite: bool,
              force: bool) -> dict:
    """Run ``writer(tmp_dir) -> stats`` unless ``root`` is up to date."""
    root = osp.abspath(root)
    signature = dict(
        generator=GENERATOR_NAME,
        format=fmt,
        version=GENERATOR_VERSION,
        params=params)
    marker = _read_marker(root)
    expected = json.loads(json.dumps(signature))  # tuples -> lists
    if (not force and marker is not None
            and all(marker.get(k) == v for k, v in expected.items())
            and marker.get('num_files') == _count_files(root)):
        return dict(marker, root=root, skipped=True)
    if (osp.exists(root) and marker is None and not overwrite
            and (not osp.isdir(root) or os.listdir(root))):
        raise FileExistsError(
            f'{root} exists and is not an mmvheat demo dataset; remove it, '
            'choose another directory or pass overwrite=True')

    parent, name = osp.split(root)
    os.makedirs(parent, exist_ok=True)
    _clean_stale(parent, name)
    tag = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
    tmp = osp.join(parent, f'.{name}.tmp-{tag}')
    old = osp.join(parent, f'.{name}.old-{tag}')
    os.makedirs(tmp)
    start = time.perf_counter()
    try:
        stats = writer(tmp)
        info = dict(
            signature,
            num_files=_count_files(tmp),
            stats=stats,
            seconds=round(time.perf_counter() - start, 2))
        # written last: only a complete dataset carries a marker
        content = {k: v for k, v in info.items() if k != 'seconds'}
        with open(osp.join(tmp, MARKER_NAME), 'w', encoding='utf-8') as f:
            json.dump(content, f, indent=1)
        if osp.lexists(root):
            os.rename(root, old)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if osp.lexists(old) and not osp.lexists(root):
            os.rename(old, root)  # put the previous dataset back
        raise
    if osp.lexists(old):
        if osp.isdir(old) and not osp.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)
    return dict(info, root=root, skipped=False)


def _params(num_train, num_val, image_size, seed, **extra) -> dict:
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f'image_size must be (H, W) >= 16, got {image_size}')
    if num_train < 0 or num_val < 0:
        raise ValueError('num_train and num_val must be >= 0')
    if int(seed) < 0:
        raise ValueError('seed must be >= 0')
    return dict(
        num_train=int(num_train),
        num_val=int(num_val),
        image_size=[int(image_size[0]), int(image_size[1])],
        seed=int(seed),
        **extra)


# ---------------------------------------------------------------------------
# COCO instances
# ---------------------------------------------------------------------------
def make_coco_instances(root: str,
                        num_train: int = DEFAULTS['det']['num_train'],
                        num_val: int = DEFAULTS['det']['num_val'],
                        image_size: Sequence[int] = DEFAULTS['det']
                        ['image_size'],
                        seed: int = 0,
                        max_instances: int = 4,
                        progress: Union[bool, ProgressFn, None] = None,
                        overwrite: bool = False,
                        force: bool = False) -> dict:
    """Write a COCO-format instance segmentation dataset of shapes.

    Args:
        root: Dataset directory (``data_root`` of mmdet's ``CocoDataset``).
        num_train / num_val: Number of images per split.
        image_size: ``(H, W)`` of every image.
        seed: Base seed; the same seed gives byte-identical files.
        max_instances: 1..``max_instances`` shapes per image.
        progress: ``True`` to print, or ``fn(done, total, desc)``.
        overwrite: Replace ``root`` even if it holds something that is not a
            demo dataset.
        force: Regenerate even if ``root`` is up to date.

    Returns:
        dict: The marker's content (format, version, params, num_files,
        stats) plus ``root``, ``skipped`` and, when generated, ``seconds``.
        Use ``metainfo=DEMO_DET_METAINFO`` (or ``dict(classes=
        DEMO_DET_CLASSES)``) in the dataset config.
    """
    params = _params(
        num_train, num_val, image_size, seed, max_instances=max_instances)
    if max_instances < 1:
        raise ValueError('max_instances must be >= 1')
    report = _progress_fn(progress)
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(DEMO_DET_CLASSES)
    ]

    def writer(tmp):
        os.makedirs(osp.join(tmp, 'annotations'))
        stats = {}
        for split, n in (('train', num_train), ('val', num_val)):
            img_dir = osp.join(tmp, f'{split}2017')
            os.makedirs(img_dir)
            id_base = 0 if split == 'train' else 1000000
            images, annotations = [], []
            per_image = Counter()
            per_class = Counter()
            labels = BalancedLabels(_labels_rng(seed, 'det', split))
            for i in range(n):
                scene = _render_balanced(seed, 'det', split, i, labels,
                                         image_size, max_instances)
                img_id = id_base + i + 1
                file_name = f'{img_id:012d}.jpg'
                _write_jpeg(osp.join(img_dir, file_name), scene['img'])
                h, w = scene['img'].shape[:2]
                images.append(
                    dict(
                        id=img_id,
                        file_name=file_name,
                        height=h,
                        width=w,
                        license=0))
                for inst in scene['instances']:
                    p = inst['polygon']
                    x0, y0 = p.min(0)
                    x1, y1 = p.max(0)
                    annotations.append(
                        dict(
                            id=id_base + len(annotations) + 1,
                            image_id=img_id,
                            category_id=inst['label'] + 1,
                            bbox=[
                                round(float(x0), 2),
                                round(float(y0), 2),
                                round(float(x1 - x0), 2),
                                round(float(y1 - y0), 2)
                            ],
                            area=round(_polygon_area(p), 2),
                            iscrowd=0,
                            segmentation=[[
                                round(float(v), 2) for v in p.reshape(-1)
                            ]]))
                    per_class[DEMO_DET_CLASSES[inst['label']]] += 1
                per_image[len(scene['instances'])] += 1
                if report:
                    report(i + 1, n, f'coco {split}2017')
            coco = dict(
                info=dict(
                    description='mmvheat synthetic shapes (demo data)',
                    version=str(GENERATOR_VERSION),
                    year=2017,
                    contributor=GENERATOR_NAME,
                    date_created='2017-01-01'),
                licenses=[dict(id=0, name='generated', url='')],
                images=images,
                annotations=annotations,
                categories=categories)
            with open(
                    osp.join(tmp, 'annotations',
                             f'instances_{split}2017.json'),
                    'w',
                    encoding='utf-8') as f:
                json.dump(coco, f, separators=(',', ':'))
            stats[split] = dict(
                images=n,
                instances=len(annotations),
                instances_per_image={
                    str(k): per_image[k]
                    for k in sorted(per_image)
                },
                instances_per_class={
                    c: per_class[c]
                    for c in DEMO_DET_CLASSES
                })
        return stats

    return _generate(root, 'coco_instances', params, writer, overwrite, force)


# ---------------------------------------------------------------------------
# ADE20K-like semantic segmentation
# ---------------------------------------------------------------------------
def make_ade20k_like(root: str,
                     num_train: int = DEFAULTS['seg']['num_train'],
                     num_val: int = DEFAULTS['seg']['num_val'],
                     image_size: Sequence[int] = DEFAULTS['seg']['image_size'],
                     seed: int = 0,
                     max_instances: int = 4,
                     progress: Union[bool, ProgressFn, None] = None,
                     overwrite: bool = False,
                     force: bool = False) -> dict:
    """Write an ADE20K-layout semantic segmentation dataset of shapes.

    PNG labels: 1 = background, k + 2 = ``DEMO_SHAPES[k]``; 0 is never
    written. Load with ``reduce_zero_label=True`` and
    ``metainfo=DEMO_SEG_METAINFO``. Note that mmseg's ``ADE20KDataset``
    rejects classes that are not among ADE20K's 150, so use
    ``type='BaseSegDataset'`` with ``img_suffix='.jpg',
    seg_map_suffix='.png', reduce_zero_label=True`` (exactly what
    ``ADE20KDataset`` fixes, minus the class check).

    Arguments and return value as for :func:`make_coco_instances`.
    """
    params = _params(
        num_train, num_val, image_size, seed, max_instances=max_instances)
    if max_instances < 1:
        raise ValueError('max_instances must be >= 1')
    report = _progress_fn(progress)

    def writer(tmp):
        stats = {}
        for split, n in (('train', num_train), ('val', num_val)):
            sub = 'training' if split == 'train' else 'validation'
            img_dir = osp.join(tmp, 'images', sub)
            ann_dir = osp.join(tmp, 'annotations', sub)
            os.makedirs(img_dir)
            os.makedirs(ann_dir)
            pixels = np.zeros(len(DEMO_SEG_CLASSES) + 1, np.int64)
            per_class = Counter()
            labels = BalancedLabels(_labels_rng(seed, 'seg', split))
            for i in range(n):
                scene = _render_balanced(
                    seed,
                    'seg',
                    split,
                    i,
                    labels,
                    image_size,
                    max_instances,
                    with_label_map=True)
                stem = f'ADE_{split}_{i + 1:08d}'
                _write_jpeg(osp.join(img_dir, stem + '.jpg'), scene['img'])
                _write_png(
                    osp.join(ann_dir, stem + '.png'), scene['label_map'])
                pixels += np.bincount(
                    scene['label_map'].reshape(-1),
                    minlength=len(pixels))[:len(pixels)]
                per_class.update(DEMO_SHAPES[inst['label']]
                                 for inst in scene['instances'])
                if report:
                    report(i + 1, n, f'ade {sub}')
            total = max(int(pixels.sum()), 1)
            stats[split] = dict(
                images=n,
                instances_per_class={c: per_class[c]
                                     for c in DEMO_SHAPES},
                pixel_fraction={
                    c: round(int(pixels[k + 1]) / total, 4)
                    for k, c in enumerate(DEMO_SEG_CLASSES)
                })
        return stats

    return _generate(root, 'ade20k', params, writer, overwrite, force)


# ---------------------------------------------------------------------------
# ImageNet-like classification
# ---------------------------------------------------------------------------
def make_imagenet_like(root: str,
                       num_train: int = DEFAULTS['cls']['num_train'],
                       num_val: int = DEFAULTS['cls']['num_val'],
                       image_size: Sequence[int] = DEFAULTS['cls']
                       ['image_size'],
                       seed: int = 0,
                       progress: Union[bool, ProgressFn, None] = None,
                       overwrite: bool = False,
                       force: bool = False) -> dict:
    """Write an ImageNet-layout classification dataset, one shape a picture.

    Classes are balanced (image ``i`` has class ``i % K``). Usable as
    ``CustomDataset(data_root=root, data_prefix='val')`` (classes from the
    sorted folders = :data:`DEMO_CLS_CLASSES`) or as
    ``ImageNet(data_root=root, split='val', metainfo=DEMO_CLS_METAINFO)``
    (reads ``meta/val.txt``; pass the metainfo, else the 1000 ImageNet names
    are shown).

    Arguments and return value as for :func:`make_coco_instances`.
    """
    params = _params(num_train, num_val, image_size, seed)
    report = _progress_fn(progress)
    num_classes = len(DEMO_CLS_CLASSES)

    def writer(tmp):
        os.makedirs(osp.join(tmp, 'meta'))
        with open(
                osp.join(tmp, 'meta', 'classes.txt'), 'w',
                encoding='utf-8') as f:
            f.write(''.join(c + '\n' for c in DEMO_CLS_CLASSES))
        stats = {}
        for split, n in (('train', num_train), ('val', num_val)):
            for c in DEMO_CLS_CLASSES:
                os.makedirs(osp.join(tmp, split, c))
            lines = []
            per_class = Counter()
            for i in range(n):
                label = i % num_classes
                scene = render_scene(
                    _rng(seed, 'cls', split, i),
                    image_size,
                    1,
                    radius_frac=CLS_SIZE,
                    label=label,
                    centred=True)
                rel = f'{DEMO_CLS_CLASSES[label]}/{split}_{i + 1:06d}.JPEG'
                _write_jpeg(osp.join(tmp, split, rel), scene['img'])
                lines.append(f'{rel} {label}\n')
                per_class[DEMO_CLS_CLASSES[label]] += 1
                if report:
                    report(i + 1, n, f'imagenet {split}')
            with open(
                    osp.join(tmp, 'meta', f'{split}.txt'), 'w',
                    encoding='utf-8') as f:
                f.write(''.join(lines))
            stats[split] = dict(
                images=n,
                images_per_class={c: per_class[c]
                                  for c in DEMO_CLS_CLASSES})
        return stats

    return _generate(root, 'imagenet', params, writer, overwrite, force)


_MAKERS = dict(
    det=make_coco_instances, seg=make_ade20k_like, cls=make_imagenet_like)


def make_demo_data(out: str = 'data/demo',
                   tasks: Sequence[str] = ('det', 'seg', 'cls'),
                   num_train: Optional[int] = None,
                   num_val: Optional[int] = None,
                   image_size: Optional[Sequence[int]] = None,
                   seed: int = 0,
                   progress: Union[bool, ProgressFn, None] = None,
                   force: bool = False) -> Dict[str, dict]:
    """Make the datasets of ``tasks`` under ``out``/:data:`TASK_DIRS`.

    ``None`` keeps each task's :data:`DEFAULTS`. Returns ``{task: result}``
    as from the ``make_*`` functions.
    """
    results = {}
    for task in tasks:
        if task not in _MAKERS:
            raise ValueError(f'unknown task {task!r}; choose from '
                             f'{sorted(_MAKERS)}')
        kwargs = dict(DEFAULTS[task])
        for key, value in (('num_train', num_train), ('num_val', num_val),
                           ('image_size', image_size)):
            if value is not None:
                kwargs[key] = value
        results[task] = _MAKERS[task](
            osp.join(out, TASK_DIRS[task]),
            seed=seed,
            progress=progress,
            force=force,
            **kwargs)
    return results
