# Copyright (c) mmvheat contributors. All rights reserved.
from .io import (ByteProgress, OutputWriteError, ToolError, UsageError,
                 atomic_write, check_output_is_not_input, ensure_directory,
                 first_line, positive_int, run_tool, save_checkpoint_atomic)
from .setup_env import register_all_modules

__all__ = [
    'atomic_write', 'save_checkpoint_atomic', 'check_output_is_not_input',
    'ensure_directory', 'first_line', 'run_tool', 'positive_int',
    'ByteProgress', 'ToolError', 'UsageError', 'OutputWriteError',
    'register_all_modules'
]
