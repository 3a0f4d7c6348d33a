# Mask R-CNN + FPN with a vHeat-S backbone, COCO 1x: the vHeat-T 1x recipe
# with drop path 0.3.
_base_ = './mask-rcnn_vheat-t_fpn_1x_coco.py'

# ImageNet weights converted and enlarged to the 512 grid:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_small.pth \
#       checkpoints/vheat-small_in1k-512.pth --tg-size 512
checkpoint = 'checkpoints/vheat-small_in1k-512.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')))
