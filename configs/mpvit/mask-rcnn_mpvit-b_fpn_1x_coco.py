# Mask R-CNN + FPN with an MPViT-B backbone, COCO 1x: the MPViT-T
# 1x recipe with the published drop path 0.4.
_base_ = './mask-rcnn_mpvit-t_fpn_1x_coco.py'

# ImageNet weights converted from the published checkpoint:
#   python tools/model_converters/mpvit_to_mmvheat.py mpvit_base.pth \
#       checkpoints/mpvit-base_in1k_mmvheat.pth
checkpoint = 'checkpoints/mpvit-base_in1k_mmvheat.pth'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.4,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[224, 368, 480, 480]))  # (C1, C2, C3, C3)
