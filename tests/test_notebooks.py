"""The notebooks run top to bottom (small settings), as the book's CI does."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # processes of their own: the fast subset leaves them out

NOTEBOOKS = Path(__file__).resolve().parents[1] / 'notebooks'
SMALL = {'NB_NUM_STEPS': '3', 'NB_BATCH_SIZE': '32', 'NB_NUM_EPOCHS': '1', 'NB_MAX_LEN': '32'}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('notebooks')  # shared: fine-tuning reuses runs/pretrain


NAMES = ['bert.ipynb', 'bert-pretraining-data.ipynb', 'bert-pretraining.ipynb',
         'bert-representations.ipynb', 'bert-finetuning.ipynb', 'bert-pretrained.ipynb',
         'bert-deployment.ipynb']


def test_every_notebook_is_tested_and_installs_what_it_needs():
    assert sorted(p.name for p in NOTEBOOKS.glob('*.ipynb')) == sorted(NAMES)
    for name in NAMES:
        first = next(c for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells
                     if c.cell_type == 'code')
        assert first.source.startswith('# Installs what this notebook needs'), name
        assert "mxnet-cu112==1.9.1" in first.source, name


@pytest.mark.backend_dependent
@pytest.mark.parametrize('name', NAMES)
def test_notebook_runs_top_to_bottom(name, workdir, monkeypatch):
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # a cell's output arrives on its own channel after the cell ends; nbclient
    # waits 4 s for it by default, then drops it without a word (seen once in
    # CI on a loaded 2-core machine: a print missing from a cell that ran)
    NotebookClient(notebook, timeout=600, kernel_name='python3', iopub_timeout=60,
                   raise_on_iopub_timeout=True,
                   resources={'metadata': {'path': str(workdir)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == 'code'
               for o in cell.get('outputs', [])]
    assert not [o for o in outputs if o.get('output_type') == 'error']
    text = '\n'.join(str(o.get('data', {}).get('text/plain', '')) + o.get('text', '')
                     for o in outputs)
    if name == 'bert.ipynb':
        for shape in ('(2, 8, 768)', '(2, 3, 10000)', '(6,)', '(2, 2)', '(2,)'):
            assert shape in text
    elif name == 'bert-pretraining-data.ipynb':
        assert 'tokens:   <cls>' in text and 'mlm_weights     (' in text
        assert 'next-sentence share: 0.5' in text
    elif name == 'bert-pretraining.ipynb':
        assert 'MLM loss' in text and 'sentence pairs/sec' in text
        assert any('image/png' in o.get('data', {}) for o in outputs)
    elif name == 'bert-representations.ipynb':
        assert '(1, 6, 128) (1, 128)' in text and '(1, 10, 128) (1, 128)' in text
        assert 'bird crane vs machine crane, cosine:' in text and '(4, 384)' in text
    elif name == 'bert-finetuning.ipynb':
        assert 'MRPC epoch 1' in text and 'RTE epoch 1' in text
    elif name == 'bert-pretrained.ipynb':
        assert '6 layers, 384 hidden, 12 heads, gelu' in text and '(4, 384)' in text
        assert '7 (1, 16, 384)' in text
        nearest = [line for line in text.splitlines() if line.startswith('nearest:')]
        assert nearest and nearest[0].startswith(('nearest: A man is playing a guitar.',
                                                  'nearest: Someone is making music.')), (
            f'the nearest sentence is not about music: {nearest}; the outputs:\n{text}')
        assert 'RTE epoch 1' in text
    else:
        assert 'classifier.json' in text and '"labels": ' in text and 'refused: 415' in text
        assert 'largest difference:' in text and 'bert-symbol.json' in text
        assert "endpoint: {'labels'" in text and 'endpoint refused: 415' in text
        assert 'SageMaker cells are skipped' in text
