# Copyright (c) mmvheat contributors. All rights reserved.
"""The maps the operator meets in the model zoo's runs: vHeat-T/S/B stage
shapes for ImageNet at 224, ADE20K at 512 and COCO at mmdet's 1333 x 800
keep-ratio resize padded to 32."""
import math

from mmvheat.models import VHeat

#: mmdet's ``Resize(scale=(1333, 800), keep_ratio=True)``.
COCO_SCALE = (1333, 800)
#: ``DetDataPreprocessor(pad_size_divisor=32)``: each batch is padded to its
#: largest height and width, rounded up to a multiple of 32.
PAD = 32
#: COCO images have 640 pixels on their longer side (the shorter one
#: anything up to 640).
COCO_LONG_SIDE = 640


def _resized(w: int, h: int):
    """mmdet's keep-ratio rescale of a ``w x h`` image to COCO_SCALE."""
    factor = min(max(COCO_SCALE) / max(w, h), min(COCO_SCALE) / min(w, h))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def _pad(n: int) -> int:
    return PAD * math.ceil(n / PAD)


def coco_image_sizes():
    """``(H, W)`` of every COCO image after the resize and the padding: a
    batch of one image (testing)."""
    sizes = set()
    for short in range(1, COCO_LONG_SIDE + 1):
        for w, h in ((COCO_LONG_SIDE, short), (short, COCO_LONG_SIDE)):
            rw, rh = _resized(w, h)
            sizes.add((_pad(rh), _pad(rw)))
    return sorted(sizes)


def coco_batch_sizes():
    """``(H, W)`` of every batch of two COCO images (training, 2 per GPU):
    the larger height and the larger width of the two."""
    images = coco_image_sizes()
    return sorted({(max(a[0], b[0]), max(a[1], b[1]))
                   for a in images
                   for b in images})


def stage_grids(size):
    """``(stage, H, W)`` of vHeat's four stages for a padded input (the
    stem divides by 4, each later stage by 2 more)."""
    h, w = size
    return [(stage, math.ceil(h / 2**(stage + 2)),
             math.ceil(w / 2**(stage + 2))) for stage in range(4)]


def zoo_shapes():
    """``(B, H, W, C)`` of the operator's input in every stage of vHeat-T,
    S and B: ImageNet at 224 (batch 128 training, 1 inference), ADE20K at
    512 (2 and 1), COCO (2 images per batch training, 1 testing)."""
    widths = {tuple(VHeat.parse_arch(arch)['dims']) for arch in 'tsb'}
    runs = ((128, [(224, 224)]), (1, [(224, 224)]), (2, [(512, 512)]), (1, [
        (512, 512)
    ]), (2, coco_batch_sizes()), (1, coco_image_sizes()))
    shapes = set()
    for dims in widths:
        for batch, sizes in runs:
            for size in sizes:
                for stage, h, w in stage_grids(size):
                    shapes.add((batch, h, w, dims[stage]))
    return sorted(shapes)
