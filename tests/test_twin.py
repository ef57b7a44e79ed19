"""The fast twin: same parameter tree as the book, equal outputs, export."""
import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, np

import bert_gluon as bg
from conftest import TINY, assert_close, graph_ops, make_batch, params_of
from numpy_reference import bert_forward


def _pair(tmp_path, backend=None, config=TINY):
    """A book model with random weights and a twin loaded from its file."""
    book = bg.BERTModel.from_config(config)
    book.initialize(mx.init.Normal(0.5))
    tokens, segments, valid_lens, pred_positions = make_batch(config)
    book(tokens, segments, valid_lens, pred_positions)  # finish deferred init
    book.save_parameters(str(tmp_path / 'book.params'))
    twin = bg.HybridBERTModel(config, backend=backend)
    twin.load_parameters(str(tmp_path / 'book.params'))
    return book, twin


@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('with_lens', [False, True])
@pytest.mark.parametrize('with_positions', [False, True])
def test_twin_equals_book(tmp_path, hybridize, with_lens, with_positions, backend):
    book, twin = _pair(tmp_path, backend)
    if hybridize:
        twin.hybridize(static_alloc=True, static_shape=True)
    tokens, segments, valid_lens, pred_positions = make_batch(seed=1)
    args = (tokens, segments, valid_lens if with_lens else None,
            pred_positions if with_positions else None)
    expected, actual = book(*args), twin(*args)
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
        else:
            assert a.shape == e.shape
            assert_close(a, e, atol=1e-5)
    # Twice: the hybridized graph is reused, not rebuilt wrongly.
    assert_close(twin(*args)[2], expected[2], atol=1e-5)
    assert twin.backend == backend


@pytest.mark.parametrize('hybridize', [False, True])
def test_rows_of_one_and_no_valid_token_equal_book(tmp_path, backend, hybridize):
    """Rows with one valid token, and (input checks off) rows with none,
    which d2l's masked softmax turns into uniform attention over all keys:
    the same outputs and gradients as the book on both backends."""
    config = TINY.replace(dropout=0.0)
    book, twin = _pair(tmp_path, backend, config)
    if hybridize:
        twin.hybridize(static_alloc=True, static_shape=True)
    tokens, segments, _, positions = make_batch(config, batch_size=4, seed=5)
    valid_lens = np.array([1, 0, 9, 0], dtype='float32')
    book.encoder.check_inputs = twin.check_inputs = False  # 0 is out of range
    for unrecorded in (True, False):
        outputs = []
        for net in (book, twin):
            if unrecorded:  # the inference graph, fused blocks on 'native'
                outputs.append((net(tokens, segments, valid_lens, positions), {}))
                continue
            with autograd.record():
                out = net(tokens, segments, valid_lens, positions)
                l = (out[0] ** 2).sum() + (out[1] ** 2).sum() + out[2].sum()
            l.backward()
            outputs.append((out, {k: p.grad().copy() for k, p in
                                  net._collect_params_with_prefix().items()}))
        (expected, book_grads), (actual, twin_grads) = outputs
        for a, e in zip(actual, expected):
            assert_close(a, e, atol=1e-5)
        for name, grad in book_grads.items():
            assert_close(twin_grads[name], grad, atol=1e-5, rtol=1e-4, err_msg=name)


@pytest.mark.backend_dependent
def test_twin_equals_numpy_reference():
    twin = bg.HybridBERTModel(TINY)
    twin.initialize(mx.init.Normal(0.5))
    twin.hybridize(static_alloc=True, static_shape=True)
    tokens, segments, valid_lens, pred_positions = make_batch()
    outputs = twin(tokens, segments, valid_lens, pred_positions)
    ref = bert_forward(params_of(twin), TINY.num_heads, tokens.asnumpy(),
                       segments.asnumpy(), valid_lens.asnumpy(),
                       pred_positions.asnumpy())
    for ours, theirs in zip(outputs, ref):
        assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


@pytest.mark.backend_dependent
def test_parameters_cross_load_both_ways(tmp_path):
    book, twin = _pair(tmp_path)
    assert set(params_of(book)) == set(params_of(twin))
    # twin -> book: perturb the twin, save, load into a fresh book model
    for p in twin.collect_params().values():
        p.set_data(p.data() + 0.01)
    twin.save_parameters(str(tmp_path / 'twin.params'))
    fresh_book = bg.BERTModel.from_config(TINY)
    fresh_book.load_parameters(str(tmp_path / 'twin.params'))
    twin_params, book_params = params_of(twin), params_of(fresh_book)
    for name, value in twin_params.items():
        onp.testing.assert_array_equal(book_params[name], value)
    args = make_batch(seed=2)
    assert_close(fresh_book(*args)[1], twin(*args)[1], atol=1e-5)


