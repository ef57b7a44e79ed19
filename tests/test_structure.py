"""The package's shape: no import circle (lazy imports inside functions
included), no module reaching into another's private names, and export code
in functions a reader can hold (80 lines at most)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'bert_gluon'


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        yield name, path


def _imports(name, path):
    """(module imported, names taken) for every import in the file, nested
    ones included, resolved to bert_gluon.* names."""
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            if base.startswith('bert_gluon'):
                for alias in node.names:  # `from . import kernels` names a module
                    if f'{base}.{alias.name}' in MODULES:
                        yield f'{base}.{alias.name}', None
                    else:
                        yield base, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith('bert_gluon'):
                    yield alias.name, None


MODULES = dict(_modules())


def test_no_import_circle():
    graph = {name: {target for target, _ in _imports(name, path)
                    if target != name and not name.startswith(target + '.')}
             for name, path in MODULES.items()}
    # a package's __init__ importing its submodules is how packages work: not an edge back
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in MODULES:
                continue
            if state.get(nxt) == 'open':
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail('import circle: ' + ' -> '.join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 'done'
    for name in MODULES:
        if name not in state and name != 'bert_gluon':
            visit(name)


def test_no_module_imports_another_modules_private_names():
    reached = [f'{name} takes {target}.{taken}'
               for name, path in MODULES.items()
               for target, taken in _imports(name, path)
               if taken and taken.startswith('_') and not taken.endswith('__')  # __version__
               and target != name]
    assert not reached


@pytest.mark.parametrize('module', ['export.py', 'onnx_export.py', 'huggingface.py'])
def test_export_functions_fit_on_a_screen(module):
    tree = ast.parse((PACKAGE / module).read_text())
    long = [f'{node.name}: {node.end_lineno - node.lineno + 1} lines'
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 80]
    assert not long
