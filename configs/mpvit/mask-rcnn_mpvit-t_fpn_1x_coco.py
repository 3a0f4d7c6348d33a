# Mask R-CNN + FPN with an MPViT-T backbone, COCO 1x: the published
# detectron2 recipe on mmdet's Swin-T 1x config (model, data, AdamW lr 1e-4,
# wd 0.05, 2 images x 8 GPUs). The published recipe, where it differs from
# that config: weight decay on every parameter, norms and biases included;
# the gradient of the whole model clipped at L2 norm 1.0; linear warm-up over
# 1000 iterations from factor 0.01; 90k iterations of 16 images with steps at
# 60k and 80k; training images without annotations kept; SyncBN in the
# backbone; drop path 0.1 (T, XS), 0.2 (S), 0.4 (B). Flip and multi-scale
# test-time augmentation (``--tta``, ../vheat/mask-rcnn_tta.py) are this
# project's addition.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    '../vheat/mask-rcnn_tta.py'
]

# ImageNet weights converted from the published checkpoint (mmpretrain
# layout, backbone.* + head.fc.*; loaded here with prefix 'backbone.'):
#   python tools/model_converters/mpvit_to_mmvheat.py mpvit_tiny.pth \
#       checkpoints/mpvit-tiny_in1k_mmvheat.pth
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

# detectron2 counts iterations of 16 images; so do these configs (an
# IterBasedTrainLoop with 2 images x 8 GPUs), which keeps the schedule exact
# whatever the number of training images. Evaluation and checkpoints every
# 10k iterations are this project's choice.
max_iters = 90000
train_cfg = dict(
    _delete_=True,
    _scope_='mmdet',
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=10000)
# detectron2 warms up with 0.01 + 0.99 * t / 1000 for t < 1000; mmengine's
# LinearLR reaches its end factor at step end - 1, hence end=1001.
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
        milestones=[60000, 80000],
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