@pytest.mark.backend_dependent
@pytest.mark.parametrize('hybridize', [False, True])
def test_padding_does_not_change_valid_positions(hybridize):
    twin = bg.HybridBERTModel(TINY)
    twin.initialize(mx.init.Normal(0.5))
    if hybridize:
        twin.hybridize(static_alloc=True, static_shape=True)
    tokens, segments, valid_lens, pred_positions = make_batch()
    lens = valid_lens.asnumpy().astype(int)
    noisy = tokens.asnumpy().copy()
    for b, n in enumerate(lens):
        noisy[b, n:] = (noisy[b, n:] + 7) % TINY.vocab_size
    a = twin(tokens, segments, valid_lens, pred_positions)
    b = twin(np.array(noisy, dtype='int32'), segments, valid_lens,
             pred_positions)
    for row, n in enumerate(lens):
        assert_close(a[0][row, :n], b[0][row, :n], atol=1e-6)
    assert_close(a[2], b[2], atol=1e-6)
    assert lens.min() < tokens.shape[1]  # the batch really has padding


@pytest.mark.backend_dependent
def test_learned_position_real_bert_config_runs_and_hybridizes():
    config = bg.get_config('all-MiniLM-L6-v2', vocab_size=40, num_hiddens=24,
                           ffn_num_hiddens=32, num_layers=2, max_len=16)
    net = bg.HybridBERTModel(config)
    net.initialize(mx.init.Normal(0.2))
    tokens, segments, valid_lens, pred_positions = make_batch(config)
    eager = net(tokens, segments, valid_lens, pred_positions)
    net.hybridize(static_alloc=True, static_shape=True)
    hybrid = net(tokens, segments, valid_lens, pred_positions)
    for a, b in zip(eager, hybrid):
        assert_close(a, b, atol=1e-5)
    names = set(params_of(net))
    assert {'encoder.pos_embedding', 'encoder.embedding_ln.gamma',
            'encoder.blks.0.attention.W_q.bias'} <= names
    # The learned table is really used: changing it changes the output (a
    # random change: a constant shift would vanish in the LayerNorm).
    pos = net.encoder.pos_embedding
    pos.set_data(pos.data() + np.random.normal(0, 1, pos.shape))
    assert not onp.allclose(net(tokens, segments, valid_lens)[0].asnumpy(),
                            hybrid[0].asnumpy(), atol=1e-3)


@pytest.mark.backend_dependent
def test_gelu_is_the_erf_form():
    dense = bg.layers.Dense(3, activation='gelu', in_units=2, flatten=False)
    dense.initialize(mx.init.Normal(1.0))
    x = np.array([[0.3, -1.2], [2.0, 0.5]])
    pre = x.asnumpy() @ dense.weight.data().asnumpy().T + dense.bias.data().asnumpy()
    from math import erf, sqrt
    expected = onp.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))(pre)
    assert_close(dense(x), expected, atol=1e-5)


@pytest.mark.backend_dependent
def test_export_round_trip(tmp_path):
    twin = bg.HybridBERTModel(TINY)
    twin.initialize(mx.init.Normal(0.5))
    args = make_batch()
    expected = twin(*args)
    prefix = str(tmp_path / 'export' / 'bert')
    bg.export_model(twin, prefix)
    loaded = bg.load_exported(prefix)
    for a, e in zip(loaded(*args), expected):
        assert_close(a, e, atol=1e-5)
    with pytest.raises(ValueError, match='no exported file'):
        bg.load_exported(str(tmp_path / 'missing'))


