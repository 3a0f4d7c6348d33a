# Mask R-CNN + FPN with a vHeat-S backbone, COCO multi-scale 3x: the vHeat-T
# 3x recipe with drop path 0.4 and, as published for S, the backbone at 512.
_base_ = './mask-rcnn_vheat-t_fpn_ms-crop-3x_coco.py'

# Made as in mask-rcnn_vheat-s_fpn_1x_coco.py.
checkpoint = 'checkpoints/vheat-small_in1k-512.pth'

model = dict(
    backbone=dict(
        arch='small',
        img_size=512,
        drop_path_rate=0.4,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')))
