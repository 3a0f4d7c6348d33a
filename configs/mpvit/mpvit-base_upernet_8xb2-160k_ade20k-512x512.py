# UperNet with an MPViT-B backbone on ADE20K: the MPViT-S recipe with the
# published drop path 0.4 for B.
_base_ = './mpvit-small_upernet_8xb2-160k_ade20k-512x512.py'

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
    decode_head=dict(in_channels=[224, 368, 480, 480]),  # (C1, C2, C3, C3)
    auxiliary_head=dict(in_channels=480))
