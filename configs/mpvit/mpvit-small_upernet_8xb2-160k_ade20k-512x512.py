# UperNet with an MPViT-S backbone on ADE20K: the published recipe (mmseg
# 0.x) on mmseg's Swin-T 160k config (AdamW lr 6e-5, wd 0.01, 160k
# iterations of 2 images x 8 GPUs, crop 512, 150 classes, SyncBN in the
# heads, evaluation every 16k, whole-image test). Where the published recipe
# differs from that config: weight decay on every parameter (no
# paramwise_cfg); poly decay from iteration 0, scaled during the first 1500
# iterations by a linear warm-up from ratio 1e-6 (mmcv 1.x under mmseg
# 0.x); SyncBN in the backbone; drop path 0.2 (S), 0.4 (B). Decode head on
# the four outputs (C1, C2, C3, C3), auxiliary head on C3 (index 2).
# ``--tta`` (mmseg's ADE20K multi-scale 0.5 to 1.75 + flip pipeline and
# SegTTAModel, inherited) is this project's addition.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa

# ImageNet weights converted from the published checkpoint (mmpretrain
# layout, backbone.* + head.fc.*; loaded here with prefix 'backbone.'):
#   python tools/model_converters/mpvit_to_mmvheat.py mpvit_small.pth \
#       checkpoints/mpvit-small_in1k_mmvheat.pth
checkpoint = 'checkpoints/mpvit-small_in1k_mmvheat.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.MPViT',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    decode_head=dict(in_channels=[128, 216, 288, 288], num_classes=150),
    auxiliary_head=dict(in_channels=288, in_index=2, num_classes=150))

optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
# lr(t) = 6e-5 * (1 - t / 160000) * (1 - (1 - t / 1500) * (1 - 1e-6)) for
# t < 1500, then without the last factor. mmengine multiplies the factors of
# schedulers active at the same step, so the two overlap; they reach their
# end values at step end - 1, hence end=1501 and end=160001.
param_scheduler = [
    dict(
        _scope_='mmseg',
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=False,
        begin=0,
        end=1501),
    dict(
        _scope_='mmseg',
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=0,
        end=160001,
        by_epoch=False)
]
