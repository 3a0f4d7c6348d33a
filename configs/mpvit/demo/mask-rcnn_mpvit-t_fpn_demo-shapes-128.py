# MPViT-T Mask R-CNN trained from scratch on the generated COCO-format shapes
# dataset (tools/dataset_converters/make_demo_data.py): the vHeat-T demo
# (narrow heads, small proposal budget, its schedule) with the backbone
# swapped. BN instead of SyncBN so that it also runs on the CPU.
_base_ = ['../../vheat/demo/mask-rcnn_vheat-t_fpn_demo-shapes-128.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.MPViT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=None),
    neck=dict(in_channels=[96, 176, 216, 216]))  # (C1, C2, C3, C3)
