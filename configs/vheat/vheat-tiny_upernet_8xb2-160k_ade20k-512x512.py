# UperNet with a vHeat-T backbone on ADE20K, the published recipe: mmseg's
# Swin-T 160k config (AdamW lr 6e-5, wd 0.01, 1500-iter warm-up then poly,
# 2 images x 8 GPUs, crop 512, 150 classes, evaluation and checkpoints every
# 16k) with the backbone swapped, drop path 0.3, and the published
# sliding-window test (crop 512, stride 341). ``--tta``: mmseg's ADE20K
# multi-scale (0.5 to 1.75) + flip pipeline and SegTTAModel, inherited.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa

# ImageNet weights converted and enlarged to the 512 grid:
#   python tools/model_converters/vheat_to_mmvheat.py vHeat_tiny.pth \
#       checkpoints/vheat-tiny_in1k-512.pth --tg-size 512
checkpoint = 'checkpoints/vheat-tiny_in1k-512.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvheat.VHeat',
        arch='tiny',
        img_size=512,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

# The published 'norm' rule (decay_mult 0) misses the downsample LayerNorms,
# named by index there ('layers.<i>.<depth>.1'), so they decay. Ours are
# named 'stages.<i>.downsample.norm'; mmengine tries longer keys first.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'downsample.norm': dict(decay_mult=1.)}))
