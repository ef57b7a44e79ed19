"""The documentation site builds strictly, documents every public name and
renders every notebook; a broken link fails the build."""
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def build(root, site):
    """`mkdocs build --strict` of the project at `root` into `site`: the process."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING='1')
    env.pop('BERT_GLUON_NATIVE', None)  # nothing runs a model: the same on every backend
    return subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-d', str(site)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def inventory(site):
    """The names the site documents (mkdocstrings' objects.inv, Sphinx's format)."""
    raw = (site / 'objects.inv').read_bytes()
    body = zlib.decompress(raw.split(b'\n', 4)[4]).decode('utf-8')
    return {line.split(' ', 1)[0] for line in body.splitlines() if line}


def public_names():
    """{module: its __all__} for every module of the package that has one,
    found by importing them (not by the docs' own hook)."""
    import pkgutil
    import bert_gluon
    found = {'bert_gluon': list(bert_gluon.__all__)}
    for info in pkgutil.walk_packages(bert_gluon.__path__, 'bert_gluon.'):
        module = importlib.import_module(info.name)
        if hasattr(module, '__all__'):
            found[info.name] = list(module.__all__)
    return found


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp('site')
    out = build(ROOT, site)
    assert out.returncode == 0, out.stdout + out.stderr
    return site, out.stdout + out.stderr


def test_the_site_builds_without_a_warning(site):
    _, log = site
    assert 'WARNING' not in log, log


def test_every_public_name_is_in_the_api_reference(site):
    documented = inventory(site[0])
    names = public_names()
    missing = []
    for module, members in names.items():
        for name in members:
            where = module
            if module == 'bert_gluon':  # re-exports: documented where they are defined
                value = getattr(importlib.import_module(module), name)
                where = next(m for m, ms in names.items() if m != module and name in ms
                             and getattr(importlib.import_module(m), name) is value)
            if f'{where}.{name}' not in documented:
                missing.append(f'{module}.{name}')
    assert not missing, f'public names missing from the API reference: {missing}'
    assert len(documented) > 100


def test_every_public_function_and_class_has_a_docstring():
    bare = [f'{module}.{name}' for module, members in public_names().items()
            for name in members
            if (inspect.isclass(value := getattr(importlib.import_module(module), name))
                or inspect.isfunction(value)) and not inspect.getdoc(value)]
    assert not bare, f'public names without a docstring: {bare}'


def test_every_notebook_is_a_page(site):
    notebooks = sorted(p.stem for p in (ROOT / 'notebooks').glob('*.ipynb'))
    assert len(notebooks) == 7
    for stem in notebooks:
        page = site[0] / 'notebooks' / stem / 'index.html'
        assert page.is_file(), f'notebooks/{stem}.ipynb has no page (docs/notebooks/ links each)'
        assert 'jp-Notebook' in page.read_text(encoding='utf-8')  # rendered, not a link


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / 'project'
    shutil.copytree(ROOT / 'docs', copy / 'docs', symlinks=True)
    shutil.copy(ROOT / 'mkdocs.yml', copy)
    for name in ('bert_gluon', 'notebooks'):
        (copy / name).symlink_to(ROOT / name)
    (copy / 'docs' / 'index.md').write_text('# x\n\nSee [the missing page](missing.md).\n')
    out = build(copy, tmp_path / 'site')
    assert out.returncode != 0
    assert 'missing.md' in out.stdout + out.stderr
