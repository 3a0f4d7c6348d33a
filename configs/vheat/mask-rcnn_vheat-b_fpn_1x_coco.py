# Mask R-CNN + FPN with a vHeat-B backbone, COCO 1x: the vHeat-T 1x recipe
# with drop path 0.5.
_base_ = './mask-rcnn_vheat-t_fpn_1x_coco.py'

# ImageNet weights converted and enlarged to the 512 grid:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_base.pth \
#       checkpoints/vheat-base_in1k-512.pth --tg-size 512
checkpoint = 'checkpoints/vheat-base_in1k-512.pth'

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
