"""The faithful core: the book's cells, shapes and numbers."""
import subprocess
import sys

import mxnet as mx
import numpy as onp
import pytest
from mxnet import gluon, np

import bert_gluon as bg
from book_verbatim import BERTModel as VerbatimBERTModel
from conftest import TINY, assert_close, make_batch, params_of
from numpy_reference import bert_forward


def test_book_cells_give_the_books_shapes():
    vocab_size, num_hiddens, ffn_num_hiddens = 10000, 768, 1024
    num_heads, num_layers, dropout = 4, 2, 0.1
    encoder = bg.BERTEncoder(vocab_size, num_hiddens, ffn_num_hiddens,
                             num_heads, num_layers, dropout)
    encoder.initialize()
    tokens = np.random.randint(0, 10000, (2, 8))
    segments = np.array([[0, 0, 0, 0, 1, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1, 1, 1]])
    encoded_X = encoder(tokens, segments, None)
    assert encoded_X.shape == (2, 8, 768)

    mlm = bg.MaskLM(vocab_size, num_hiddens)
    mlm.initialize()
    mlm_positions = np.array([[0, 2, 1], [6, 5, 7]])
    mlm_Y_hat = mlm(encoded_X, mlm_positions)
    assert mlm_Y_hat.shape == (2, 3, 10000)
    mlm_Y = np.array([[1, 3, 5], [10, 20, 30]])
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    mlm_l = loss(mlm_Y_hat.reshape((-1, vocab_size)), mlm_Y.reshape(-1))
    assert mlm_l.shape == (6,)

    nsp = bg.NextSentencePred(num_hiddens)
    nsp.initialize()
    nsp_Y_hat = nsp(encoded_X)
    assert nsp_Y_hat.shape == (2, 2)
    nsp_l = loss(nsp_Y_hat, np.array([0, 1]))
    assert nsp_l.shape == (2,)
    # An untrained model's losses sit near log(classes): sane numbers.
    assert abs(float(nsp_l.mean()) - onp.log(2)) < 1.0
    assert abs(float(mlm_l.mean()) - onp.log(vocab_size)) < 3.0


def test_bert_model_returns_none_without_positions():
    net = bg.BERTModel.from_config(TINY)
    net.initialize()
    tokens, segments, valid_lens, _ = make_batch()
    encoded_X, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, valid_lens)
    assert encoded_X.shape == (3, 9, 16) and mlm_Y_hat is None
    assert nsp_Y_hat.shape == (3, 2)


@pytest.mark.parametrize('with_lens', [False, True])
def test_faithful_blocks_equal_verbatim_book_code(tmp_path, with_lens):
    net = bg.BERTModel.from_config(TINY)
    net.initialize(mx.init.Normal(0.5))
    tokens, segments, valid_lens, pred_positions = make_batch()
    valid_lens = valid_lens if with_lens else None
    ours = net(tokens, segments, valid_lens, pred_positions)
    net.save_parameters(str(tmp_path / 'book.params'))
    verbatim = VerbatimBERTModel(TINY.vocab_size, TINY.num_hiddens,
                                 TINY.ffn_num_hiddens, TINY.num_heads,
                                 TINY.num_layers, TINY.dropout)
    verbatim.load_parameters(str(tmp_path / 'book.params'))
    for a, b in zip(ours, verbatim(tokens, segments, valid_lens, pred_positions)):
        onp.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize('with_lens', [False, True])
def test_faithful_blocks_equal_numpy_reference(with_lens):
    net = bg.BERTModel.from_config(TINY)
    net.initialize(mx.init.Normal(0.5))
    tokens, segments, valid_lens, pred_positions = make_batch()
    valid_lens = valid_lens if with_lens else None
    encoded_X, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, valid_lens,
                                          pred_positions)
    ref = bert_forward(params_of(net), TINY.num_heads, tokens.asnumpy(),
                       segments.asnumpy(),
                       None if valid_lens is None else valid_lens.asnumpy(),
                       pred_positions.asnumpy())
    for ours, theirs in zip((encoded_X, mlm_Y_hat, nsp_Y_hat), ref):
        assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_from_config_refuses_what_the_book_cannot_hold():
    with pytest.raises(ValueError, match='book blocks'):
        bg.BERTModel.from_config(bg.get_config('bert.small'))


@pytest.mark.backend_dependent
def test_demo_command_prints_the_books_shapes():
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'demo'],
                         capture_output=True, text=True, check=True).stdout
    for line in ('encoded_X (2, 8, 768)', 'mlm_Y_hat (2, 3, 10000)',
                 'mlm_l (6,)', 'nsp_Y_hat (2, 2)', 'nsp_l (2,)'):
        assert line in out


@pytest.mark.backend_dependent
def test_import_does_not_pull_in_plotting_or_notebook_modules():
    """d2l imports matplotlib, pandas and IPython; `import bert_gluon` waits
    until a book block is built."""
    import subprocess
    import sys
    script = ('import sys, bert_gluon\n'
              "print(sorted(m for m in ('matplotlib', 'pandas', 'IPython', 'd2l') "
              'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == '[]', out.stdout + out.stderr
