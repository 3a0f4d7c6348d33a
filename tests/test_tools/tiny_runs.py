# Copyright (c) mmvheat contributors. All rights reserved.
"""Tiny training runs through ``tools/train.py``, in the real formats.

Tiny vHeat models (one block per stage, 16 channels at first) in configs
that inherit the libraries' own ``_base_`` files, on tiny datasets in the
real formats (COCO instances, ADE20K layout, ImageNet layout) from the
demo's generator. The fixtures ``data_root`` and ``trained`` (in
tests/conftest.py) train each library's model once per test session, for
every test that needs a trained run and its checkpoints.
"""
import os
import os.path as osp
import subprocess
import textwrap

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')
ARCH = dict(
    depths=[1, 1, 1, 1],
    dims=16,
    post_norm=False,
    layer_scale=None,
    mlp_ratio=2.)
SHAPES = ('circle', 'square', 'triangle')
TIMEOUT = 300
#: How long each library's shared run trains (``trained``): the classifier
#: 6 iterations, checkpointed at 2, 4 and 6; the others the default 4.
RUN_LENGTHS = dict(mmpretrain=dict(max_iters=6, val_interval=3))


# -- configs ------------------------------------------------------------------
def _schedule(max_iters, val_interval, ckpt_interval):
    return f"""
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters={max_iters}, val_interval={val_interval})
param_scheduler = [dict(type='MultiStepLR', by_epoch=False,
                        milestones=[3], gamma=0.5)]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval={ckpt_interval}))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)
env_cfg = dict(cudnn_benchmark=False)
"""


def cls_config(data, max_iters=4, val_interval=4, ckpt_interval=2):
    root = osp.join(data, 'imagenet')
    # No random transforms: resumed and uninterrupted runs see the same data.
    return f"""
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/schedules/imagenet_bs256.py',
    'mmpretrain::_base_/default_runtime.py',
]
model = dict(
    backbone=dict(_delete_=True, type='mmvheat.VHeat', arch={ARCH!r},
                  img_size=64, out_indices=(3, ), init_cfg=None),
    head=dict(num_classes=3, in_channels=128, topk=(1, )))
data_preprocessor = dict(num_classes=3)
metainfo = dict(classes={SHAPES!r})
pipeline = [dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(64, 64)),
            dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(data_root={root!r}, split='train', metainfo=metainfo,
                 pipeline=pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, split='val', metainfo=metainfo,
                 pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=0.01))
""" + _schedule(max_iters, val_interval, ckpt_interval)


def det_config(data, max_iters=4, val_interval=4, ckpt_interval=2):
    root = osp.join(data, 'coco') + '/'
    return f"""
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
model = dict(
    backbone=dict(_delete_=True, type='mmvheat.VHeat', arch={ARCH!r},
                  img_size=64, out_indices=(0, 1, 2, 3), init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=3),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(in_channels=16, conv_out_channels=16, num_classes=3)))
metainfo = dict(classes={SHAPES!r})
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, metainfo=metainfo,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, metainfo=metainfo,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={root!r} + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=0.01))
""" + _schedule(max_iters, val_interval, ckpt_interval)


def seg_config(data, max_iters=4, val_interval=4, ckpt_interval=2):
    root = osp.join(data, 'ade')
    # ADE20KDataset accepts only ADE20K's class names: BaseSegDataset with
    # what ADE20KDataset fixes (suffixes, reduce_zero_label).
    return f"""
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=(128, 128)),
    backbone=dict(_delete_=True, type='mmvheat.VHeat', arch={ARCH!r},
                  img_size=64, out_indices=(0, 1, 2, 3), init_cfg=None),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=16,
                     num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=4,
                        norm_cfg=norm_cfg))
seg_dataset = dict(type='BaseSegDataset', data_root={root!r},
                   img_suffix='.jpg', seg_map_suffix='.png',
                   reduce_zero_label=True,
                   metainfo=dict(classes=('background', ) + {SHAPES!r}))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=(128, 128), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True)
         for r in (0.75, 1.0)],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(seg_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(seg_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.01))
""" + _schedule(max_iters, val_interval, ckpt_interval)


CONFIGS = dict(mmpretrain=cls_config, mmdet=det_config, mmseg=seg_config)
METRICS = dict(
    mmpretrain=r'accuracy/top1: (\d+\.\d+)',
    mmdet=r'coco/bbox_mAP: (-?\d+\.\d+)',
    mmseg=r'mIoU: (\d+\.\d+)')


def write_file(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def tool_env(**extra):
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS='1',
        MKL_NUM_THREADS='1',
        PYTHONPATH=os.pathsep.join([ROOT] +
                                   [p for p in [env.get('PYTHONPATH')] if p]))
    env.update(extra)
    return env


def run_cmd(cmd, cwd, env=None, expect_rc=0):
    return run_cmds([cmd], cwd, env, expect_rc)[0]


def run_cmds(cmds, cwd, env=None, expect_rc=0):
    """Run commands side by side (the machine has two cores); outputs."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=str(cwd),
            env=env or tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True) for cmd in cmds
    ]
    outs = []
    try:
        for cmd, proc in zip(cmds, procs):
            out = proc.communicate(timeout=TIMEOUT)[0]
            if expect_rc is not None:
                assert proc.returncode == expect_rc, \
                    f'{" ".join(cmd)} -> {proc.returncode}\n{out[-6000:]}'
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs
