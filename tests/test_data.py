"""Finding WikiText-2 and building the book's pretraining examples."""
import hashlib
import http.server
import io
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as onp
import pytest

from bert_gluon.data import files as files_mod
from bert_gluon.data import (PretrainingDataset, Vocab, find_dataset,
                             load_wiki_pretraining, read_wiki)

from conftest import DATA


@pytest.fixture(scope='module')
def train_set():
    return load_wiki_pretraining(64)


@pytest.fixture
def no_data_env(monkeypatch, tmp_path):
    monkeypatch.delenv('BERT_GLUON_DATA', raising=False)
    monkeypatch.setenv('BERT_GLUON_CACHE', str(tmp_path / 'cache'))


def _copy_wiki(tmp_path):
    folder = tmp_path / 'root' / 'wikitext-2'
    shutil.copytree(Path(DATA) / 'wikitext-2', folder)
    return folder


def test_data_dir_argument_comes_first(tmp_path, monkeypatch):
    folder = _copy_wiki(tmp_path)
    monkeypatch.setenv('BERT_GLUON_DATA', str(tmp_path / 'nowhere'))
    assert find_dataset('wikitext-2', tmp_path / 'root') == folder
    assert find_dataset('wikitext-2', folder) == folder  # the folder itself


def test_a_data_dir_passed_over_is_said_with_the_folder_read_instead(tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setenv('BERT_GLUON_DATA', DATA)
    with pytest.warns(UserWarning, match=rf'data_dir {empty} does not hold wikitext-2 '
                                         r'\(.*\); read it from \$BERT_GLUON_DATA: '):
        folder = find_dataset('wikitext-2', empty)
    assert folder == Path(DATA) / 'wikitext-2'


def test_environment_then_cache(tmp_path, monkeypatch, no_data_env):
    folder = _copy_wiki(tmp_path)
    monkeypatch.setenv('BERT_GLUON_DATA', str(tmp_path / 'root'))
    assert find_dataset('wikitext-2') == folder
    monkeypatch.delenv('BERT_GLUON_DATA')
    cached = tmp_path / 'cache' / 'wikitext-2'
    shutil.copytree(folder, cached)
    assert find_dataset('wikitext-2') == cached


def test_truncated_file_is_rejected_with_its_name(tmp_path):
    folder = _copy_wiki(tmp_path)
    path = folder / 'wiki.train.tokens'
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match='wiki.train.tokens is corrupt or truncated'):
        find_dataset('wikitext-2', tmp_path / 'root')


def test_offline_error_says_where_to_put_what(no_data_env, monkeypatch):
    spec = files_mod.DATASETS['wikitext-2']
    monkeypatch.setitem(files_mod.DATASETS, 'wikitext-2', files_mod.DatasetFiles(
        spec.folder, spec.files, 'http://127.0.0.1:9/wikitext-2-v1.zip',
        spec.url_sha1, spec.archive_folder))
    with pytest.raises(FileNotFoundError) as info:
        find_dataset('wikitext-2', '/nonexistent')
    message = str(info.value)
    for part in ('wiki.train.tokens', 'wiki.valid.tokens', '<root>/wikitext-2/',
                 'BERT_GLUON_DATA', 'download from http://127.0.0.1:9'):
        assert part in message


def _serve(payload):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_checks_sha1_and_extracts(no_data_env, monkeypatch, tmp_path):
    files = {'wiki.train.tokens': b' = A = \n a b . c d . \n',
             'wiki.valid.tokens': b' x . y \n', 'wiki.test.tokens': b' z . w \n'}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        for name, data in files.items():
            z.writestr(f'wikitext-2/{name}', data)
    payload = buffer.getvalue()
    server = _serve(payload)
    url = f'http://127.0.0.1:{server.server_port}/wikitext-2-v1.zip'
    sha1s = {n: hashlib.sha1(d).hexdigest() for n, d in files.items()}
    try:
        monkeypatch.setitem(files_mod.DATASETS, 'wikitext-2', files_mod.DatasetFiles(
            'wikitext-2', sha1s, url, hashlib.sha1(payload).hexdigest(), 'wikitext-2'))
        folder = find_dataset('wikitext-2')
        assert folder == tmp_path / 'cache' / 'wikitext-2'
        assert (folder / 'wiki.train.tokens').read_bytes() == files['wiki.train.tokens']
        shutil.rmtree(folder)
        monkeypatch.setitem(files_mod.DATASETS, 'wikitext-2', files_mod.DatasetFiles(
            'wikitext-2', sha1s, url, '0' * 40, 'wikitext-2'))
        with pytest.raises(ValueError, match='wrong SHA-1'):
            find_dataset('wikitext-2')
        assert not folder.exists()  # nothing half-written is left
    finally:
        server.shutdown()


def test_vocab_equals_d2l_vocab_on_the_same_sentences():
    from d2l import mxnet as d2l
    paragraphs = read_wiki(find_dataset('wikitext-2') / 'wiki.train.tokens')
    assert len(paragraphs) == 15496
    sentences = [s.split() for p in paragraphs for s in p]
    assert len(sentences) == 74631
    ours = Vocab(sentences, min_freq=5, reserved_tokens=['<pad>', '<mask>', '<cls>', '<sep>'])
    theirs = d2l.Vocab(sentences, min_freq=5, reserved_tokens=['<pad>', '<mask>', '<cls>', '<sep>'])
    assert ours.idx_to_token == theirs.idx_to_token
    assert len(ours) == 20256


