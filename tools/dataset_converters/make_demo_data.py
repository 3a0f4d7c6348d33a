# Copyright (c) mmvheat contributors. All rights reserved.
"""Generate the small synthetic demo datasets (no download needed).

    python tools/dataset_converters/make_demo_data.py \
        [--out data/demo] [--tasks det seg cls] [--num-train N] \
        [--num-val N] [--size H W] [--seed S] [--force]

writes, in the real formats,

    <out>/coco      COCO instances   (mmdet CocoDataset: Mask R-CNN)
    <out>/ade       ADE20K layout    (mmseg, reduce_zero_label=True: UperNet)
    <out>/imagenet  ImageNet layout  (mmpretrain CustomDataset / ImageNet)

Pictures of circles, squares and triangles on textured backgrounds; the
same seed gives byte-identical files. A dataset that is already there with
the same parameters is kept as it is (the run takes milliseconds); other
parameters regenerate it. See demo/data.py.
"""
import argparse
import os.path as osp
import sys
import time

# The generator is beside the package, in this checkout's demo/ (never
# installed); this checkout's mmvheat comes first too.
sys.path.insert(0,
                osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

# isort: off
from demo.data import (  # noqa: E402
    DEFAULTS, DEMO_CLS_CLASSES, DEMO_DET_CLASSES, DEMO_SEG_CLASSES, TASK_DIRS,
    make_demo_data, print_progress)
from mmvheat.utils.io import int_at_least  # noqa: E402
# isort: on

_WHAT = dict(
    det=('COCO instances', DEMO_DET_CLASSES,
         "CocoDataset(data_root=..., ann_file='annotations/"
         "instances_val2017.json', data_prefix=dict(img='val2017/'), "
         'metainfo=DEMO_DET_METAINFO)'),
    seg=('ADE20K layout', DEMO_SEG_CLASSES,
         "BaseSegDataset(data_root=..., data_prefix=dict(img_path="
         "'images/validation', seg_map_path='annotations/validation'), "
         "img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True, "
         'metainfo=DEMO_SEG_METAINFO)'),
    cls=('ImageNet layout', DEMO_CLS_CLASSES,
         "CustomDataset(data_root=..., data_prefix='val') or "
         "ImageNet(data_root=..., split='val', metainfo=DEMO_CLS_METAINFO)"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate small synthetic COCO / ADE20K / ImageNet '
        'datasets for the demo and the tests.')
    parser.add_argument(
        '--out',
        default='data/demo',
        help='output root (default: %(default)s)')
    parser.add_argument(
        '--tasks',
        nargs='+',
        choices=sorted(TASK_DIRS),
        default=['det', 'seg', 'cls'],
        help='datasets to make: det -> <out>/coco, seg -> <out>/ade, '
        'cls -> <out>/imagenet (default: all)')
    defaults = ', '.join(f"{t} {d['num_train']}/{d['num_val']} at "
                         f"{d['image_size'][0]}x{d['image_size'][1]}"
                         for t, d in DEFAULTS.items())
    parser.add_argument(
        '--num-train',
        type=int_at_least(0),
        help=f'train images per task ({defaults})')
    parser.add_argument(
        '--num-val', type=int_at_least(0), help='val images per task')
    parser.add_argument(
        '--size',
        type=int_at_least(16),
        nargs=2,
        metavar=('H', 'W'),
        help='image size for every task')
    parser.add_argument('--seed', type=int_at_least(0), default=0)
    parser.add_argument(
        '--force',
        action='store_true',
        help='regenerate even if an up-to-date dataset is there')
    parser.add_argument(
        '--quiet', action='store_true', help='no progress counter')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    results = make_demo_data(
        out=args.out,
        tasks=args.tasks,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.size,
        seed=args.seed,
        progress=None if args.quiet else print_progress,
        force=args.force)
    for task, res in results.items():
        name, classes, usage = _WHAT[task]
        p = res['params']
        state = ('up to date, kept'
                 if res['skipped'] else f"written in {res['seconds']:.1f} s")
        print(f"[{task}] {name}: {res['root']} ({state})")
        print(f"      {p['num_train']} train / {p['num_val']} val images, "
              f"{p['image_size'][0]}x{p['image_size'][1]}, seed {p['seed']}"
              f", {res['num_files']} files")
        print(f'      classes: {", ".join(classes)}')
        for split, st in res['stats'].items():
            detail = {
                k: v
                for k, v in st.items() if k not in ('images', 'instances')
            }
            extra = (f", {st['instances']} instances"
                     if 'instances' in st else '')
            print(f'      {split}: {st["images"]} images{extra}; {detail}')
        print(f'      load with {usage}')
    print(f'done in {time.perf_counter() - start:.1f} s')
    return results


if __name__ == '__main__':
    main()