def test_predict_mode_gradients_equal_book(tmp_path, backend):
    """Calls recorded in predict mode run the model's own graph (dropout in
    predict mode, never the fused blocks of `for_inference()`, which have no
    backward): its gradients equal the book's, and the parameter tree is
    still the book's."""
    book, twin = _pair(tmp_path, backend)  # TINY has dropout: only predict mode drops it
    twin.hybridize(static_alloc=True, static_shape=True)
    args = make_batch(seed=4)
    twin(*args)
    assert not {'bert_encoder_layer', 'bert_encoder_stack'} & graph_ops(twin)
    for net in (book, twin):
        with autograd.record(train_mode=False):
            _, mlm_Y_hat, nsp_Y_hat = net(*args)
            l = (mlm_Y_hat ** 2).sum() + nsp_Y_hat.sum()
        l.backward()
    book_grads = {k: p.grad() for k, p in book._collect_params_with_prefix().items()}
    twin_grads = {k: p.grad() for k, p in twin._collect_params_with_prefix().items()}
    assert set(twin_grads) == set(book_grads)
    for name, grad in book_grads.items():
        assert_close(twin_grads[name], grad, atol=1e-5, rtol=1e-4, err_msg=name)
    twin.save_parameters(str(tmp_path / 'twin.params'))
    assert set(mx.nd.load(str(tmp_path / 'twin.params'))) == set(params_of(book))


@pytest.mark.backend_dependent
def test_training_mode_dropout_is_active():
    twin = bg.HybridBERTModel(TINY.replace(dropout=0.5))
    twin.initialize()
    twin.hybridize(static_alloc=True, static_shape=True)
    args = make_batch()
    with autograd.record():
        a = twin(*args)[0]
    b = twin(*args)[0]
    assert not onp.allclose(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize('hybridize', [False, True])
def test_train_mode_without_record_applies_dropout(backend, hybridize):
    """MC-dropout inference: under autograd.train_mode() without record(),
    dropout is on, as MXNet's Dropout decides, on both backends, hybridized
    or not (the native inference graph once served it without dropout);
    outside train mode two calls are equal."""
    twin = bg.HybridBERTModel(TINY.replace(dropout=0.5), backend=backend)
    twin.initialize()
    if hybridize:
        twin.hybridize(static_alloc=True, static_shape=True)
    args = make_batch()
    for call in (lambda: twin(*args), lambda: twin(*args[:3])):  # whole model, encoder + NSP
        with autograd.train_mode():
            first, second = call(), call()
        for a, b in zip(first, second):
            if a is not None:
                assert not onp.allclose(a.asnumpy(), b.asnumpy())
        first, second = call(), call()
        for a, b in zip(first, second):
            if a is not None:
                onp.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize('hybridize', [False, True])
def test_twin_training_gradients_equal_book(tmp_path, hybridize, backend):
    """One step of the book's loss (`_get_batch_loss_bert`) on the book's
    blocks and on the twin's training graph: same loss, same gradients."""
    from mxnet import gluon
    config = TINY.replace(dropout=0.0)
    book = bg.BERTModel.from_config(config)
    book.initialize(mx.init.Normal(0.5))
    tokens, segments, valid_lens, positions = make_batch(config, seed=3)
    book(tokens, segments, valid_lens, positions)
    book.save_parameters(str(tmp_path / 'book.params'))
    twin = bg.HybridBERTModel(config, backend=backend)
    twin.load_parameters(str(tmp_path / 'book.params'))
    objective = bg.loss.PretrainingObjective(twin)
    if hybridize:
        objective.hybridize(static_alloc=True, static_shape=True)
    weights = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype='float32')
    mlm_Y = np.random.randint(0, config.vocab_size, positions.shape).astype('int32')
    nsp_y = np.array([1, 0, 0], dtype='int32')
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record():  # the book's loss, verbatim
        _, mlm_Y_hat, nsp_Y_hat = book(tokens, segments, valid_lens, positions)
        mlm_l = loss(mlm_Y_hat.reshape((-1, config.vocab_size)), mlm_Y.reshape(-1),
                     weights.reshape((-1, 1)))
        mlm_l = mlm_l.sum() / (weights.sum() + 1e-8)
        book_l = mlm_l + loss(nsp_Y_hat, nsp_y).mean()
    book_l.backward()
    with autograd.record():
        mlm_sum, nsp_sum = objective(tokens, segments, valid_lens, positions,
                                     weights, mlm_Y, nsp_y)
        twin_l = mlm_sum / float(weights.sum()) + nsp_sum / 3
    twin_l.backward()
    assert abs(float(twin_l) - float(book_l)) < 1e-5 * abs(float(book_l))
    book_grads = {k: p.grad() for k, p in book._collect_params_with_prefix().items()}
    twin_grads = {k: p.grad() for k, p in twin._collect_params_with_prefix().items()}
    assert set(book_grads) == set(twin_grads)
    for name, grad in book_grads.items():
        assert_close(twin_grads[name], grad, atol=1e-5, rtol=1e-4, err_msg=name)
