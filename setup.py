# Copyright (c) mmvheat contributors. All rights reserved.
import os
import os.path as osp
import shutil
import warnings
from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))
#: What OpenMMLab packages carry in ``<package>/.mim`` for ``pkg::`` config
#: paths and MIM; see mmvheat/mim.py.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def readme():
    path = osp.join(HERE, 'README.md')
    if not osp.exists(path):
        return ''
    with open(path, encoding='utf-8') as f:
        return f.read()


def get_version():
    """Read ``__version__`` from mmvheat/version.py without importing the
    package (which needs torch and the OpenMMLab libraries)."""
    namespace = {}
    with open(osp.join(HERE, 'mmvheat', 'version.py'), encoding='utf-8') as f:
        exec(compile(f.read(), 'mmvheat/version.py', 'exec'), namespace)
    return namespace['__version__']


def parse_requirements(fname):
    """Return the requirements listed in ``fname``.

    Blank lines and comments are skipped, ``-r other.txt`` lines are followed
    (relative to the including file), pip options such as ``--find-links``
    are ignored and environment markers (``pkg; platform_system == "Linux"``)
    are kept as they are, since setuptools understands them.
    """
    path = osp.join(HERE, fname)
    requirements = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            if line.startswith(('-r ', '--requirement ')):
                included = line.split(None, 1)[1].strip()
                requirements += parse_requirements(
                    osp.relpath(osp.join(osp.dirname(path), included), HERE))
            elif line.startswith('-'):
                continue
            elif line not in requirements:
                requirements.append(line)
    return requirements


def add_mim_extension():
    """Make ``mmvheat/.mim/{configs,tools,model-index.yml}`` the
    repository's ones, as OpenMMLab packages do.

    The repository holds them as relative links, so a checkout and an
    editable install read the configs being edited; building a wheel or an
    sdist copies the linked files (MANIFEST.in lists them). A checkout that
    lost the links (an archive without symlinks, Windows without symlink
    rights) gets them back, or copies where links cannot be made.
    """
    mim_dir = osp.join(HERE, 'mmvheat', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        source = osp.join(HERE, name)
        target = osp.join(mim_dir, name)
        if osp.realpath(target) == osp.realpath(source):
            continue
        if osp.islink(target) or osp.isfile(target):
            os.remove(target)
        elif osp.isdir(target):
            shutil.rmtree(target)
        try:
            os.symlink(osp.relpath(source, mim_dir), target)
        except OSError:
            warnings.warn(f'cannot link {target} to {source}: copied it; '
                          'run setup.py again after editing it')
            if osp.isdir(source):
                shutil.copytree(source, target)
            else:
                shutil.copyfile(source, target)


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmvheat',
        version=get_version(),
        description='vHeat (visual heat conduction) backbones for '
        'OpenMMLab: mmpretrain, mmdetection and mmsegmentation',
        long_description=readme(),
        long_description_content_type='text/markdown',
        keywords='computer vision, backbone, vHeat, OpenMMLab',
        # The demo stays in the repository, as mmpretrain's demo/ does.
        packages=find_packages(
            exclude=('configs', 'tools', 'tests', 'demo', 'demo.*')),
        include_package_data=True,
        classifiers=[
            'Operating System :: OS Independent',
            'Programming Language :: Python :: 3',
            'Programming Language :: Python :: 3.8',
            'Programming Language :: Python :: 3.9',
            'Programming Language :: Python :: 3.10',
            'Programming Language :: Python :: 3.11',
            'Programming Language :: Python :: 3.12',
        ],
        python_requires='>=3.8',
        install_requires=parse_requirements('requirements/runtime.txt'),
        extras_require={
            'all': parse_requirements('requirements.txt'),
            'tests': parse_requirements('requirements/tests.txt'),
            'mim': parse_requirements('requirements/mminstall.txt'),
            'mminstall': parse_requirements('requirements/mminstall.txt'),
            'optional': parse_requirements('requirements/optional.txt'),
        },
        zip_safe=False)
