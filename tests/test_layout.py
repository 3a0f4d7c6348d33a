# Copyright (c) mmvheat contributors. All rights reserved.
"""The rooms of the package and the direction of their imports, as the
README's "Project layout" draws them: each room imports only rooms below it,
and the backbones and the operator need torch and mmengine alone."""
import ast
import os
import os.path as osp
import subprocess
import sys
import textwrap

import mmvheat

PACKAGE_DIR = osp.dirname(mmvheat.__file__)
#: The rooms, bottom up: a module may import its own room and rooms below
#: (``mim`` is the ``mmvheat::`` config prefix, ``converters`` the
#: checkpoint conversion).
ROOMS = [
    'version', 'mim', 'utils', 'ops', 'registry', 'models', 'engine', 'apis',
    'converters', 'analysis'
]


def _modules():
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith('.py'):
                path = osp.join(root, name)
                rel = osp.relpath(path, osp.dirname(PACKAGE_DIR))[:-3]
                parts = rel.split(os.sep)
                if parts[-1] == '__init__':
                    parts = parts[:-1]
                yield '.'.join(parts), path


def _imports(module, path):
    """Every mmvheat module ``module`` imports, deferred imports included."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    package = module if path.endswith('__init__.py') else \
        module.rsplit('.', 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base +
                                  ([node.module] if node.module else []))
            else:
                target = node.module
            yield target
            # ``from . import x`` / ``from mmvheat import x``: modules too.
            yield from (f'{target}.{alias.name}' for alias in node.names)


def _room(module):
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None


def test_every_room_is_known():
    rooms = {_room(m) for m, _ in _modules()} - {None}
    assert rooms <= set(ROOMS), rooms - set(ROOMS)


def test_no_room_imports_a_room_above_it():
    wrong = []
    for module, path in _modules():
        room = _room(module)
        if room is None:  # mmvheat/__init__.py puts the package together
            continue
        for target in set(_imports(module, path)):
            other = _room(target) if target.startswith('mmvheat.') else None
            if other not in ROOMS:
                continue
            if ROOMS.index(other) > ROOMS.index(room):
                wrong.append(f'{module} imports {target}')
    assert not wrong, '\n'.join(sorted(wrong))


def test_the_check_sees_a_wrong_import(tmp_path):
    """The parser finds deferred and relative imports."""
    path = tmp_path / 'vheat.py'
    path.write_text(
        textwrap.dedent('''
        from ..layers import DropPath

        def f():
            from mmvheat.apis import build_model
            from ... import engine
        '''))
    found = set(_imports('mmvheat.models.backbones.vheat', str(path)))
    assert {'mmvheat.models.layers', 'mmvheat.apis', 'mmvheat.engine'} <= found


# Run in a fresh interpreter in which these packages cannot be imported.
_BARE = '''
import importlib.abc, sys
BLOCKED = ('mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'matplotlib')

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is blocked')

sys.meta_path.insert(0, Block())
'''

_USE_VHEAT = '''
import sys
import torch
import mmvheat, mmvheat.analysis, mmvheat.apis
import mmvheat.analysis.benchmark
from mmvheat.models import VHeat
model = VHeat(arch=dict(depths=[1, 1, 2, 1], dims=8, post_norm=False,
                        layer_scale=None, mlp_ratio=2.),
              img_size=64).eval()
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    plain = model(x)[0]
    model.switch_to_deploy()
    fast = model(x)[0]
assert (fast - plain).abs().max() < 1e-4
loaded = sorted(m for m in sys.modules if m.split('.')[0] in (
    'mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'matplotlib'))
print('loaded:', loaded)
'''

_USE_GPU_REPORT = '''
import runpy, sys
from mmvheat.analysis import benchmark
print(benchmark.swin_unavailable())
print(benchmark.write_figure([], 'unused.png', ''))
sys.argv = ['gpu_report.py', '--help']
try:
    runpy.run_path(TOOL, run_name='__main__')
except SystemExit as e:
    assert e.code == 0, e.code
loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
print('loaded:', loaded)
'''

_MMCV_2_2 = '''
import importlib.metadata as metadata
real = metadata.version
metadata.version = lambda name: '2.2.0' if name == 'mmcv' else real(name)
'''


def _python(code):
    return subprocess.Popen([sys.executable, '-c', code],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True)


def test_vheat_runs_with_torch_and_mmengine_alone_or_any_mmcv():
    """``import mmvheat`` and the vHeat backbone need neither mmcv (nor
    mmdet, mmseg, mmpretrain, matplotlib), and an mmcv of a release the
    detection and segmentation integration refuses does not stop them."""
    procs = [_python(_BARE + _USE_VHEAT), _python(_MMCV_2_2 + _USE_VHEAT)]
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
    assert 'loaded: []' in outs[0]


def test_gpu_report_imports_on_a_bare_gpu_box(project_root):
    """The GPU report and its command line import with only torch,
    mmengine, triton and mmvheat: mmcv, mmdet, mmseg, mmpretrain and
    matplotlib are blocked."""
    tool = osp.join(project_root, 'tools', 'analysis_tools', 'gpu_report.py')
    proc = subprocess.run(
        [sys.executable, '-c', _BARE + f'TOOL = {tool!r}\n' + _USE_GPU_REPORT],
        capture_output=True,
        text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    lines = out.splitlines()
    assert lines[0].startswith('Swin-T skipped: mmpretrain cannot be '
                               'imported (ImportError: mmpretrain')
    assert lines[1].startswith('figure skipped: matplotlib cannot be '
                               'imported')
    assert '--max-minutes' in out
    assert lines[-1] == 'loaded: []'


def test_tools_refuse_mmcv_2_2_for_detection(project_root, tmp_path):
    """``tools/train.py`` and ``tools/test.py`` on an mmdet config refuse
    an mmcv 2.2 in one line that says what is needed and how to get it."""
    config = tmp_path / 'det.py'
    config.write_text("default_scope = 'mmdet'\nmodel = dict()\n")
    procs = []
    for argv in (['train.py',
                  str(config)], ['test.py',
                                 str(config), 'unused.pth']):
        argv[0] = osp.join(project_root, 'tools', argv[0])
        procs.append(
            _python(_MMCV_2_2 + f'import runpy, sys\nsys.argv = {argv!r}\n'
                    f'runpy.run_path({argv[0]!r}, run_name="__main__")\n'))
    for proc in procs:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 1, out[-3000:]
        lines = out.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), out
        assert 'mmcv>=2.0.0,<2.2.0' in lines[0] and 'mmcv 2.2.0' in lines[0]
        assert 'tools/setup_env.sh' in lines[0]