def test_vocab_json_round_trip_and_corrupt_file(tmp_path):
    vocab = Vocab([['a', 'b', 'a']], reserved_tokens=['<pad>'])
    vocab.to_json(tmp_path / 'vocab.json')
    assert Vocab.from_json(tmp_path / 'vocab.json') == vocab
    (tmp_path / 'bad.json').write_text('{"a": 1')
    with pytest.raises(ValueError, match='bad.json'):
        Vocab.from_json(tmp_path / 'bad.json')


def test_masking_proportions_and_special_tokens(train_set):
    ds = train_set
    v = ds.vocab
    real = ds.mlm_weights > 0
    rows = onp.arange(len(ds))[:, None]
    inputs = ds.tokens[rows, ds.pred_positions][real]
    labels = ds.mlm_labels[real]
    assert real.sum() > 250_000
    masked = inputs == v['<mask>']
    unchanged = inputs == labels
    random_word = ~masked & ~unchanged
    assert abs(masked.mean() - 0.8) < 0.01
    # A random word equals the label with probability 1/|vocab|: negligible.
    assert abs(unchanged.mean() - 0.1) < 0.01
    assert abs(random_word.mean() - 0.1) < 0.01
    specials = [v[t] for t in ('<pad>', '<mask>', '<cls>', '<sep>')]
    assert not onp.isin(labels, specials).any()  # special tokens never predicted
    assert inputs[random_word].min() >= 5  # random words are never special ids
    # Every example predicts max(1, round(0.15 * length)) of its tokens
    lengths = ds.valid_lens.astype(int)
    expected = onp.array([max(1, round(0.15 * n)) for n in lengths])
    onp.testing.assert_array_equal(real.sum(1), onp.minimum(expected, lengths - 3))
    # Predicted positions are sorted, distinct, inside the pair
    pos = onp.where(real, ds.pred_positions, -1)
    assert (onp.diff(pos, axis=1)[real[:, 1:]] > 0).all()
    assert (ds.pred_positions < lengths[:, None]).all()
    # Padded slots: position 0, label 0, weight 0
    assert (ds.pred_positions[~real] == 0).all() and (ds.mlm_labels[~real] == 0).all()


def test_pairs_layout_nsp_balance_and_max_len(train_set):
    ds = train_set
    v = ds.vocab
    assert ds.tokens.shape[1] == 64 and ds.valid_lens.max() <= 64
    assert abs(ds.nsp_labels.mean() - 0.5) < 0.02
    j = onp.arange(64)[None, :]
    lengths = ds.valid_lens.astype(int)[:, None]
    assert (ds.tokens[:, 0] == v['<cls>']).all()
    assert (ds.clean_tokens[j >= lengths] == v['<pad>']).all()
    assert (ds.clean_tokens[onp.arange(len(ds)), lengths[:, 0] - 1] == v['<sep>']).all()
    assert ((ds.clean_tokens == v['<sep>']).sum(1) == 2).all()
    assert (ds.segments[j >= lengths] == 0).all()
    # segments: 0 through the first '<sep>', 1 after it up to the end
    first_sep = onp.argmax(ds.clean_tokens == v['<sep>'], axis=1)
    onp.testing.assert_array_equal(ds.segments.sum(1), lengths[:, 0] - first_sep - 1)
    # is_next pairs are consecutive sentences of the book's paragraphs
    assert len(ds) == len(ds.tokens) == len(ds.nsp_labels)


@pytest.mark.slow
def test_same_statistics_as_the_books_dataset():
    from d2l import mxnet as d2l
    import random
    paragraphs = read_wiki(find_dataset('wikitext-2') / 'wiki.train.tokens')[:3000]
    random.seed(0)
    book = d2l._WikiTextDataset([list(p) for p in paragraphs], 64)
    ours = PretrainingDataset(paragraphs, 64)
    assert len(ours.vocab) == len(book.vocab)
    assert abs(len(ours) / len(book) - 1) < 0.03
    book_lens = onp.array([float(x) for x in book.valid_lens])
    assert abs(ours.valid_lens.mean() / book_lens.mean() - 1) < 0.02
    book_preds = onp.array([w.sum() for w in book.all_mlm_weights]).mean()
    assert abs(ours.mlm_weights.sum(1).mean() / float(book_preds) - 1) < 0.02


def test_seeded_and_dynamic_masking(train_set):
    again = load_wiki_pretraining(64)
    onp.testing.assert_array_equal(again.tokens, train_set.tokens)
    other = load_wiki_pretraining(64, seed=1)
    assert not onp.array_equal(other.tokens, train_set.tokens)
    before = again.tokens.copy()
    again.mask(onp.random.default_rng(5))
    assert not onp.array_equal(before, again.tokens)
    onp.testing.assert_array_equal(again.clean_tokens, train_set.clean_tokens)


def test_bad_arguments():
    with pytest.raises(ValueError, match='split'):
        load_wiki_pretraining(64, split='dev')
    with pytest.raises(ValueError, match='vocab'):
        load_wiki_pretraining(64, split='valid')
    with pytest.raises(ValueError, match='max_len'):
        PretrainingDataset([['a b', 'c d']], 3)


def test_dynamic_masking_updates_the_arrays_handed_out(train_set):
    ds = load_wiki_pretraining(64)
    arrays = ds.arrays()
    before = arrays[0].copy()
    ds.mask(onp.random.default_rng(9))
    assert arrays[0] is ds.tokens and not onp.array_equal(arrays[0], before)
