# Copyright (c) mmvheat contributors. All rights reserved.
"""Train an mmpretrain, mmdet or mmseg model; the config's default_scope
says which library. Flags as the libraries' own tools/train.py:

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--amp-dtype float16|bfloat16] [--auto-scale-lr]
        [--cfg-options K=V ...] [--launcher pytorch] [--trust-checkpoint]

See mmvheat/apis/runner_utils.py.
"""
import sys

from mmvheat.apis import run_cli, train


def main(argv=None):
    return run_cli(train, argv)


if __name__ == '__main__':
    sys.exit(main())
