# vHeat-T UperNet trained from scratch on the generated ADE20K-format shapes
# dataset (tools/dataset_converters/make_demo_data.py): a CPU-sized demo of
# the full segmentation workflow, not a benchmark. Heads are narrowed and BN
# replaces SyncBN so that it also runs as several CPU processes.
#
# The training pipeline keeps every shape whole, as the detection demo's
# does: ADE20K's random resize and crop cuts about a third of the shapes at
# the crop's edge, and a cut circle shows corners, so the one cue that sets
# circles apart is contradicted (trained that way, the model never predicts
# a circle). Colour jitter is left out too (the colours carry no class, and
# the generator already draws them at random). Batches of 4 give twice the
# steps of 8 for the same images and time: the model tells the shapes apart
# only after a few hundred steps.
_base_ = ['../vheat-tiny_upernet_8xb2-160k_ade20k-512x512.py']

# Names and colours as DEMO_SEG_METAINFO in demo/data.py.
classes = ('background', 'circle', 'square', 'triangle')
palette = [[120, 120, 120], [220, 20, 60], [0, 130, 230], [250, 170, 30]]
data_root = 'data/demo/ade/'
crop_size = (128, 128)
max_iters = 500
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=128, drop_path_rate=0.0, init_cfg=None),
    decode_head=dict(
        channels=128, num_classes=len(classes), norm_cfg=norm_cfg),
    auxiliary_head=dict(
        channels=64, num_classes=len(classes), norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'))

# Typed dicts defined here name their library (_scope_), so that a config
# inheriting this one through mmvheat:: builds them there too.
train_pipeline = [
    dict(_scope_='mmseg', type='LoadImageFromFile'),
    dict(_scope_='mmseg', type='LoadAnnotations'),
    dict(_scope_='mmseg', type='Resize', scale=crop_size, keep_ratio=True),
    dict(_scope_='mmseg', type='RandomFlip', prob=0.5),
    dict(_scope_='mmseg', type='PackSegInputs')
]
test_pipeline = [
    dict(_scope_='mmseg', type='LoadImageFromFile'),
    dict(_scope_='mmseg', type='Resize', scale=crop_size, keep_ratio=True),
    dict(_scope_='mmseg', type='LoadAnnotations'),
    dict(_scope_='mmseg', type='PackSegInputs')
]
dataset = dict(
    _scope_='mmseg',
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        **dataset,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(
        **dataset,
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# Test-time augmentation at the demo's scale (the model trains at one): three
# sizes around it, with and without flip, as the detection demo.
tta_pipeline = [
    dict(_scope_='mmseg', type='LoadImageFromFile'),
    dict(
        _scope_='mmseg',
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale_factor=r, keep_ratio=True)
                for r in (0.875, 1.0, 1.25)
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ], [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]
        ])
]

train_cfg = dict(
    _delete_=True,
    _scope_='mmseg',
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters)
param_scheduler = [
    dict(
        _scope_='mmseg',
        type='LinearLR',
        start_factor=0.01,
        by_epoch=False,
        begin=0,
        end=60),
    dict(
        _scope_='mmseg',
        type='PolyLR',
        power=1.0,
        eta_min=0.,
        by_epoch=False,
        begin=60,
        end=max_iters)
]
# fused: as in the Mask R-CNN demo, AdamW's update in one pass per parameter.
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01, fused=True))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
