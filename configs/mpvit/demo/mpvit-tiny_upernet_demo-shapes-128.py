# MPViT-T UperNet trained from scratch on the generated ADE20K-format shapes
# dataset (tools/dataset_converters/make_demo_data.py): the vHeat-T demo
# (narrow heads, BN, 500 iterations of 4 images, a pipeline that keeps the
# shapes whole) with the backbone swapped. BN instead of SyncBN so that it
# also runs as one or several CPU processes.
_base_ = ['../../vheat/demo/vheat-tiny_upernet_demo-shapes-128.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.MPViT',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=None),
    # (C1, C2, C3, C3); the auxiliary head on C3.
    decode_head=dict(in_channels=[96, 176, 216, 216]),
    auxiliary_head=dict(in_channels=216))
