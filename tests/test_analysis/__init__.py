# Copyright (c) mmvheat contributors. All rights reserved.
import importlib.util
import os.path as osp

TOOLS = osp.join(osp.dirname(__file__), '..', '..', 'tools', 'analysis_tools')


def analysis_tool(name: str):
    """``tools/analysis_tools/{name}.py``, loaded as a fresh module."""
    spec = importlib.util.spec_from_file_location(
        f'tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
