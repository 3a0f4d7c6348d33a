# Copyright (c) mmvheat contributors. All rights reserved.
"""Shared logic of ``tools/train.py`` and ``tools/test.py``."""
from .inference import (ImageInferencer, InferenceError, collect_images,
                        inference, run_inference)
from .runner_utils import (LIBRARIES, build_runner, detect_library,
                           load_config, merge_common_args, parse_test_args,
                           parse_train_args, register_library,
                           setup_cpu_distributed, setup_test_cfg,
                           setup_train_cfg, test, test_parser, train,
                           train_parser)

__all__ = [
    'LIBRARIES', 'detect_library', 'register_library', 'train_parser',
    'test_parser', 'parse_train_args', 'parse_test_args', 'load_config',
    'merge_common_args', 'setup_train_cfg', 'setup_test_cfg',
    'setup_cpu_distributed', 'build_runner', 'train', 'test',
    'ImageInferencer', 'InferenceError', 'collect_images', 'run_inference',
    'inference'
]
