# Copyright (c) mmvheat contributors. All rights reserved.
"""The modules of ``mmvheat.ops`` import each other in one direction only.

Every import between them is read from the source, the deferred ones inside
functions included (they hide cycles from a plain import), and the graph
must have no cycle and follow the layers: the basis and reference path, the
kernels, the dispatcher, the operator.
"""
import ast
import os
import os.path as osp
import subprocess
import sys

import pytest

import mmvheat.ops

OPS_DIR = osp.dirname(mmvheat.ops.__file__)
PACKAGE = 'mmvheat.ops'
# Each module may import only modules of earlier layers.
LAYERS = [{'spectral', 'autotune_cache'}, {'triton_hco'},
          {'dispatch', 'kernel_resources'}, {'heat_conduction'}, {'__init__'}]


def _modules():
    return sorted(name[:-3] for name in os.listdir(OPS_DIR)
                  if name.endswith('.py'))


def _sibling_imports(module: str):
    """The modules of the package that ``module`` imports, anywhere."""
    with open(osp.join(OPS_DIR, module + '.py'), encoding='utf-8') as f:
        tree = ast.parse(f.read())
    siblings = set(_modules())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
            elif node.level == 0 and node.module and \
                    node.module.startswith(PACKAGE + '.'):
                base = node.module[len(PACKAGE) + 1:]
            elif node.level == 0 and node.module == PACKAGE:
                base = None
            else:
                continue
            if base is None:  # from . import x / from mmvheat.ops import x
                found |= {a.name for a in node.names} & siblings
                if node.level == 0:
                    found.add('__init__')
            else:
                found.add(base.split('.')[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + '.'):
                    found.add(alias.name[len(PACKAGE) + 1:].split('.')[0])
                elif alias.name == PACKAGE:
                    found.add('__init__')
    found.discard(module)
    return found


def _layer(module):
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    raise AssertionError(f'{module}.py is in no layer of this test: add it')


def _cycle(graph):
    """A cycle of ``graph`` as a list of nodes, or None."""
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_imports_form_no_cycle_and_follow_the_layers():
    graph = {m: _sibling_imports(m) for m in _modules()}
    assert _cycle(graph) is None, f'import cycle: {_cycle(graph)}'
    for module, imports in graph.items():
        for imported in imports:
            assert _layer(imported) < _layer(module), \
                f'{module} imports {imported}, a module of a later layer'


def test_cycle_detection_sees_deferred_imports(tmp_path, monkeypatch):
    """A control: a deferred import of the dispatcher by the reference
    module (how the cycle used to look) is found."""
    source = osp.join(OPS_DIR, 'spectral.py')
    with open(source, encoding='utf-8') as f:
        text = f.read()
    text += ('\n\ndef _late():\n'
             '    from .dispatch import dispatch_spectral_filter\n'
             '    return dispatch_spectral_filter\n')
    for name in _modules():
        target = tmp_path / f'{name}.py'
        if name == 'spectral':
            target.write_text(text)
        else:
            target.symlink_to(osp.join(OPS_DIR, name + '.py'))
    monkeypatch.setattr(sys.modules[__name__], 'OPS_DIR', str(tmp_path))
    graph = {m: _sibling_imports(m) for m in _modules()}
    assert _cycle(graph) == ['dispatch', 'spectral', 'dispatch']


@pytest.mark.parametrize('module', ['spectral', 'autotune_cache'])
def test_bottom_layer_imports_alone(module):
    """The bottom modules import with every other module of the package
    blocked, in a fresh interpreter."""
    others = [m for m in _modules() if m not in ('__init__', module)]
    code = (
        'import importlib.abc, importlib.util, sys, types\n'
        f'blocked = {{"{PACKAGE}." + m for m in {others!r}}}\n'
        'class Block(importlib.abc.MetaPathFinder):\n'
        '    def find_spec(self, name, path, target=None):\n'
        '        if name in blocked:\n'
        '            raise ImportError(f"blocked: {name}")\n'
        'sys.meta_path.insert(0, Block())\n'
        # Empty package objects: the real __init__ files import everything
        # (mmvheat's its models, which import the operator).
        f'root = types.ModuleType("mmvheat")\n'
        f'root.__path__ = [{osp.dirname(OPS_DIR)!r}]\n'
        f'sys.modules["mmvheat"] = root\n'
        f'package = types.ModuleType("{PACKAGE}")\n'
        f'package.__path__ = [{OPS_DIR!r}]\n'
        f'sys.modules["{PACKAGE}"] = package\n'
        f'importlib.import_module("{PACKAGE}.{module}")\n')
    proc = subprocess.run([sys.executable, '-c', code],
                          capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
