# MPViT-T on ImageNet-1K at 224: the DeiT recipe (mmpretrain's
# deit/deit-small_4xb256_in1k.py bases: imagenet_bs64_swin_224 data with
# RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, bicubic resizing;
# Mixup 0.8 / CutMix 1.0; label smoothing 0.1; AdamW betas (0.9, 0.999),
# eps 1e-8, wd 0.05 with no decay on norms, biases and other 1-D weights;
# 300 epochs) on 8 GPUs x 128 images. DeiT's schedule: lr 5e-4 per 512
# images, 5 warm-up epochs from 1e-6, then cosine to 1e-5 (per iteration).
# No gradient clipping (DeiT's default).
#
# Drop path: the MPViT facts do not give the ImageNet values, so these are
# a choice: DeiT's 0.1 for the two larger models, none for the two smallest
# (mmpretrain's DeiT-tiny/small configs also drop it for small models):
# tiny 0.0, xsmall 0.0, small 0.1, base 0.1 (see the other configs).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

model = dict(
    _scope_='mmpretrain',
    type='ImageClassifier',
    backbone=dict(
        type='mmvheat.MPViT',
        arch='tiny',
        out_indices=(3, ),
        drop_path_rate=0.0),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=216,  # C3
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]),
)

train_dataloader = dict(batch_size=128)

# lr 5e-4 per 512 images; min and warm-up lr as ratios so that they follow
# when auto_scale_lr rescales lr.
optim_wrapper = dict(
    optimizer=dict(
        type='AdamW',
        lr=5e-4 * 1024 / 512,
        weight_decay=0.05,
        eps=1e-8,
        betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0))
param_scheduler = [
    dict(
        _scope_='mmpretrain',
        type='LinearLR',
        start_factor=1e-6 / 5e-4,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(
        _scope_='mmpretrain',
        type='CosineAnnealingLR',
        eta_min_ratio=1e-5 / 5e-4,
        by_epoch=True,
        begin=5,
        end=300,
        convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)

# Optional model EMA (DeiT's decay 0.99996 per iteration); off by default
# as in mmpretrain's DeiT configs:
# custom_hooks = [dict(type='EMAHook', momentum=4e-5,
#                      priority='ABOVE_NORMAL')]
