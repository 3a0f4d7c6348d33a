# vHeat-B on ImageNet-1K: the vHeat-T recipe with drop path 0.5.
_base_ = './vheat-tiny_16xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5),
    head=dict(in_channels=1024))
