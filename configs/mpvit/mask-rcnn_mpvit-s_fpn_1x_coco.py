# Mask R-CNN + FPN with an MPViT-S backbone, COCO 1x: the MPViT-T
# 1x recipe with the published drop path 0.2.
_base_ = './mask-rcnn_mpvit-t_fpn_1x_coco.py'

# ImageNet weights converted from the published checkpoint:
#   python tools/model_converters/mpvit_to_mmvheat.py mpvit_small.pth \
#       checkpoints/mpvit-small_in1k_mmvheat.pth
checkpoint = 'checkpoints/mpvit-small_in1k_mmvheat.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[128, 216, 288, 288]))  # (C1, C2, C3, C3)
