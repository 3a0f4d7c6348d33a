# Mask R-CNN + FPN with a vHeat-T backbone, COCO 1x, the published recipe:
# mmdet's Swin-T 1x config (AdamW lr 1e-4, wd 0.05, 12 epochs, steps 8/11,
# 1000-iter warm-up, 2 images x 8 GPUs) with the backbone swapped, validation
# at 2 images per GPU and testing at 1. Flip and multi-scale test-time
# augmentation (``--tta``) are this project's addition. The published
# configs inherit './swin/...', a path missing from the published repository:
# a bug, not part of the recipe.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './mask-rcnn_tta.py'
]

# ImageNet weights converted and enlarged to the 512 grid:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_tiny.pth \
#       checkpoints/vheat-tiny_in1k-512.pth --tg-size 512
checkpoint = 'checkpoints/vheat-tiny_in1k-512.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.VHeat',
        arch='tiny',
        img_size=512,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The published 'norm' rule (decay_mult 0) misses the downsample LayerNorms,
# named by index there ('layers.<i>.<depth>.1'), so they decay. Ours are
# named 'stages.<i>.downsample.norm'; mmengine tries longer keys first.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'downsample.norm': dict(decay_mult=1.)}))
val_dataloader = dict(batch_size=2)
test_dataloader = dict(batch_size=1)
