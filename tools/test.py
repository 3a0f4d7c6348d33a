# Copyright (c) mmvheat contributors. All rights reserved.
"""Test (and evaluate) an mmpretrain, mmdet or mmseg model; the config's
default_scope says which library. Flags as the libraries' own tools/test.py:

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
        [--show] [--show-dir DIR] [--wait-time S] [--tta]
        [--cfg-options K=V ...] [--launcher pytorch]

See mmvheat/apis/runner_utils.py.
"""
from mmvheat.apis import run_cli, test

if __name__ == '__main__':
    run_cli(test)
