# Copyright (c) mmvheat contributors. All rights reserved.
"""The package's ``.mim`` folder: linked in a checkout, rebuilt by setup.py
when the links are lost, copied into a wheel; a wheel installed into a fresh
virtual environment (no source tree) resolves ``mmvheat::`` configs."""
import os
import os.path as osp
import runpy
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MIM_FILES = ('configs', 'tools', 'model-index.yml')
# What a build needs from the repository.
SOURCE = ('setup.py', 'pyproject.toml', 'MANIFEST.in', 'README.md',
          'model-index.yml', 'requirements.txt', 'requirements', 'mmvheat',
          'configs', 'tools')
BASE = 'vheat/vheat-tiny_upernet_8xb2-160k_ade20k-512x512.py'


def _copy_source(dest):
    os.makedirs(dest)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', 'build',
                                    '*.egg-info', 'work_dirs')
    for name in SOURCE:
        src = osp.join(ROOT, name)
        if osp.isdir(src):
            # symlinks=True: .mim keeps its links, as in a git checkout.
            shutil.copytree(
                src, osp.join(dest, name), symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, osp.join(dest, name))
    return dest


def _run(cmd, cwd, env=None, timeout=300):
    result = subprocess.run(
        cmd,
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout)
    assert result.returncode == 0, \
        f'{" ".join(map(str, cmd))}\n{result.stdout[-3000:]}' \
        f'\n{result.stderr[-3000:]}'
    return result.stdout


def test_setup_restores_lost_mim_links(tmp_path):
    src = _copy_source(str(tmp_path / 'src'))
    mim_dir = osp.join(src, 'mmvheat', '.mim')
    # As a checkout without symlink support leaves them: small text files.
    shutil.rmtree(mim_dir)
    os.makedirs(mim_dir)
    with open(osp.join(mim_dir, 'configs'), 'w') as f:
        f.write('../../configs')
    runpy.run_path(
        osp.join(src, 'setup.py'), run_name='not_main')['add_mim_extension']()
    for name in MIM_FILES:
        link = osp.join(mim_dir, name)
        assert osp.islink(link), name
        assert not osp.isabs(os.readlink(link))  # moves with the tree
        assert osp.samefile(link, osp.join(src, name))


def test_wheel_in_a_fresh_venv_resolves_mmvheat_configs(tmp_path):
    src = _copy_source(str(tmp_path / 'src'))
    dist = tmp_path / 'dist'
    _run([
        sys.executable, '-m', 'pip', 'wheel', '--no-deps',
        '--no-build-isolation', '--no-index', src, '-w',
        str(dist)
    ], tmp_path)
    wheels = list(dist.glob('mmvheat-*.whl'))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    for rel in ('model-index.yml', 'configs/vheat/metafile.yml',
                'configs/mpvit/metafile.yml', f'configs/{BASE}',
                'configs/vheat/mask-rcnn_tta.py', 'tools/train.py',
                'tools/slurm_train.sh'):
        assert f'mmvheat/.mim/{rel}' in names, rel
    assert not any(
        n.startswith(('configs/', 'tools/', 'tests/')) for n in names)

    # Nothing of this checkout on the path: no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    venv = tmp_path / 'venv'
    _run([sys.executable, '-m', 'venv', '--without-pip',
          str(venv)], tmp_path, env)
    python = str(venv / 'bin' / 'python')
    venv_site = _run([
        python, '-c', 'import sysconfig; '
        "print(sysconfig.get_paths()['purelib'])"
    ], tmp_path, env).strip()
    _run([
        sys.executable, '-m', 'pip', '--python', python, 'install',
        '--no-deps', '--no-index',
        str(wheels[0])
    ], tmp_path, env)
    # Then the heavy requirements (torch, mmengine, mmdet, ...) come from
    # this environment, after the venv's own site-packages (pip would have
    # seen the mmvheat installed there and skipped the wheel). A .pth line
    # adds the folder without running its .pth files, so that mmvheat's
    # editable finder stays off the path.
    with open(osp.join(venv_site, 'zz_requirements.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')

    project = tmp_path / 'project'
    project.mkdir()
    (project / 'my_config.py').write_text(
        f"_base_ = 'mmvheat::{BASE}'\n"
        'model = dict(backbone=dict(init_cfg=None))\n')
    out = _run([
        python, '-c',
        textwrap.dedent("""
        import mmvheat
        from mmengine.config import Config
        cfg = Config.fromfile('my_config.py')
        print('MMVHEAT', mmvheat.__file__)
        print('BACKBONE', cfg.model.backbone.type)
        print(cfg.text)
        """)
    ],
               project,
               env=env)
    package = osp.join(venv_site, 'mmvheat')
    assert f'MMVHEAT {osp.join(package, "__init__.py")}' in out, out[:2000]
    assert 'BACKBONE mmvheat.VHeat' in out
    # The base came from the installed copy, a plain file.
    base = osp.join(package, '.mim', 'configs', BASE)
    assert base in out
    assert osp.isfile(base) and not osp.islink(osp.dirname(osp.dirname(base)))
    # What `mim train/test/run mmvheat ...` runs (openmim 0.3.9 finds a
    # package at its distribution's location plus the package's name and
    # runs the scripts of its .mim/tools), found the same way, without
    # openmim (see the README for why it is not a test requirement).
    found = _run([
        python, '-c',
        textwrap.dedent("""
        from importlib.metadata import distribution
        print(distribution('mmvheat').locate_file('mmvheat'))
        """)
    ], project, env).strip()
    assert osp.samefile(found, package)
    for tool in ('train.py', 'test.py', 'inference.py'):
        script = osp.join(found, '.mim', 'tools', tool)
        assert osp.isfile(script) and not osp.islink(script), tool
    help_text = _run(
        [python,
         osp.join(found, '.mim', 'tools', 'train.py'), '--help'], project, env)
    assert 'usage: train.py' in help_text
