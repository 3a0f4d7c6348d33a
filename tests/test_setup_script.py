# Copyright (c) mmvheat contributors. All rights reserved.
"""Checks of the packaging files and set-up scripts that need no network."""
import os
import os.path as osp
import runpy
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPTS = [
    'tools/setup_env.sh', 'tools/run_tests.sh', 'tools/demo.sh',
    'tools/env_common.sh', '.ci/run'
]


def _setup_module():
    return runpy.run_path(osp.join(ROOT, 'setup.py'), run_name='not_main')


def test_version_read_without_import():
    version = runpy.run_path(osp.join(ROOT, 'mmvheat', 'version.py'))
    setup = _setup_module()
    assert setup['get_version']() == version['__version__']
    assert version['version_info'][:3] == tuple(
        int(x) for x in version['__version__'].split('.')[:3])


def test_parse_requirements():
    parse = _setup_module()['parse_requirements']
    runtime = parse('requirements/runtime.txt')
    assert 'torch' in runtime
    assert any(r.startswith('mmengine') for r in runtime)
    mminstall = parse('requirements/mminstall.txt')
    assert 'mmcv>=2.0.0,<2.2.0' in mminstall
    # requirements.txt pulls in every file through -r lines, no duplicates.
    everything = parse('requirements.txt')
    assert len(everything) == len(set(everything))
    for req in runtime + mminstall + parse('requirements/tests.txt') + \
            parse('requirements/optional.txt'):
        assert req in everything
    assert not any(r.startswith('-') for r in everything)


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse(script):
    subprocess.run(['bash', '-n', osp.join(ROOT, script)], check=True)


def test_setup_env_help_and_bad_args():
    script = osp.join(ROOT, 'tools', 'setup_env.sh')
    out = subprocess.run(['bash', script, '--help'],
                         check=True,
                         capture_output=True,
                         text=True).stdout
    assert '--find-links' in out
    bad = subprocess.run(['bash', script, '--no-such-option'],
                         capture_output=True,
                         text=True)
    assert bad.returncode != 0
    missing = subprocess.run(
        ['bash', script, '--find-links',
         osp.join(ROOT, 'no', 'such', 'dir')],
        capture_output=True,
        text=True)
    assert missing.returncode != 0
    assert 'wheel folder not found' in missing.stderr


def test_lint_reports_and_fixes(tmp_path):
    """tools/lint.sh fails on code against the settings in setup.cfg, and
    its --fix makes the formatting pass."""
    lint = osp.join(ROOT, 'tools', 'lint.sh')
    env = dict(os.environ, PYTHON=sys.executable)
    bad = tmp_path / 'bad.py'
    bad.write_text('import sys\nimport os\nx = {  "a":1 }\n')
    check = subprocess.run(['bash', lint, str(bad)],
                           capture_output=True,
                           text=True,
                           env=env)
    assert check.returncode != 0
    assert 'F401' in check.stdout  # flake8: unused imports
    assert '+import os' in check.stdout  # isort's diff
    subprocess.run(['bash', lint, '--fix', str(bad)],
                   capture_output=True,
                   env=env)
    assert bad.read_text() == 'import os\nimport sys\n\nx = {"a": 1}\n'
