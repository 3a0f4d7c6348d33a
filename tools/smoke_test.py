# Copyright (c) mmvheat contributors. All rights reserved.
"""Build a vHeat-T Mask R-CNN and run it on a generated image (CPU or GPU).

Runs one training step (losses and backward) and one inference, prints what
they produced and how long they took. No dataset or checkpoint is needed. A
bad input ends it with one line and exit status 1 (2 for bad options).
"""
import argparse
import os.path as osp
import sys
import time

import numpy as np
import torch

import mmvheat  # noqa: F401  (before mmdet: torch.load and torchvision)
from mmvheat.utils.io import positive_int, run_tool

PROJECT_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(PROJECT_ROOT, 'configs', 'vheat',
                          'mask-rcnn_vheat-t_fpn_1x_coco.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument(
        '--size',
        type=positive_int,
        nargs=2,
        default=(384, 512),
        metavar=('H', 'W'),
        help='image size')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args(argv)


def synthetic_scene(height, width, seed=0):
    """An image with a few filled rectangles and their boxes and masks."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    boxes, masks = [], []
    for _ in range(3):
        h, w = rng.integers(height // 6,
                            height // 3), rng.integers(width // 6, width // 3)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y:y + h, x:x + w] = rng.integers(150, 255, size=3)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[y:y + h, x:x + w] = 1
        boxes.append([x, y, x + w, y + h])
        masks.append(mask)
    return image, np.array(boxes, dtype=np.float32), np.stack(masks)


def smoke_test(args):
    """Build, train a step and predict as ``args`` say, printing as it
    goes."""
    from mmdet.apis import inference_detector, init_detector
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    from mmvheat.apis import read_config
    from mmvheat.utils.io import UsageError
    if min(args.size) < 32:
        raise UsageError(f'--size {args.size[0]} {args.size[1]}: the '
                         'synthetic scene needs sides of at least 32 pixels')
    cfg = read_config(args.config)
    cfg.model.backbone.init_cfg = None  # no checkpoint needed here
    model = init_detector(cfg, checkpoint=None, device=args.device)
    backbone = model.backbone
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f'Built {type(model).__name__} with {type(backbone).__name__} '
          f'{backbone.arch_settings["depths"]}/{backbone.dims}: '
          f'{params:.1f}M parameters, backbone outputs '
          f'{backbone.out_channels} channels at strides '
          f'{backbone.out_strides}')

    height, width = args.size
    image, boxes, masks = synthetic_scene(height, width)
    sample = DetDataSample(
        metainfo=dict(
            img_shape=(height, width),
            ori_shape=(height, width),
            pad_shape=(height, width),
            scale_factor=(1., 1.)))
    sample.gt_instances = InstanceData(
        bboxes=torch.from_numpy(boxes),
        labels=torch.arange(len(boxes)),
        masks=BitmapMasks(masks, height, width))
    batch = dict(
        inputs=[torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)],
        data_samples=[sample])

    model.train()
    start = time.perf_counter()
    data = model.data_preprocessor(batch, training=True)
    losses = model(**data, mode='loss')
    total, log_vars = model.parse_losses(losses)
    total.backward()
    elapsed = time.perf_counter() - start
    print(f'Training step on a {height}x{width} image: loss {total.item():.3f}'
          f' ({", ".join(k for k in log_vars if k != "loss")}) in '
          f'{elapsed:.2f} s')
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), \
        'some backbone parameter got no finite gradient'

    model.eval()
    start = time.perf_counter()
    result = inference_detector(model, image)
    elapsed = time.perf_counter() - start
    pred = result.pred_instances
    print(f'Inference: {len(pred)} detections (untrained weights), masks '
          f'{tuple(pred.masks.shape)}, in {elapsed:.2f} s')
    print('Smoke test passed.')


def main(argv=None):
    args = parse_args(argv)
    return run_tool(lambda: smoke_test(args))


if __name__ == '__main__':
    sys.exit(main())
