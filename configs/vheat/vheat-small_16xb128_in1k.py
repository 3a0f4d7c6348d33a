# vHeat-S on ImageNet-1K: the vHeat-T recipe with drop path 0.3.
_base_ = './vheat-tiny_16xb128_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3))
