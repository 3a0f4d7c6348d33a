# Mask R-CNN + FPN with a vHeat-T backbone, COCO multi-scale 3x, the
# published recipe: mmdet's Swin-T 3x config (36 epochs, steps 27/33,
# DETR-style multi-scale resize/crop, AdamW lr 1e-4, wd 0.05, 2 images x 8
# GPUs) with the backbone swapped, drop path 0.2, and the optimizer and
# batch settings of mask-rcnn_vheat-t_fpn_1x_coco.py. The published config
# sets no img_size, so its backbone is built at the default 224 and loads
# the ImageNet checkpoint as it is (freq_embed resampled to each input at
# run time).
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    './mask-rcnn_tta.py'
]

# ImageNet weights converted, not enlarged:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_tiny.pth \
#       checkpoints/vheat-tiny_in1k.pth
checkpoint = 'checkpoints/vheat-tiny_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.VHeat',
        arch='tiny',
        img_size=224,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# As in mask-rcnn_vheat-t_fpn_1x_coco.py: the downsample norms decay.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'downsample.norm': dict(decay_mult=1.)}))
val_dataloader = dict(batch_size=2)
test_dataloader = dict(batch_size=1)
