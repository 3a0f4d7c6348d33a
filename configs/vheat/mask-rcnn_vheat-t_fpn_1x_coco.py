# Mask R-CNN + FPN with a vHeat-T backbone, COCO 1x: mmdet's Swin-T 1x recipe
# (AdamW lr 1e-4, wd 0.05, 12 epochs, steps 8/11, 1000-iter warm-up,
# 2 images x 8 GPUs) with the backbone swapped, plus flip and multi-scale
# test-time augmentation.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './mask-rcnn_tta.py'
]

# ImageNet weights converted and enlarged to the 512 grid:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_tiny.pth \
#       checkpoints/vheat-tiny_in1k.pth
#   python tools/interpolate4downstream.py \
#       --pt_pth checkpoints/vheat-tiny_in1k.pth \
#       --tg_pth checkpoints/vheat-tiny_in1k-512.pth --tg_size 512
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
