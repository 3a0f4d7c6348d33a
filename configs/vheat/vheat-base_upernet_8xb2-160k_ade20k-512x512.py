# UperNet with a vHeat-B backbone on ADE20K: the vHeat-T 160k recipe with
# drop path 0.5.
_base_ = './vheat-tiny_upernet_8xb2-160k_ade20k-512x512.py'

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
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
