# Copyright (c) mmvheat contributors. All rights reserved.
"""What the tools are made of: train and test for any of the three
libraries, and a config's model for analysis and export."""
from .arguments import (add_model_args, checkpoint_arg, parse_test_args,
                        parse_train_args, test_parser, train_parser)
from .configs import (ConfigError, load_config, merge_common_args, read_config,
                      setup_test_cfg, setup_train_cfg)
from .distributed import setup_cpu_distributed, shutdown_distributed
from .hub import register_mmpretrain_models
from .inference import (ImageInferencer, InferenceError, collect_images,
                        inference, run_inference)
from .libraries import (LIBRARIES, build_runner, detect_library,
                        register_library)
from .model import (CheckpointMismatchError, TensorModeWrapper, build_model,
                    fit_state_dict, load_weights, unwrap_model)
from .runner_utils import run_cli, test, train

__all__ = [
    'LIBRARIES', 'detect_library', 'register_library', 'train_parser',
    'test_parser', 'parse_train_args', 'parse_test_args', 'ConfigError',
    'read_config', 'load_config', 'merge_common_args', 'setup_train_cfg',
    'setup_test_cfg', 'setup_cpu_distributed', 'shutdown_distributed',
    'build_runner', 'train', 'test', 'run_cli', 'build_model', 'load_weights',
    'fit_state_dict', 'unwrap_model', 'TensorModeWrapper',
    'CheckpointMismatchError', 'add_model_args', 'checkpoint_arg',
    'ImageInferencer', 'InferenceError', 'collect_images', 'run_inference',
    'inference', 'register_mmpretrain_models'
]
