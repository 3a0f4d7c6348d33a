# Mask R-CNN + FPN with a vHeat-T backbone, COCO 3x: mmdet's Swin-T 3x recipe
# (36 epochs, steps 27/33, DETR-style multi-scale resize/crop, AdamW lr 1e-4,
# wd 0.05, 2 images x 8 GPUs) with the backbone swapped, drop path 0.2.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
    './mask-rcnn_tta.py'
]

# Made as in mask-rcnn_vheat-t_fpn_1x_coco.py.
checkpoint = 'checkpoints/vheat-tiny_in1k-512.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.VHeat',
        arch='tiny',
        img_size=512,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))
