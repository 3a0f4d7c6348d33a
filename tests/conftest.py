# Copyright (c) mmvheat contributors. All rights reserved.
import os.path as osp

import pytest

# Imported first: it prepares torch.load and torchvision for the libraries.
import mmvheat  # noqa: F401

PROJECT_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
REFERENCE_DIR = osp.join(osp.dirname(PROJECT_ROOT), 'shared', 'reference')


@pytest.fixture(scope='session')
def reference_dir():
    """``../shared/reference``: fixtures from the published implementations."""
    if not osp.isdir(REFERENCE_DIR):
        pytest.skip(f'reference fixtures not found at {REFERENCE_DIR}')
    return REFERENCE_DIR


@pytest.fixture(scope='session')
def project_root():
    return PROJECT_ROOT
