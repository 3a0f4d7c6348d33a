# UperNet with an MPViT-B backbone on ADE20K, the published recipe: mmseg's
# Swin-T 160k recipe (AdamW lr 6e-5, wd 0.01, no decay on norms, 1500-iter
# linear warm-up then poly, 2 images x 8 GPUs, crop 512, 150 classes,
# SyncBN in the heads) with the backbone swapped: SyncBN in the backbone
# too, drop path 0.4 (published: 0.2 for S, 0.4 for B). Decode head on the
# four outputs (C1, C2, C3, C3), auxiliary head on C3 (index 2).
# ``--tta``: mmseg's ADE20K multi-scale (0.5 to 1.75) + flip pipeline and
# SegTTAModel, inherited.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa

# ImageNet weights converted from the published checkpoint (mmpretrain
# layout, backbone.* + head.fc.*; loaded here with prefix 'backbone.'):
#   python tools/model_converters/mpvit_to_mmvheat.py mpvit_base.pth \
#       checkpoints/mpvit-base_in1k_mmvheat.pth
checkpoint = 'checkpoints/mpvit-base_in1k_mmvheat.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.MPViT',
        arch='base',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    decode_head=dict(in_channels=[224, 368, 480, 480], num_classes=150),
    auxiliary_head=dict(in_channels=480, in_index=2, num_classes=150))
