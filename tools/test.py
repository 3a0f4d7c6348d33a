# Copyright (c) mmvheat contributors. All rights reserved.
"""Test (and evaluate) an mmpretrain, mmdet or mmseg model; the config's
default_scope says which library. Flags as the libraries' own tools/test.py:

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
        [--show] [--show-dir DIR] [--wait-time S] [--tta]
        [--cfg-options K=V ...] [--launcher pytorch] [--non-strict]
        [--trust-checkpoint]

See mmvheat/apis/runner_utils.py.
"""
import sys

from mmvheat.apis import run_cli, test


def main(argv=None):
    return run_cli(test, argv)


if __name__ == '__main__':
    sys.exit(main())
