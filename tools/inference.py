# Copyright (c) mmvheat contributors. All rights reserved.
"""Predict image files with an mmpretrain, mmdet or mmseg config; the
config's default_scope says which library:

    python tools/inference.py CONFIG CHECKPOINT INPUTS... --out-dir DIR
        [--device cpu] [--score-thr 0.3] [--batch-size 1] [--non-strict]
        [--trust-checkpoint]

INPUTS are image files and folders (searched recursively). DIR/vis holds
the drawn predictions, DIR/preds one JSON per image (and the label maps of
segmentation models). A bad input ends it with one line and exit status 1.
See mmvheat/apis/inference.py.
"""
import os.path as osp
import sys

try:
    import mmvheat  # noqa: F401  (first: before mmpretrain, torchvision)
except ImportError:  # not installed: this checkout
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import mmvheat  # noqa: F401

from mmvheat.apis.inference import inference  # noqa: E402
from mmvheat.utils.io import run_tool  # noqa: E402


def predict(argv=None):
    """Predict as ``argv`` says; returns the summary line."""
    result = inference(argv)
    out_dir = result['out_dir']
    return [
        f'{len(result["images"])} images ({result["library"]}): drawings '
        f'in {osp.join(out_dir, "vis")}, predictions in '
        f'{osp.join(out_dir, "preds")}'
    ]


def main(argv=None):
    return run_tool(lambda: predict(argv))


if __name__ == '__main__':
    sys.exit(main())
