# vHeat-T Mask R-CNN trained from scratch on the generated COCO-format shapes
# dataset (tools/dataset_converters/make_demo_data.py): a CPU-sized demo of
# the full detection workflow, not a benchmark. Heads are narrowed and the
# proposal budget cut to fit a few minutes of CPU training.
_base_ = ['../mask-rcnn_vheat-t_fpn_1x_coco.py']

# Names as DEMO_DET_CLASSES in demo/data.py.
classes = ('circle', 'square', 'triangle')
data_root = 'data/demo/coco/'
image_size = (128, 128)
max_iters = 480

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(img_size=128, drop_path_rate=0.0, init_cfg=None),
    neck=dict(out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(
            in_channels=128, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(
            in_channels=128, conv_out_channels=128, num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)))

# Typed dicts defined here name their library (_scope_), so that a config
# inheriting this one through mmvheat:: builds them there too.
train_pipeline = [
    dict(_scope_='mmdet', type='LoadImageFromFile'),
    dict(
        _scope_='mmdet',
        type='LoadAnnotations',
        with_bbox=True,
        with_mask=True),
    dict(_scope_='mmdet', type='Resize', scale=image_size, keep_ratio=True),
    dict(_scope_='mmdet', type='RandomFlip', prob=0.5),
    dict(_scope_='mmdet', type='PackDetInputs')
]
test_pipeline = [
    dict(_scope_='mmdet', type='LoadImageFromFile'),
    dict(_scope_='mmdet', type='Resize', scale=image_size, keep_ratio=True),
    dict(
        _scope_='mmdet',
        type='LoadAnnotations',
        with_bbox=True,
        with_mask=True),
    dict(
        _scope_='mmdet',
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# classwise: the per-class AP tables in the log (the demo reports them)
val_evaluator = dict(
    ann_file=data_root + 'annotations/instances_val2017.json', classwise=True)
test_evaluator = val_evaluator

# Test-time augmentation: the training scale and two larger ones, with and
# without flip. The merge keeps the most confident box of each cluster, so a
# view smaller than the training scale (weaker on these small shapes) may
# win over a better one.
tta_pipeline = [
    dict(_scope_='mmdet', type='LoadImageFromFile'),
    dict(
        _scope_='mmdet',
        type='TestTimeAug',
        transforms=[[
            dict(type='Resize', scale=s, keep_ratio=True)
            for s in [(128, 128), (160, 160), (192, 192)]
        ], [
            dict(type='RandomFlip', prob=1.),
            dict(type='RandomFlip', prob=0.)
        ], [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
                    [
                        dict(
                            type='PackDetInputs',
                            meta_keys=('img_id', 'img_path', 'ori_shape',
                                       'img_shape', 'scale_factor', 'flip',
                                       'flip_direction'))
                    ]])
]

train_cfg = dict(
    _delete_=True,
    _scope_='mmdet',
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters)
param_scheduler = [
    dict(
        _scope_='mmdet',
        type='LinearLR',
        start_factor=0.01,
        by_epoch=False,
        begin=0,
        end=50),
    dict(
        _scope_='mmdet',
        type='CosineAnnealingLR',
        by_epoch=False,
        begin=50,
        end=max_iters,
        eta_min=1e-5)
]
# fused: torch's AdamW kernel updates each parameter in one pass over its
# tensors (CPU and CUDA), instead of one pass per elementwise step.
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.05, fused=True),
    clip_grad=dict(max_norm=10.))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)
