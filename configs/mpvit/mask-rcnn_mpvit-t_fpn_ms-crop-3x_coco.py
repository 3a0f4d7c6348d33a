# Mask R-CNN + FPN with an MPViT-T backbone, COCO multi-scale 3x: the
# published recipe of mask-rcnn_mpvit-t_fpn_1x_coco.py with 270k iterations
# of 16 images, steps at 210k and 250k, on mmdet's Swin-T 3x config
# (DETR-style multi-scale resize/crop: shorter side 480..800, max 1333).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    '../vheat/mask-rcnn_tta.py'
]

# Made as in mask-rcnn_mpvit-t_fpn_1x_coco.py.
checkpoint = 'checkpoints/mpvit-tiny_in1k_mmvheat.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.MPViT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[96, 176, 216, 216]))  # (C1, C2, C3, C3)

# Iterations as in mask-rcnn_mpvit-t_fpn_1x_coco.py.
max_iters = 270000
train_cfg = dict(
    _delete_=True,
    _scope_='mmdet',
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=10000)
# The warm-up of mask-rcnn_mpvit-t_fpn_1x_coco.py.
param_scheduler = [
    dict(
        _scope_='mmdet',
        type='LinearLR',
        start_factor=0.01,
        by_epoch=False,
        begin=0,
        end=1001),
    dict(
        _scope_='mmdet',
        type='MultiStepLR',
        begin=0,
        end=max_iters,
        by_epoch=False,
        milestones=[210000, 250000],
        gamma=0.1)
]
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True),
    clip_grad=dict(max_norm=1.0, norm_type=2))
train_dataloader = dict(
    sampler=dict(type='InfiniteSampler'),
    dataset=dict(filter_cfg=dict(filter_empty_gt=False, min_size=0)))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000))
log_processor = dict(by_epoch=False)
