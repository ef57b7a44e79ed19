"""Any list of contexts: split_and_load, and the same step as one context."""
import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, gluon, np

import bert_gluon as bg
from conftest import TINY, assert_close, make_batch, params_of

CONTEXTS = [mx.cpu(0), mx.cpu(1)]
NO_DROPOUT = TINY.replace(dropout=0.0)  # dropout masks differ per device


def _batch(batch_size=6):
    tokens, segments, valid_lens, positions = make_batch(batch_size=batch_size, seed=3)
    rng = onp.random.RandomState(4)
    mlm_Y = np.array(rng.randint(0, TINY.vocab_size, positions.shape), dtype='int32')
    weights = onp.ones(positions.shape, 'float32')
    weights[:, -1] = 0  # padded slots, as the book's batches have
    nsp_y = np.array(rng.randint(0, 2, batch_size), dtype='int32')
    return tokens, segments, valid_lens, positions, mlm_Y, np.array(weights), nsp_y


def _train_one_step(ctx_list, batch, kvstore='device', optimizer='sgd'):
    mx.random.seed(0)
    net = bg.HybridBERTModel(NO_DROPOUT)
    net.initialize(mx.init.Xavier(), ctx=ctx_list)
    net.hybridize(static_alloc=True, static_shape=True)
    loss = bg.loss.PretrainingLoss()
    trainer = gluon.Trainer(net.collect_params(), optimizer,
                            {'learning_rate': 0.1}, kvstore=kvstore)
    num_weights = float(batch[5].sum())
    shards = [gluon.utils.split_and_load(x, ctx_list, even_split=False) for x in batch]
    with autograd.record():
        ls = []
        for tokens, segments, lens, positions, mlm_Y, weights, nsp_y in zip(*shards):
            _, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, lens, positions)
            mlm_sum, nsp_sum = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
            ls.append(mlm_sum / num_weights + nsp_sum / batch[0].shape[0])
    for l in ls:
        l.backward()
    grads = {name: sum(g.asnumpy() for g in p.list_grad())
             for name, p in net._collect_params_with_prefix().items()}
    trainer.step(1)
    outputs = [net(*[x.as_in_ctx(ctx) for x in batch[:4]])[1] for ctx in ctx_list]
    return net, outputs, grads


@pytest.mark.backend_dependent
def test_forward_runs_on_every_context():
    net = bg.HybridBERTModel(TINY)
    net.initialize(ctx=CONTEXTS)
    net.hybridize(static_alloc=True, static_shape=True)
    shards = [gluon.utils.split_and_load(x, CONTEXTS) for x in make_batch(batch_size=4)]
    for tokens, segments, lens, positions in zip(*shards):
        encoded_X, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, lens, positions)
        assert encoded_X.ctx == tokens.ctx and mlm_Y_hat.shape == (2, 4, TINY.vocab_size)


@pytest.mark.backend_dependent
@pytest.mark.parametrize('kvstore', ['device', 'local'])
def test_two_contexts_step_equals_one_context_step(kvstore):
    # SGD keeps the comparison linear in the gradient: Adam's first step is
    # lr * sign(g), which turns 1e-9 rounding noise into a full step.
    batch = _batch()
    one, _, one_grads = _train_one_step([mx.cpu(0)], batch)
    two, outputs, two_grads = _train_one_step(CONTEXTS, batch, kvstore)
    for name, grad in one_grads.items():
        assert_close(two_grads[name], grad, atol=1e-6, rtol=1e-4)
    before = bg.HybridBERTModel(NO_DROPOUT)
    mx.random.seed(0)
    before.initialize(mx.init.Xavier())
    before(*batch[:4])
    moved = 0
    for name, value in params_of(one).items():
        assert_close(params_of(two)[name], value, atol=1e-5)
        moved += not onp.allclose(params_of(before)[name], value)
    assert moved == len(params_of(one))  # every parameter got a gradient
    assert_close(outputs[0], outputs[1].as_in_ctx(mx.cpu(0)), atol=1e-6)


@pytest.mark.backend_dependent
def test_loss_ignores_padded_slots():
    loss = bg.loss.PretrainingLoss()
    mlm_Y_hat = np.random.normal(0, 1, (2, 3, 5))
    nsp_Y_hat = np.random.normal(0, 1, (2, 2))
    mlm_Y = np.array([[1, 2, 0], [3, 0, 0]])
    weights = np.array([[1., 1., 0.], [1., 0., 0.]])
    nsp_y = np.array([0, 1])
    mlm_sum, nsp_sum = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
    ce = gluon.loss.SoftmaxCrossEntropyLoss()
    expected = (ce(mlm_Y_hat.reshape(-1, 5), mlm_Y.reshape(-1), weights.reshape(-1, 1))).sum()
    assert_close(mlm_sum, expected, atol=1e-6)
    assert_close(nsp_sum, ce(nsp_Y_hat, nsp_y).sum(), atol=1e-6)
    # Garbage in a padded slot's logits changes nothing.
    noisy = mlm_Y_hat.copy()
    noisy[0, 2] += 100
    assert_close(loss(noisy, nsp_Y_hat, mlm_Y, weights, nsp_y)[0], mlm_sum, atol=1e-6)
