# UperNet with a vHeat-S backbone on ADE20K: the vHeat-T 160k recipe with
# drop path 0.4.
_base_ = './vheat-tiny_upernet_8xb2-160k_ade20k-512x512.py'

# ImageNet weights converted and enlarged to the 512 grid:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_small.pth \
#       checkpoints/vheat-small_in1k-512.pth --tg-size 512
checkpoint = 'checkpoints/vheat-small_in1k-512.pth'

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.4,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')))
