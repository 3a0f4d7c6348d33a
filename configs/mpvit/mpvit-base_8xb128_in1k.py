# MPViT-B on ImageNet-1K: the MPViT-T DeiT recipe with DeiT's drop path 0.1
# (a choice, see mpvit-tiny_8xb128_in1k.py).
_base_ = './mpvit-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.1), head=dict(in_channels=480))
