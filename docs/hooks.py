"""MkDocs hook: the API reference, one page per module of the package, made
at build time from each module's `__all__` (read from the source with `ast`,
so nothing is imported), and added to the nav. A public name is one in an
`__all__`; each is rendered by mkdocstrings, so a name that cannot be found
fails the strict build. The front page lists `bert_gluon.__all__`, each
linked to the module that defines it."""
import ast
from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = 'bert_gluon'
ROOT = Path(__file__).resolve().parents[1]
_FOUND = {}  # on_config's modules, for on_files


def public_modules():
    """{module name: (its __all__, its docstring's first line)} for every
    module of the package that declares __all__, in path order."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob('*.py')):
        parts = path.relative_to(ROOT).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        tree = ast.parse(path.read_text(encoding='utf-8'))
        names = next((ast.literal_eval(node.value) for node in tree.body
                      if isinstance(node, ast.Assign)
                      and any(getattr(t, 'id', None) == '__all__' for t in node.targets)), None)
        if names is not None:
            summary = (ast.get_docstring(tree) or '').strip().split('\n\n')[0].replace('\n', ' ')
            modules[name] = (list(names), summary, tree)
    return modules


def defined_in(tree, name):
    """The module a package's `from .x import name` takes `name` from."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(
                (alias.asname or alias.name) == name for alias in node.names):
            return f'{PACKAGE}.{node.module}' if node.level else node.module
    raise ValueError(f'{PACKAGE}.__all__ names {name!r}, which {PACKAGE}/__init__.py '
                     'does not import from a module')


def page_of(module):
    return f'api/{module}.md'


def _top_page(names, tree):
    lines = [f'# {PACKAGE}', '', 'What `import bert_gluon as bg` gives: each name is '
             'defined, and documented, in its module.', '', '| name | defined in |', '|---|---|']
    for name in names:
        module = defined_in(tree, name)
        lines.append(f'| [`bg.{name}`][{module}.{name}] | [`{module}`]({module}.md) |')
    return '\n'.join(lines) + '\n'


def _module_page(module, names, summary):
    members = ''.join(f'\n        - {n}' for n in names)
    return (f'# {module}\n\n::: {module}\n    options:\n      show_root_heading: false\n'
            f'      members:{members}\n')


def on_config(config):
    modules = public_modules()
    pages = [page_of(m) for m in modules]
    nav = [entry for entry in config['nav'] if 'API reference' not in entry]
    config['nav'] = nav + [{'API reference': ['api/index.md'] + pages}]
    _FOUND.clear()
    _FOUND.update(modules)
    return config


def on_files(files, config):
    modules = _FOUND
    index = ['# API reference', '', 'Every public name: those in the `__all__` of each '
             'module.', '', '| module | what it is |', '|---|---|']
    for module, (names, summary, tree) in modules.items():
        index.append(f'| [`{module}`]({module}.md) | {summary} |')
        content = (_top_page(names, tree) if module == PACKAGE
                   else _module_page(module, names, summary))
        files.append(File.generated(config, page_of(module), content=content))
    files.append(File.generated(config, 'api/index.md', content='\n'.join(index) + '\n'))
    return files
