# MPViT-XS on ImageNet-1K: the MPViT-T DeiT recipe, no drop path (a choice,
# see mpvit-tiny_8xb128_in1k.py).
_base_ = './mpvit-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='xsmall', drop_path_rate=0.0),
    head=dict(in_channels=256))
