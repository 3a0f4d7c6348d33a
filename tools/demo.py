# Copyright (c) mmvheat contributors. All rights reserved.
"""The end-to-end demo: vHeat-T Mask R-CNN and UperNet, from data to metrics.

1. Generates small COCO- and ADE20K-format datasets in ``data/demo``
   (``tools/dataset_converters/make_demo_data.py``).
2. For each task: evaluates the untrained model as a baseline, trains it from
   scratch (``tools/train.py``), then tests it without and with test-time
   augmentation (``tools/test.py --tta``).
3. Prints COCO bbox/segm mAP and mIoU, untrained against trained.

Everything runs through the same functions as the command-line tools; the
equivalent commands are printed before each step. Sized for a 2-core CPU
(about 15 minutes); ``--tasks`` picks a subset and ``--max-iters`` shortens
training.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

try:
    import mmvheat  # noqa: F401  (first: prepares torch.load, torchvision)
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import mmvheat  # noqa: F401

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.runner import save_checkpoint  # noqa: E402

from mmvheat import apis  # noqa: E402
from mmvheat.demo import TASK_DIRS, make_demo_data  # noqa: E402
from mmvheat.utils.io import positive_int  # noqa: E402

PROJECT_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = {
    'det':
    dict(
        config='configs/vheat/demo/mask-rcnn_vheat-t_fpn_demo-shapes-128.py',
        data='det',
        metrics=[('coco/bbox_mAP', 'bbox mAP'),
                 ('coco/bbox_mAP_50', 'bbox mAP@50'),
                 ('coco/segm_mAP', 'segm mAP'),
                 ('coco/segm_mAP_50', 'segm mAP@50')]),
    'seg':
    dict(
        config='configs/vheat/demo/vheat-tiny_upernet_demo-shapes-128.py',
        data='seg',
        metrics=[('mIoU', 'mIoU'), ('aAcc', 'aAcc')]),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--tasks', nargs='+', choices=sorted(TASKS), default=['det', 'seg'])
    parser.add_argument('--data-root', default='data/demo')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--max-iters',
        type=positive_int,
        help='override the configs\' schedule')
    parser.add_argument(
        '--summary', help='also write the metrics to this JSON file')
    return parser.parse_args(argv)


def banner(text):
    print(f'\n{"=" * 78}\n{text}\n{"=" * 78}', flush=True)


def command(*args):
    print('$ ' + ' '.join(args), flush=True)
    return list(args)


def save_untrained(config, cfg_options, path):
    """Initialise the config's model as training would and save it."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options)
    library = apis.detect_library(cfg)
    apis.register_library(library)
    from importlib import import_module
    models = import_module(f'{library}.registry').MODELS
    with DefaultScope.overwrite_default_scope(library):
        model = models.build(cfg.model)
    model.init_weights()
    save_checkpoint({'state_dict': model.state_dict()}, path)


def run_task(name, args):
    task = TASKS[name]
    config = task['config']
    work_dir = osp.join(args.work_dir, name)
    data_root = osp.join(args.data_root, TASK_DIRS[task['data']]) + '/'
    options = [f'data_root={data_root}']
    if name == 'det':
        ann = data_root + 'annotations/instances_val2017.json'
        options += [
            f'train_dataloader.dataset.data_root={data_root}',
            f'val_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}',
            f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}'
        ]
    else:
        options += [
            f'{split}_dataloader.dataset.data_root={data_root}'
            for split in ('train', 'val', 'test')
        ]
    if args.max_iters:
        options += [
            f'train_cfg.max_iters={args.max_iters}',
            f'train_cfg.val_interval={args.max_iters}',
            f'default_hooks.checkpoint.interval={args.max_iters}'
        ]
    cfg_options = ['--cfg-options', *options]
    results = {}

    banner(f'[{name}] evaluate the untrained model (baseline)')
    untrained = osp.join(work_dir, 'untrained.pth')
    save_untrained(config, dict(o.split('=', 1) for o in options), untrained)
    results['untrained'] = apis.test(
        command('tools/test.py', config, untrained, '--work-dir',
                osp.join(work_dir, 'untrained'), *cfg_options)[1:])

    banner(f'[{name}] train')
    runner = apis.train(
        command('tools/train.py', config, '--work-dir', work_dir,
                *cfg_options)[1:])
    checkpoint = osp.join(work_dir, f'iter_{runner.iter}.pth')

    banner(f'[{name}] test the trained model')
    results['trained'] = apis.test(
        command('tools/test.py', config, checkpoint, '--work-dir', work_dir,
                *cfg_options)[1:])

    banner(f'[{name}] test the trained model with test-time augmentation')
    results['trained + TTA'] = apis.test(
        command('tools/test.py', config, checkpoint, '--work-dir', work_dir,
                '--tta', *cfg_options)[1:])
    return results


def main(argv=None):
    args = parse_args(argv)
    os.chdir(PROJECT_ROOT)
    start = time.time()

    banner('Generate the demo datasets')
    command('python', 'tools/dataset_converters/make_demo_data.py', '--out',
            args.data_root, '--tasks', *[TASKS[t]['data'] for t in args.tasks])
    make_demo_data(
        out=args.data_root,
        tasks=[TASKS[t]['data'] for t in args.tasks],
        progress=True)

    summary = {}
    for name in args.tasks:
        task_start = time.time()
        summary[name] = run_task(name, args)
        summary[name]['minutes'] = round((time.time() - task_start) / 60, 1)

    banner(f'Summary ({(time.time() - start) / 60:.1f} min)')
    for name in args.tasks:
        metrics = TASKS[name]['metrics']
        print(f'\n{name} ({summary[name]["minutes"]} min): '
              f'{TASKS[name]["config"]}')
        print(f'  {"":<15}' + ''.join(f'{label:>13}' for _, label in metrics))
        for run in ('untrained', 'trained', 'trained + TTA'):
            values = summary[name][run] or {}
            print(f'  {run:<15}' + ''.join(f'{values.get(key, 0.0):>13.3f}'
                                           for key, _ in metrics))
    if args.summary:
        with open(args.summary, 'w') as f:
            json.dump(summary, f, indent=2, default=float)
    return summary


if __name__ == '__main__':
    main()
