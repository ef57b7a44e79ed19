"""The README as a newcomer reads it: its Python blocks marked `runnable`
run as written, every `bert-gluon` command in it parses, every link leads
somewhere. (Its set-up and test commands are what .ci/run runs.)"""
import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text(encoding='utf-8')
FENCE = re.compile(r'^```(\w+)([^\n]*)\n(.*?)^```', re.S | re.M)


def blocks(language, marker=None):
    return [body for lang, info, body in FENCE.findall(README)
            if lang == language and (marker is None or marker in info.split())]


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 160
    assert len(blocks('python', 'runnable')) >= 2
    assert not re.search(r'pairs/s|p50|\d+\.\d+x', README), 'benchmark figures belong in docs/'


@pytest.mark.slow
@pytest.mark.backend_dependent
@pytest.mark.parametrize('index', range(len(blocks('python', 'runnable'))))
def test_a_runnable_python_block_runs_as_written(index, tmp_path, tiny_pretrained):
    # what the README's blocks expect beside them: `bert-gluon pretrain`'s folder
    (tmp_path / 'runs').mkdir()
    shutil.copytree(tiny_pretrained, tmp_path / 'runs' / 'pretrain')
    code = blocks('python', 'runnable')[index]
    out = run_script(f'import os; os.chdir({str(tmp_path)!r})\n' + code, timeout=600)
    assert out.returncode == 0, f'README block {index}:\n{code}\n{out.stderr[-3000:]}'


def test_every_bert_gluon_command_in_it_parses():
    from bert_gluon.cli import build_parser
    commands = [line for body in blocks('bash') for line in body.splitlines()
                if re.search(r'(^|\s|/)bert-gluon\s', line)]
    assert len(commands) >= 3
    for line in commands:
        words = shlex.split(line.split('#')[0])
        argv = words[next(i for i, w in enumerate(words) if w.endswith('bert-gluon')) + 1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f'README: `{line.strip()}` does not parse (exit {exc.code})')


def test_every_relative_link_leads_to_a_file():
    links = re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', README)
    local = [link for link in links if not re.match(r'[a-z]+:', link)]
    assert local, 'the README links into docs/'
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f'README links to missing files: {missing}'
