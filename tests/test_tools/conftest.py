# Copyright (c) mmvheat contributors. All rights reserved.
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture(scope='session')
def run_tools(project_root):
    """Run ``python tools/...`` command lines as a user would, in parallel.

    Each run pays a few seconds for its imports, so a test module starts all
    of its runs at once: ``run_tools({name: [tool, *args]})`` returns
    ``{name: CompletedProcess}`` (text stdout and stderr). ``stderr=`` gives
    one run's stderr a file descriptor of its own (a terminal, say).
    """

    def run_one(argv, stderr):
        return subprocess.run([sys.executable, *map(str, argv)],
                              cwd=project_root,
                              stdout=subprocess.PIPE,
                              stderr=stderr,
                              text=True,
                              timeout=300)

    def run(commands, stderr=None, max_parallel=4):
        streams = stderr or {}
        with ThreadPoolExecutor(
                min(max_parallel,
                    os.cpu_count() or 1, len(commands)) or 1) as pool:
            futures = {
                name:
                pool.submit(run_one, argv, streams.get(name, subprocess.PIPE))
                for name, argv in commands.items()
            }
            return {name: future.result() for name, future in futures.items()}

    return run


@pytest.fixture(scope='session')
def check_cli_error():
    """Assert that a tool failed as a person should see it: the exit
    status, nothing on stdout and exactly one line on stderr, ``error: ``
    and then ``message``."""

    def check(result, status, message):
        assert result.returncode == status, result.stderr
        assert result.stdout == ''
        assert result.stderr.startswith(f'error: {message}'), result.stderr
        assert result.stderr.count('\n') == 1, result.stderr

    return check


@pytest.fixture(scope='session')
def check_backbone_loaded():
    """Assert that a dense backbone loaded from a classification checkpoint
    holds every converted ``backbone.*`` weight, and that only the output
    norms the checkpoint lacks (``norm0``-``norm2``) started afresh."""
    import torch

    def check(model, converted):
        fresh = []
        for name, value in model.state_dict().items():
            if f'backbone.{name}' in converted:
                assert torch.equal(value, converted[f'backbone.{name}']), name
            else:
                fresh.append(name)
        assert sorted(fresh) == [
            f'norm{i}.{p}' for i in range(3) for p in ('bias', 'weight')
        ]

    return check


@pytest.fixture(scope='session')
def tool_main(project_root):
    """Run a tool's ``main(argv)`` in this process, as its command line
    would: ``tool_main('tools/x.py', argv, capsys)`` returns the exit
    status (argparse's too) and what went to stderr."""
    from importlib.util import module_from_spec, spec_from_file_location
    tools = {}

    def run(path, argv, capsys):
        if path not in tools:
            spec = spec_from_file_location(
                os.path.splitext(os.path.basename(path))[0],
                os.path.join(project_root, path))
            tools[path] = module_from_spec(spec)
            spec.loader.exec_module(tools[path])
        capsys.readouterr()
        try:
            status = tools[path].main([str(arg) for arg in argv])
        except SystemExit as exc:  # argparse
            status = exc.code
        return status, capsys.readouterr().err

    return run
