# Copyright (c) mmvheat contributors. All rights reserved.
"""Train an mmpretrain, mmdet or mmseg model; the config's default_scope
says which library. Flags as the libraries' own tools/train.py:

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--amp-dtype float16|bfloat16] [--auto-scale-lr]
        [--cfg-options K=V ...] [--launcher pytorch]

See mmvheat/apis/runner_utils.py.
"""
from mmvheat.apis import run_cli, train

if __name__ == '__main__':
    run_cli(train)
