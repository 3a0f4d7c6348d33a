# Mask R-CNN + FPN with an MPViT-XS backbone, COCO multi-scale 3x: the MPViT-T
# multi-scale 3x recipe with the published drop path 0.1.
_base_ = './mask-rcnn_mpvit-t_fpn_ms-crop-3x_coco.py'

# ImageNet weights converted from the published checkpoint:
#   python tools/model_converters/mpvit_to_mmvheat.py mpvit_xsmall.pth \
#       checkpoints/mpvit-xsmall_in1k_mmvheat.pth
checkpoint = 'checkpoints/mpvit-xsmall_in1k_mmvheat.pth'

model = dict(
    backbone=dict(
        arch='xsmall',
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[128, 192, 256, 256]))  # (C1, C2, C3, C3)
