"""The native kernels equal the MXNet operators or d2l blocks they replace,
forward and backward, and the package works the same without them."""
import json
import re

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, np, npx

import bert_gluon as bg
from bert_gluon import kernels
from bert_gluon.layers import LayerNorm
from conftest import (BF16_PRODUCTS, FLOAT32_PRODUCTS, NEEDS_A_BF16_PROVIDER, TINY,
                      assert_close, make_batch, run_script, runnable, tolerance)


def run_native(script, **env):
    """run_script with backend 'auto' meaning the native kernels in the
    child whichever pass runs it: these tests are about the kernels."""
    return run_script(script, unset=['BERT_GLUON_NATIVE'], **env)


def test_native_kernels_are_built_and_loaded_here():
    assert kernels.native_available()  # g++ is on this machine and in CI


@pytest.mark.parametrize('shape', [(7, 5, 24), (3, 384), (1, 1, 8)])
@pytest.mark.parametrize('hybridize', [False, True])
def test_native_layer_norm_equals_mxnet(shape, hybridize):
    ln = LayerNorm(epsilon=1e-12, in_channels=shape[-1])
    ln.backend = 'native'
    ln.initialize()
    ln.gamma.set_data(np.random.normal(1, 0.3, shape[-1:]))
    ln.beta.set_data(np.random.normal(0, 0.3, shape[-1:]))
    if hybridize:
        ln.hybridize(static_alloc=True, static_shape=True)
    x = np.random.normal(2, 3, shape)
    dy = np.random.normal(0, 1, shape)
    x.attach_grad()
    with autograd.record():
        y = ln(x)
    y.backward(dy)
    ours = [y.asnumpy(), x.grad.asnumpy(), ln.gamma.grad().asnumpy(), ln.beta.grad().asnumpy()]
    g, b = ln.gamma.data(), ln.beta.data()
    g.attach_grad()
    b.attach_grad()
    x.attach_grad()
    with autograd.record():
        y = npx.layer_norm(x, g, b, axis=-1, eps=1e-12)
    y.backward(dy)
    theirs = [y.asnumpy(), x.grad.asnumpy(), g.grad.asnumpy(), b.grad.asnumpy()]
    for name, a, e in zip(('y', 'dx', 'dgamma', 'dbeta'), ours, theirs):
        assert_close(a, e, rtol=1e-5, atol=2e-5, err_msg=name)


@pytest.mark.backend_dependent
def test_export_uses_mxnet_operators_only(tmp_path):
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    symbol_file, _ = bg.export_model(net, str(tmp_path / 'm'))
    ops = {node['op'] for node in json.load(open(symbol_file))['nodes']}
    assert 'LayerNorm' in ops and not any(op.startswith('bert_') for op in ops)


def test_same_outputs_without_native_kernels(tmp_path):
    """A fresh process with BERT_GLUON_NATIVE=0 computes the same numbers."""
    net = bg.HybridBERTModel(TINY, backend='native')
    net.initialize(mx.init.Normal(0.5))
    net.hybridize(static_alloc=True, static_shape=True)
    batch = make_batch()
    expected = net(*batch)[0].asnumpy()
    net.save_parameters(str(tmp_path / 'p.params'))
    onp.save(tmp_path / 'expected.npy', expected)
    script = f"""
import numpy as onp, mxnet as mx, bert_gluon as bg
from bert_gluon import kernels
from conftest import TINY, make_batch
net = bg.HybridBERTModel(TINY)
net.load_parameters(r'{tmp_path / "p.params"}')
assert net.backend == 'mxnet'  # BERT_GLUON_NATIVE=0: 'auto' means MXNet's operators
net.hybridize(static_alloc=True, static_shape=True)
out = net(*make_batch())[0].asnumpy()
onp.testing.assert_allclose(out, onp.load(r'{tmp_path / "expected.npy"}'), atol=1e-5)
print('same')
"""
    out = run_script(script, BERT_GLUON_NATIVE='0')
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]


def test_native_cross_entropy_equals_mxnet_forward_and_backward():
    mlm_Y_hat = np.random.normal(0, 3, (4, 5, 300))
    nsp_Y_hat = np.random.normal(0, 1, (4, 2))
    mlm_Y = np.random.randint(0, 300, (4, 5)).astype('int32')
    weights = (np.random.uniform(0, 1, (4, 5)) > 0.3).astype('float32')
    nsp_y = np.array([0, 1, 1, 0], dtype='int32')
    results = []
    for native in (True, False):
        mlm_Y_hat.attach_grad()
        loss = bg.loss.PretrainingLoss(backend='native' if native else 'mxnet')
        with autograd.record():
            mlm_sum, nsp_sum = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
            total = mlm_sum / 7.0 + nsp_sum
        total.backward()
        results.append((float(mlm_sum), mlm_Y_hat.grad.asnumpy()))
    (native_sum, native_grad), (mx_sum, mx_grad) = results
    assert abs(native_sum - mx_sum) < 1e-4 * abs(mx_sum)
    assert_close(native_grad, mx_grad, atol=1e-6)
    assert (native_grad[weights.asnumpy() == 0] == 0).all()  # padded slots: no gradient


def _copy_params(src, dst):
    dst_params = dst._collect_params_with_prefix()
    for name, p in src._collect_params_with_prefix().items():
        dst_params[name].set_data(p.data())


@pytest.mark.parametrize('path', ['fused-eager', 'fused-hybridized', 'split'])
@pytest.mark.parametrize('T, H, num_heads, valid_lens', [
    (7, 24, 3, [7, 3, 0, 1]),
    # heads of 40 and keys of 37: the products' 16- and 8-column panels,
    # their column tails and 1-row tails
    (37, 80, 2, [37, 20, 0, 9, 33])])
def test_native_attention_equals_d2l_forward_and_backward(path, T, H, num_heads,
                                                          valid_lens):
    """The transpose-free kernels against d2l.MultiHeadAttention itself,
    including a sequence with no valid key (d2l then attends uniformly).
    'fused' is the one-op attention (no dropout); 'split' the scores and
    context ops around a dropout (a graph with dropout, run in predict mode)."""
    from d2l import mxnet as d2l
    from bert_gluon.layers import MultiHeadSelfAttention
    assert kernels.has_op('bert_attention_scores')
    dropout = 0.5 if path == 'split' else 0.0
    ours = MultiHeadSelfAttention(H, num_heads, dropout=dropout)
    ours.backend = 'native'
    ours.initialize(mx.init.Normal(0.5))
    theirs = d2l.MultiHeadAttention(H, num_heads, dropout, use_bias=False)
    theirs.initialize()
    X = np.random.normal(0, 1, (len(valid_lens), T, H))
    valid_lens = np.array(valid_lens, dtype='float32')
    ours(X, valid_lens)
    theirs(X, X, X, valid_lens)
    _copy_params(ours, theirs)
    if path != 'fused-eager':
        ours.hybridize(static_alloc=True, static_shape=True)
    dY = np.random.normal(0, 1, X.shape)
    results = []
    for block, call in ((ours, lambda: ours(X, valid_lens)),
                        (theirs, lambda: theirs(X, X, X, valid_lens))):
        X.attach_grad()
        with autograd.record(train_mode=path != 'split'):
            Y = call()
        Y.backward(dY)
        grads = {k: p.grad().asnumpy() for k, p in block._collect_params_with_prefix().items()}
        results.append((Y.asnumpy(), X.grad.asnumpy(), grads))
    (y, dx, grads), (y_ref, dx_ref, grads_ref) = results
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    assert set(grads) == set(grads_ref)
    for name in grads:
        assert_close(grads[name], grads_ref[name], err_msg=name)


def check_fused_encoder_block(activation, use_bias, batch_size):
    """bert_encoder_layer (what inference graphs run) against the same block's
    per-step path and, in the book's configuration, d2l.EncoderBlock itself.
    T = 37: up to three sequences per task, the last task partial; a sequence
    with no valid key; GELU, biases and eps 1e-12 as real BERT."""
    from d2l import mxnet as d2l
    from bert_gluon.layers import EncoderBlock
    assert kernels.has_op('bert_encoder_layer')
    H, F, T = 40, 56, 37
    book = activation == 'relu' and not use_bias
    blk = EncoderBlock(H, F, 2, 0.5, use_bias, activation,
                       layer_norm_eps=1e-5 if book else 1e-12)
    blk.backend = 'native'
    blk.initialize(mx.init.Normal(0.3))
    X = np.random.normal(0, 1, (batch_size, T, H))
    valid_lens = np.array([20, 37, 0, 9, 33][:batch_size], dtype='float32')
    references = [blk(X, valid_lens)]  # eager outside train mode: no dropout
    if book:
        theirs = d2l.EncoderBlock(H, F, 2, 0.5)
        theirs.initialize()
        theirs(X, valid_lens)
        _copy_params(blk, theirs)
        references.append(theirs(X, valid_lens))
    graph = EncoderBlock(H, F, 2, 0.5, use_bias, activation, layer_norm_eps=blk._eps,
                         prefix=blk.prefix, params=blk.collect_params())  # blk's parameters
    graph.set_execution('native', purpose='inference')
    graph.hybridize(static_alloc=True, static_shape=True)
    fused = graph(X, valid_lens).asnumpy()
    for reference in references:
        assert_close(fused, reference.asnumpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('batch_size', [1, 2, 5])
@pytest.mark.parametrize('activation, use_bias', [('relu', False), ('gelu', True)])
def test_fused_encoder_block_equals_per_step_blocks(activation, use_bias, batch_size):
    """On this process's threads: one sequence on every thread (a request of
    one), a task per sequence, tasks of several sequences."""
    check_fused_encoder_block(activation, use_bias, batch_size)


def test_fused_encoder_block_with_more_threads_than_tasks():
    """Four threads: batches 1, 2 and 5 leave fewer tasks than threads, so
    the tasks run one after another, each on every thread (at batch 5 two
    tasks, the last partial)."""
    script = """
from test_kernels import check_fused_encoder_block
for batch_size in (1, 2, 5):
    for activation, use_bias in (('relu', False), ('gelu', True)):
        check_fused_encoder_block(activation, use_bias, batch_size)
print('same')
"""
    out = run_native(script, OMP_NUM_THREADS='4')
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize('positions', ['(T, H)', 'a learned (1, L, H) table'])
@pytest.mark.parametrize('id_dtype', ['int32', 'float32'])
def test_native_embedding_equals_lookups_forward_and_backward(id_dtype, positions):
    """bert_embed against two table lookups and a broadcast position sum:
    the output and all three tables' gradients, with ids repeated across the
    batch (their rows' gradients add up) and out of range (clipped); a
    learned table longer than T is read (and its gradient written) in its
    first T rows, the rest getting none."""
    assert kernels.has_op('bert_embed')
    B, T, V, S, H = 5, 9, 7, 2, 24
    tokens = np.random.randint(0, V, (B, T)).astype(id_dtype)  # 45 ids of 7
    tokens[0, 0] = V + 3  # clipped to V - 1, as nn.Embedding
    segments = np.random.randint(0, S, (B, T)).astype(id_dtype)
    learned = positions != '(T, H)'
    tables = [np.random.normal(0, 1, shape)
              for shape in ((V, H), (S, H), (1, T + 4, H) if learned else (T, H))]
    dX = np.random.normal(0, 1, (B, T, H))
    results = []
    for native in (True, False):
        for table in tables:
            table.attach_grad()
        with autograd.record():
            if native:
                X = mx.nd.bert_embed(tokens.as_nd_ndarray(), segments.as_nd_ndarray(),
                                     *(t.as_nd_ndarray() for t in tables)).as_np_ndarray()
            else:
                ids = np.clip(tokens, 0, V - 1).astype('int32')
                P = tables[2][0, :T] if learned else tables[2]
                X = (np.take(tables[0], ids, axis=0)
                     + np.take(tables[1], segments.astype('int32'), axis=0) + P)
        X.backward(dX)
        results.append([X.asnumpy()] + [t.grad.asnumpy() for t in tables])
    for ours, reference in zip(*results):
        assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def _objective_and_reference(hybridize, weights):
    """Sums and parameter gradients from PretrainingObjective (native packed
    projection) and from the model + PretrainingLoss with MXNet's operators."""
    config = TINY.replace(dropout=0.0)
    net = bg.HybridBERTModel(config, backend='native')
    net.initialize(mx.init.Normal(0.5))
    tokens, segments, valid_lens, positions = make_batch(config)
    mlm_Y = np.random.randint(0, config.vocab_size, positions.shape).astype('int32')
    nsp_y = np.array([1, 0, 1], dtype='int32')
    net(tokens, segments, valid_lens, positions)
    objective = bg.loss.PretrainingObjective(net)
    loss = bg.loss.PretrainingLoss(backend='mxnet')
    if hybridize:
        objective.hybridize(static_alloc=True, static_shape=True)
    results = []
    for fused in (True, False):
        net.backend = 'native' if fused else 'mxnet'
        with autograd.record():
            if fused:
                mlm_sum, nsp_sum = objective(tokens, segments, valid_lens, positions,
                                             weights, mlm_Y, nsp_y)
            else:
                _, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, valid_lens, positions)
                mlm_sum, nsp_sum = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
            total = mlm_sum / 5.0 + nsp_sum / 3.0
        total.backward()
        grads = {k: p.grad().asnumpy().copy() for k, p in net._collect_params_with_prefix().items()}
        results.append((float(mlm_sum), float(nsp_sum), grads))
    return results


@pytest.mark.parametrize('hybridize', [False, True])
def test_pretraining_objective_equals_model_and_loss(hybridize):
    weights = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype='float32')
    assert kernels.has_op('bert_dense')
    (mlm, nsp, grads), (mlm_ref, nsp_ref, grads_ref) = _objective_and_reference(
        hybridize, weights)
    assert abs(mlm - mlm_ref) < 1e-4 * abs(mlm_ref) and abs(nsp - nsp_ref) < 1e-5
    assert set(grads) == set(grads_ref)
    for name in grads:
        assert_close(grads[name], grads_ref[name], atol=2e-5, rtol=1e-4,
                                    err_msg=name)
    assert onp.abs(grads['mlm.mlp.2.weight']).max() > 0  # the decoder really learns


def test_pretraining_objective_with_no_weighted_slot():
    weights = np.zeros((3, 4), dtype='float32')
    (mlm, _, grads), (mlm_ref, _, grads_ref) = _objective_and_reference(True, weights)
    assert mlm == mlm_ref == 0
    assert not grads['mlm.mlp.2.weight'].any() and not grads['mlm.mlp.2.bias'].any()


def test_native_dropout_rate_scale_backward_and_seeding():
    from bert_gluon.layers import Dropout
    drop = Dropout(0.3)
    drop.set_execution('native', purpose='training')
    general = Dropout(0.3)
    general.backend = 'native'
    x = np.ones((1000, 100))
    x.attach_grad()

    def run(seed=None):
        if seed is not None:
            mx.random.seed(seed)
        with autograd.record():
            y = drop(x)
        y.backward()
        return y.asnumpy(), x.grad.asnumpy()
    y, dx = run(5)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    onp.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    onp.testing.assert_array_equal(dx, y)  # the backward rebuilds the same mask
    onp.testing.assert_array_equal(run(5)[0], y)  # mx.random.seed repeats it
    assert (run()[0] != y).any()  # the next call draws a new mask
    # Rows and columns are not correlated: each row keeps about 70 of 100
    assert abs(kept.mean(axis=1) - 0.7).max() < 0.2
    # Outside a training tree it is MXNet's own, mode-aware Dropout
    onp.testing.assert_array_equal(general(x).asnumpy(), x.asnumpy())


@pytest.mark.backend_dependent
def test_objective_dropout_is_on_in_training_and_off_outside():
    config = TINY.replace(dropout=0.3)
    net = bg.HybridBERTModel(config, backend='native')
    net.initialize(mx.init.Normal(0.5))
    objective = bg.loss.PretrainingObjective(net)
    objective.hybridize(static_alloc=True, static_shape=True)
    tokens, segments, valid_lens, positions = make_batch(config)
    weights = np.ones(positions.shape)
    args = (tokens, segments, valid_lens, positions, weights,
            np.zeros(positions.shape, dtype='int32'), np.zeros((3,), dtype='int32'))
    with autograd.record():
        a = float(objective(*args)[0])
        b = float(objective(*args)[0])
    assert a != b  # fresh dropout masks
    _, mlm_Y_hat, nsp_Y_hat = net(*args[:4])  # predict mode: no dropout
    expected = bg.loss.PretrainingLoss()(mlm_Y_hat, nsp_Y_hat, args[5], weights, args[6])
    assert float(objective(*args)[0]) == pytest.approx(float(expected[0]), rel=1e-6)


def test_native_layer_norm_of_a_sum_equals_mxnet():
    """ln(x, residual) = LayerNorm(x + residual); both addends get the gradient."""
    ln = LayerNorm(epsilon=1e-5, in_channels=16)
    ln.backend = 'native'
    ln.initialize(mx.init.Normal(1.0))
    ln.hybridize(static_alloc=True, static_shape=True)
    x, r, dy = (np.random.normal(0, 2, (5, 3, 16)) for _ in range(3))
    x.attach_grad()
    r.attach_grad()
    with autograd.record():
        y = ln(x, r)
    y.backward(dy)
    g, b = ln.gamma.data(), ln.beta.data()
    s = x + r
    s.attach_grad()
    with autograd.record():
        y_ref = npx.layer_norm(s, g, b, axis=-1, eps=1e-5)
    y_ref.backward(dy)
    assert_close(y.asnumpy(), y_ref.asnumpy(), rtol=1e-5, atol=2e-5)
    assert_close(x.grad.asnumpy(), s.grad.asnumpy(), rtol=1e-5, atol=2e-5)
    assert_close(r.grad.asnumpy(), s.grad.asnumpy(), rtol=1e-5, atol=2e-5)


def _linear_case(use_bias, products, shape=(5, 7, 24), units=40):
    """bert_linear's output and gradients, and FullyConnected's (float32)."""
    x = np.random.normal(0, 1, shape)
    w = np.random.normal(0, 0.3, (units, shape[-1]))
    b = np.random.normal(0, 0.3, (units,))
    dy = np.random.normal(0, 1, shape[:-1] + (units,))
    results = []
    for native in (True, False):
        args = [x, w] + ([b] if use_bias else [])
        for a in args:
            a.attach_grad()
        with autograd.record():
            if native:
                y = mx.nd.bert_linear(*(a.as_nd_ndarray() for a in args), use_bias=use_bias,
                                      products=products).as_np_ndarray()
            else:
                y = npx.fully_connected(*args, num_hidden=units, no_bias=not use_bias,
                                        flatten=False)
        y.backward(dy)
        results.append([y.asnumpy()] + [a.grad.asnumpy() for a in args])
    return results


@pytest.mark.parametrize('precision, provider', FLOAT32_PRODUCTS + BF16_PRODUCTS)
@pytest.mark.parametrize('use_bias', [True, False])
def test_native_linear_equals_fully_connected(use_bias, precision, provider):
    products = kernels.products_attribute(precision, provider)
    ours, theirs = _linear_case(use_bias, products, shape=(9, 33, 128), units=96)
    for name, a, e in zip(('y', 'dx', 'dw', 'db'), ours, theirs):
        assert_close(a, e, atol=tolerance(precision), rtol=0, err_msg=name)
    if precision == 'bfloat16':
        assert not onp.array_equal(ours[0], theirs[0])  # bf16 products really ran


@pytest.mark.parametrize('precision, provider', FLOAT32_PRODUCTS + BF16_PRODUCTS)
def test_vocabulary_projection_of_every_provider(precision, provider):
    """bert_dense (all rows, and weighted rows only) against MXNet's
    FullyConnected, forward and backward: an accumulating product and the
    transposed operands of the weight gradient."""
    x = np.random.normal(0, 1, (3, 11, 64))
    w = np.random.normal(0, 0.3, (300, 64))
    b = np.random.normal(0, 0.3, (300,))
    weights = onp.random.RandomState(0).randint(0, 2, (3, 11))
    kept = weights.reshape(-1).nonzero()[0]
    products = kernels.products_attribute(precision, provider)
    for packed in (False, True):
        results = []
        for native in (True, False):
            for a in (x, w, b):
                a.attach_grad()
            with autograd.record():
                if native:
                    args = [a.as_nd_ndarray() for a in (x, w, b)]
                    args += [mx.nd.array(weights)] if packed else []
                    y = mx.nd.bert_dense(*args, packed=packed, products=products).as_np_ndarray()
                    rows = y.reshape(33, 300)[:len(kept)] if packed else y
                else:
                    y = npx.fully_connected(x, w, b, num_hidden=300, flatten=False)
                    rows = y.reshape(33, 300)[kept] if packed else y
                loss = (rows * np.arange(300) / 3000).sum()
            loss.backward()
            results.append([rows.asnumpy(), x.grad.asnumpy(), w.grad.asnumpy()])
        for name, a, e in zip(('y', 'dx', 'dw'), *results):
            assert_close(a, e, atol=tolerance(precision), rtol=0, err_msg=f'{name} {packed}')


def test_bf16_falls_back_to_float32_where_the_cpu_lacks_it(monkeypatch, forced):
    """A CPU with neither AVX512_BF16 nor AMX: dtype='bfloat16' runs float32
    (the float32 model's numbers exactly), said once; forcing a bf16
    provider there is refused; on MXNet's operators bf16 is refused outright."""
    forced('bfloat16', 'auto')
    monkeypatch.setattr(kernels, 'cpu_flags', lambda: {'avx2', 'fma'})
    batch = make_batch()
    outputs = []
    with pytest.warns(UserWarning, match=r"dtype='bfloat16' runs its products in float32 on "
                                         'this CPU: .*neither AVX512_BF16 nor AMX-BF16') as said:
        for dtype in ('bfloat16', 'bfloat16', 'float32'):
            net = bg.HybridBERTModel(TINY.replace(dtype=dtype), backend='native')
            mx.random.seed(1)
            net.initialize()
            outputs.append(net(*batch))
            assert net.backend == 'native' and net.plan.precision == 'float32'
    assert len([w for w in said if 'bfloat16' in str(w.message)]) == 1  # once
    for a, b in zip(outputs[0], outputs[2]):
        onp.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    net = bg.HybridBERTModel(TINY.replace(dtype='bfloat16'), backend='native')
    net.initialize()
    for provider in kernels.BF16_PROVIDERS:
        forced('bfloat16', provider)
        with pytest.raises(ValueError, match=f'BERT_GLUON_BF16_PROVIDER={provider} cannot run '
                                             'here: .*neither AVX512_BF16'):
            net(*batch)
    forced('bfloat16', 'fast')
    with pytest.raises(ValueError, match='BERT_GLUON_BF16_PROVIDER must be one of'):
        net(*batch)
    forced('bfloat16', 'auto')
    forced('float32', 'mkl')
    with pytest.raises(ValueError, match='BERT_GLUON_FLOAT32_PROVIDER must be one of'):
        net(*batch)
    with pytest.raises(ValueError, match="dtype='bfloat16' cannot run here: it runs on the "
                                         "'native' backend"):
        bg.execution.resolve_implementation('mxnet', [mx.cpu()], precision='bfloat16')


def test_an_unknown_products_attribute_is_refused():
    x, w = mx.nd.ones((2, 4)), mx.nd.ones((3, 4))
    known = ', '.join(f"'{name}'" for name, (precision, _) in kernels.PRODUCTS.items()
                      if precision != 'int8')  # the C++ table's, in order; int8: fused ops only
    with pytest.raises(mx.base.MXNetError, match=re.escape(
            f"bert_linear: products must be one of {known}, got 'bf16'")):
        mx.nd.bert_linear(x, w, use_bias=False, products='bf16').wait_to_read()


def test_the_products_table_is_one(monkeypatch):
    """kernels.PRODUCTS is the vocabulary: the providers' choices and their
    variables derive from it, and the library's own table (common.h) is
    checked against it when it loads: a disagreement is reported, not run."""
    import ctypes
    from bert_gluon.kernels import providers
    assert providers.CHOICES['float32'] == kernels.FLOAT32_PROVIDERS
    assert set(providers.CHOICES['bfloat16']) == set(kernels.BF16_PROVIDERS) | {'float32'}
    for attribute, (precision, provider) in kernels.PRODUCTS.items():
        assert kernels.products_attribute(precision, provider) == attribute
    library = ctypes.CDLL(str(kernels.library_path()))
    assert kernels._products_mismatch(library) is None
    monkeypatch.setitem(kernels.PRODUCTS, 'amx-int4', ('int4', 'onednn'))
    assert "'amx-int4': 'int4'" in kernels._products_mismatch(library)


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_providers_are_measured_once_per_machine_and_cached(precision, monkeypatch, forced,
                                                            tmp_path):
    """'auto' times the products (each runnable challenger against the
    incumbent float32), takes the fastest that beats it by MARGIN, and keeps
    the choice on disk under a key of this CPU, the libraries and ISA caps:
    a second process-level choice reads it, whatever the timing would say; a
    forced provider wins over the measurement."""
    from bert_gluon.kernels import providers
    names = kernels.FLOAT32_PROVIDERS[1:] if precision == 'float32' else kernels.BF16_PROVIDERS
    reason = (kernels.float32_unavailable_reason if precision == 'float32'
              else kernels.bf16_unavailable_reason)
    runnable = [p for p in names if not reason(p)]
    if not runnable:
        pytest.skip(f'no {precision} challenger runs here')
    monkeypatch.setattr(providers, 'build_dir', lambda: tmp_path)
    forced(precision, 'auto')
    incumbent = 'blas' if precision == 'float32' else providers.provider('float32')
    speedups = providers.measure_speedups(precision, runnable[0], incumbent)
    assert len(speedups) == len(providers.SHAPES) and all(s > 0 for s in speedups)
    fastest = runnable[-1]
    monkeypatch.setattr(providers, 'measure_speedups',
                        lambda p, name, base: [3.0] * 3 if name == fastest else [2.0] * 3)
    assert providers.provider(precision) == fastest
    assert f"{fastest}'s {precision} products 3.00x {incumbent}'s float32" in \
        providers.choice(precision)['why']
    providers.forget()
    monkeypatch.setattr(providers, 'measure_speedups', lambda p, name, base: [0.5] * 3)
    assert providers.provider(precision) == fastest  # the cached measurement, not a new one
    (tmp_path / 'providers.json').unlink()
    providers.forget()
    assert providers.provider(precision) == ('blas' if precision == 'float32' else 'float32')
    for name in runnable:
        forced(precision, name)
        assert providers.choice(precision) == {
            'provider': name, 'why': f'forced by {providers.FORCED_BY[precision]}'}


def test_measuring_draws_nothing_from_mxnets_generator():
    """A seeded run draws the same numbers whether or not the providers were
    measured in it first (the first run on a machine measures)."""
    from bert_gluon.kernels import providers
    mx.random.seed(5)
    expected = mx.nd.random.uniform(shape=(8,)).asnumpy()
    mx.random.seed(5)
    providers.measure_speedups('float32', 'blas', 'blas')
    onp.testing.assert_array_equal(mx.nd.random.uniform(shape=(8,)).asnumpy(), expected)


@pytest.mark.parametrize('content', ['[1, 2]', 'null', 'truncated {',
                                     'nonsense provider'])
@pytest.mark.skipif(kernels.float32_unavailable_reason('onednn') is not None,
                    reason="no float32 challenger (oneDNN) to measure here")
def test_a_broken_providers_file_is_named_and_measured_again(content, monkeypatch, forced,
                                                             tmp_path, capfd):
    """providers.json of another shape, or with an entry that names no
    provider, never breaks a model: it is named in a warning (a missing
    file is not), measured again (saying so on stderr) and rewritten whole."""
    import json
    from bert_gluon.kernels import providers
    monkeypatch.setattr(providers, 'build_dir', lambda: tmp_path)
    forced('float32', 'auto')
    monkeypatch.setattr(providers, 'measure_speedups', lambda p, name, base: [2.0] * 3)
    path = tmp_path / 'providers.json'
    key = f"float32 against blas\n{providers._key()}"
    path.write_text(json.dumps({key: {'provider': 'nonsense', 'why': 'x'}})
                    if content == 'nonsense provider' else content)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        net = bg.HybridBERTModel(TINY, backend='native')
        net.initialize()
        net(*make_batch())
    assert net.plan.provider == 'onednn' and 'measured here' in net.plan.why
    assert 'timing who multiplies float32 fastest' in capfd.readouterr().err
    assert json.loads(path.read_text())[key]['provider'] == 'onednn'
    providers.forget()
    assert providers.provider('float32') == 'onednn'  # read back, nothing said


def test_tune_measures_again_and_says_what_it_chose(monkeypatch, tmp_path, forced):
    from bert_gluon import cli
    from bert_gluon.kernels import providers
    monkeypatch.setattr(providers, 'build_dir', lambda: tmp_path)
    forced('float32', 'auto')
    forced('bfloat16', 'auto')
    calls = []
    monkeypatch.setattr(providers, 'measure_speedups',
                        lambda p, name, base: calls.append((p, name)) or [0.5] * 3)
    for _ in range(2):  # each time measured anew, not read from the file
        out = subprocess_free_main(cli, ['tune'])
        assert re.search(r'^float32: blas \(', out, re.M), out
        assert re.search(r'^bfloat16: float32 \(', out, re.M), out
    runnable = [p for p in kernels.FLOAT32_PROVIDERS[1:]
                if not kernels.float32_unavailable_reason(p)]
    assert [c for c in calls if c[0] == 'float32'] == [('float32', p) for p in runnable] * 2


def subprocess_free_main(cli, argv):
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(argv)
    return out.getvalue()


ISA_CAP_SCRIPT = """
import warnings
import bert_gluon as bg
from bert_gluon import kernels
from bert_gluon.kernels import providers
for p in kernels.BF16_PROVIDERS:
    print(p, 'reason', kernels.bf16_unavailable_reason(p))
for p in providers.CHOICES:
    print(p, 'provider', providers.provider(p), providers.choice(p)['why'])
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter('always')
    net = bg.HybridBERTModel(bg.get_config('book.demo', dtype='bfloat16'), backend='native')
    net.initialize()
    print('bf16', net.backend, repr(net.plan.products), len(said))
"""


@NEEDS_A_BF16_PROVIDER
def test_providers_follow_isa_caps():
    """Both libraries held to AVX2 (as on a CPU without AVX-512): oneDNN has
    no bf16 matmul there and MKL emulates it, slower than float32, so the
    bf16 choice is float32 and the model says so once."""
    out = run_native(ISA_CAP_SCRIPT, MKL_ENABLE_INSTRUCTIONS='AVX2', ONEDNN_MAX_CPU_ISA='AVX2',
                     BERT_GLUON_BF16_PROVIDER='auto', BERT_GLUON_FLOAT32_PROVIDER='auto')
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'onednn reason oneDNN has no bf16 matmul for this CPU at ONEDNN_MAX_CPU_ISA=AVX2' \
        in out.stdout, out.stdout
    assert 'bfloat16 provider float32' in out.stdout, out.stdout
    assert "bf16 native '' 1" in out.stdout, out.stdout
    assert re.search(r"float32 provider (blas|onednn) measured here: onednn's float32", out.stdout)


@pytest.mark.parametrize('precision, provider', [runnable('bfloat16', 'onednn')])
def test_emulated_onednn_bf16_is_measured_and_not_chosen(precision, provider):
    """oneDNN held to AVX-512 without its bf16 instructions (a Skylake-class
    core) emulates bf16 products: they run, are timed slower than float32,
    and are not chosen."""
    out = run_native(ISA_CAP_SCRIPT, ONEDNN_MAX_CPU_ISA='AVX512_CORE',
                     BERT_GLUON_BF16_PROVIDER='auto', BERT_GLUON_FLOAT32_PROVIDER='blas')
    assert out.returncode == 0, out.stderr[-2000:]
    emulated = re.search(r"onednn's bfloat16 products ([0-9.]+)x blas's float32", out.stdout)
    assert emulated and float(emulated.group(1)) < 1, out.stdout
    assert 'bfloat16 provider onednn' not in out.stdout, out.stdout


def check_model(config, precision, batch_size=4):
    """The whole twin (training graph, model graph and the fused inference
    blocks) with products of `precision` by the provider chosen now, against
    MXNet's operators in float32 on the same weights."""
    base = TINY if config == 'tiny' else bg.get_config(
        'all-MiniLM-L6-v2', vocab_size=50, num_hiddens=96, ffn_num_hiddens=192,
        num_heads=3, num_layers=2, max_len=32)
    base = base.replace(dropout=0.0)
    outputs = {}
    for backend, dtype in (('mxnet', 'float32'), ('native', precision)):
        net = bg.HybridBERTModel(base.replace(dtype=dtype), backend=backend)
        mx.random.seed(7)
        net.initialize(mx.init.Normal(0.1))
        net.hybridize(static_alloc=True, static_shape=True)
        batch = make_batch(base, batch_size=batch_size, seq_len=16, seed=3)
        inference = net.for_inference(static_shape=True)(*batch)  # fused blocks on 'native'
        with autograd.record():
            recorded = net(*batch)
            loss = (recorded[1] ** 2).mean() + recorded[2].sum()
        loss.backward()
        grads = {k: p.grad().asnumpy() for k, p in net._collect_params_with_prefix().items()}
        outputs[backend] = (inference, recorded, grads)
        assert (net.plan.precision == 'bfloat16') == (backend == 'native'
                                                      and precision == 'bfloat16')
    (inf_e, rec_e, g_e), (inf_a, rec_a, g_a) = outputs['mxnet'], outputs['native']
    atol = tolerance(precision)
    for a, e in zip(inf_a + rec_a, inf_e + rec_e):
        assert_close(a, e, atol=atol, rtol=0)
    for name in g_e:
        assert_close(g_a[name], g_e[name], atol=5 * atol, rtol=0, err_msg=name)
    if precision == 'bfloat16':
        assert not onp.array_equal(inf_a[0].asnumpy(), inf_e[0].asnumpy())


@pytest.mark.parametrize('precision, provider', FLOAT32_PRODUCTS + BF16_PRODUCTS)
@pytest.mark.parametrize('config', ['tiny', 'minilm-shaped'])
def test_model_of_every_provider_equals_mxnet(config, precision, provider, forced):
    """Batches of several tasks, and a request of one sequence (every layer
    in one parallel region, by the request's products)."""
    forced(precision, provider)  # this provider's products, whether or not they pay here
    check_model(config, precision)
    check_model(config, precision, batch_size=1)


@pytest.mark.slow
@pytest.mark.parametrize('precision, provider', FLOAT32_PRODUCTS + BF16_PRODUCTS)
def test_model_with_more_threads_than_tasks(precision, provider):
    """Four threads, batches 1 and 2: the fused blocks' wide tasks."""
    script = f"""
from test_kernels import check_model
for batch_size in (1, 2):
    check_model('minilm-shaped', {precision!r}, batch_size)
print('same')
"""
    out = run_native(script, OMP_NUM_THREADS='4', **{providers_variable(precision): provider})
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize('precision, provider', FLOAT32_PRODUCTS + BF16_PRODUCTS)
def test_fused_blocks_at_bert_base_width_on_every_thread(precision, provider):
    """BERT-base's widths (768 hidden, 3072 FFN, 12 heads), 128 tokens, more
    sequences than threads: every thread runs the same products at once
    (oneDNN's shared scratchpad crashed here), and the encoder answers as
    MXNet's operators do."""
    script = f"""
import mxnet as mx, numpy as onp, bert_gluon as bg
from conftest import assert_close
config = bg.get_config('d2l.pretrain', vocab_size=100, num_hiddens=768, ffn_num_hiddens=3072,
                       num_heads=12, num_layers=1, dropout=0.0)
tokens = mx.np.array(onp.random.RandomState(0).randint(0, 100, (4, 128)), dtype='int32')
segments, lens = mx.np.zeros((4, 128), dtype='int32'), mx.np.array([128, 100, 64, 1.0])
answers = []
for backend, dtype in (('mxnet', 'float32'), ('native', {precision!r})):
    net = bg.HybridBERTModel(config.replace(dtype=dtype), backend=backend)
    mx.random.seed(0)
    net.initialize(mx.init.Normal(0.02))
    net.hybridize(static_alloc=True, static_shape=True)
    answers.append(net.encoder(tokens, segments, lens).asnumpy())
assert_close(answers[1], answers[0], atol={tolerance(precision)!r}, rtol=0)
print('same')
"""
    out = run_native(script, OMP_NUM_THREADS='2', timeout=300, **{
        providers_variable(precision): provider})
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]


def providers_variable(precision):
    from bert_gluon.kernels import providers
    return providers.FORCED_BY[precision]


@pytest.mark.slow
def test_kernels_build_and_answer_without_onednn():
    """Without oneDNN (not installed, or BERT_GLUON_ONEDNN=0) the kernels
    build without it, oneDNN is never chosen nor forceable, and the twin
    still answers as MXNet's operators do."""
    script = """
import bert_gluon as bg
from bert_gluon import kernels
from bert_gluon.kernels import providers
from test_kernels import check_model
assert kernels.unavailable_reason() is None, kernels.unavailable_reason()
print('float32', kernels.float32_unavailable_reason('onednn'))
print('bfloat16', kernels.bf16_unavailable_reason('onednn'))
print('chosen', providers.provider('float32'), providers.provider('bfloat16'))
check_model('tiny', 'float32')
print('same')
import warnings
with warnings.catch_warnings(record=True) as said:  # int8: the float32 products, said
    warnings.simplefilter('always')
    net = bg.HybridBERTModel(bg.get_config('book.demo', vocab_size=50, dtype='int8'),
                             backend='native')
    net.initialize()
    plan = net.for_inference().plan
print('int8 plan', plan.precision, plan.provider, len(said))
print('warned', said[0].message if said else '')
"""
    out = run_native(script, BERT_GLUON_ONEDNN='0', BERT_GLUON_FLOAT32_PROVIDER='auto',
                     BERT_GLUON_BF16_PROVIDER='auto', BERT_GLUON_INT8_PROVIDER='auto')
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]
    assert 'float32 oneDNN is off (BERT_GLUON_ONEDNN=0)' in out.stdout, out.stdout
    assert re.search(r'chosen blas (mkl|float32)\n', out.stdout), out.stdout
    assert 'int8 plan float32 blas 1' in out.stdout, out.stdout
    assert ("warned dtype='int8' runs its products in float32 on this CPU: onednn: oneDNN is "
            'off (BERT_GLUON_ONEDNN=0)') in out.stdout, out.stdout
    forced = run_native("from bert_gluon.kernels import providers\n"
                        "providers.plan_products('float32')",
                        BERT_GLUON_ONEDNN='0', BERT_GLUON_FLOAT32_PROVIDER='onednn')
    assert forced.returncode != 0
    assert 'BERT_GLUON_FLOAT32_PROVIDER=onednn cannot run here: oneDNN is off' in forced.stderr


@pytest.mark.slow
def test_layer_step_timers_only_where_built_with_them():
    """The fused block's step timers (bench/profile_request.py) are a build
    of their own: absent from the default one, summing every step's time
    where BERT_GLUON_LAYER_TIMERS=1 built them."""
    assert kernels.layer_step_seconds() is None
    script = """
import mxnet as mx, bert_gluon as bg
from bert_gluon import kernels
from conftest import TINY, make_batch
net = bg.HybridBERTModel(TINY, backend='native')
net.initialize()
before = kernels.layer_step_seconds()
net.for_inference().encoder(*make_batch()[:3]).wait_to_read()
after = kernels.layer_step_seconds()
print(sorted(after) == sorted(kernels.LAYER_STEPS), all(after[k] > before[k] for k in after))
"""
    out = run_native(script, BERT_GLUON_LAYER_TIMERS='1')
    assert out.returncode == 0 and 'True True' in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
def test_openblas_fallback_computes_the_same(tmp_path):
    """Without MKL the products come from the OpenBLAS MXNet ships."""
    net = bg.HybridBERTModel(TINY, backend='native')
    net.initialize(mx.init.Normal(0.5))
    net.hybridize(static_alloc=True, static_shape=True)
    batch = make_batch()
    expected = [o.asnumpy() for o in net(*batch)]
    net.save_parameters(str(tmp_path / 'p.params'))
    onp.save(tmp_path / 'expected.npy', onp.concatenate([e.ravel() for e in expected]))
    script = f"""
import numpy as onp, bert_gluon as bg
from bert_gluon import kernels
from conftest import TINY, make_batch
net = bg.HybridBERTModel(TINY, backend='native')
net.load_parameters(r'{tmp_path / "p.params"}')
net.hybridize(static_alloc=True, static_shape=True)
out = onp.concatenate([o.asnumpy().ravel() for o in net(*make_batch())])
assert kernels.blas_provider() == 'openblas', kernels.blas_provider()
expected = onp.load(r'{tmp_path / "expected.npy"}')
onp.testing.assert_allclose(out, expected, atol=1e-5 * max(1, abs(expected).max()))
print('same')
"""
    out = run_native(script, BERT_GLUON_BLAS='openblas')
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]


MEMORY_SCRIPT = """
import resource, sys, time
import mxnet as mx, numpy as onp
import bert_gluon as bg
from bert_gluon import kernels
config = bg.get_config('all-MiniLM-L6-v2', vocab_size=64, num_hiddens=32, ffn_num_hiddens=64,
                       num_heads=2, num_layers=2, max_len=512, dtype={precision!r})
net = bg.HybridBERTModel(config, backend='native')
net.initialize(mx.init.Normal(0.1))
model = net.for_inference()  # static_shape=False: one graph for every length
rng = onp.random.RandomState(0)

def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20

def request(length):
    tokens = mx.np.array(rng.randint(0, 64, (1, length)), dtype='int32')
    model.encoder(tokens, mx.np.zeros_like(tokens)).wait_to_read()

for length in range(1, 513):  # warm-up: every length once
    request(length)
warm, most = rss_mb(), 0
for i in range({requests}):
    request(int(rng.randint(1, 513)))
    most = max(most, kernels.onednn_primitives())
print('rss', warm, rss_mb(), 'primitives', most)
"""


@pytest.mark.slow
@pytest.mark.skipif(kernels.float32_unavailable_reason('onednn') is not None,
                    reason=f"oneDNN's products: {kernels.float32_unavailable_reason('onednn')}")
def test_requests_of_every_length_keep_memory_flat():
    """10,000 single requests of random lengths 1-512 after a warm-up over
    every length: the oneDNN primitives stay bounded (the least recently
    used freed) and the process's resident memory does not grow."""
    out = run_native(MEMORY_SCRIPT.format(precision='float32', requests=10000),
                     BERT_GLUON_FLOAT32_PROVIDER='onednn', timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    warm, after, most = map(float, re.search(r'rss ([0-9.]+) ([0-9.]+) primitives (\d+)',
                                             out.stdout).groups())
    assert 0 < most <= 512, out.stdout
    assert after - warm < 0.05 * warm + 20, out.stdout  # MB: flat, not growing per request


# --- int8 products: the fused encoder ops only --------------------------------
NEEDS_INT8 = pytest.mark.skipif(
    kernels.int8_unavailable_reason('onednn') is not None,
    reason=f'int8 products cannot run here: {kernels.int8_unavailable_reason("onednn")}')
_INT8_NAMES = ('W_q', 'W_k', 'W_v', 'W_o', 'b_q', 'b_k', 'b_v', 'b_o', 'gamma1', 'beta1',
               'W1', 'b1', 'W2', 'b2', 'gamma2', 'beta2')


def int8_layer_case(B, T=13, H=48, F=80, seed=0):
    """Inputs of one fused block with biases and GELU (as real BERT): X,
    valid_lens and the weights by name."""
    rng = onp.random.RandomState(seed)
    shapes = {'W1': (F, H), 'b1': (F,), 'W2': (H, F)}
    w = {name: rng.normal(0, 0.2, shapes.get(name, (H, H) if name.startswith('W') else (H,)))
         .astype('float32') for name in _INT8_NAMES}
    w['gamma1'] += 1
    w['gamma2'] += 1
    X = rng.normal(0, 1, (B, T, H)).astype('float32')
    lens = onp.array([T, 5, 1, 9, 13][:B], dtype='float32')
    return X, lens, w


def fused_layer(X, lens, w, products, request_products=None):
    inputs = [mx.nd.array(a, dtype='float32') for a in (X, lens)]
    inputs += [mx.nd.array(w[name]) for name in _INT8_NAMES]
    extra = {'request_products': request_products} if request_products is not None else {}
    return mx.nd.bert_encoder_layer(*inputs, num_heads=4, scale=(X.shape[2] // 4) ** -0.5,
                                    eps=1e-12, activation='gelu', use_bias=True,
                                    products=products, **extra).asnumpy()


@NEEDS_INT8
@pytest.mark.parametrize('B', [1, 5])
def test_int8_encoder_layer_equals_its_numpy_reference(B):
    """products='onednn-int8': each product's rows quantized to u8 with their
    own scale and zero point, the weights' rows to 7-bit s8, the integer sums
    exact, then dequantized: equal to NumPy doing exactly that (a rounding
    tie may land one level apart: 1e-3 of the LayerNormed scale), and a
    different answer from float32's, but near it. B=1 is a request (one
    parallel region, each thread its own columns), B=5 the batch path."""
    import numpy_reference as ref
    X, lens, w = int8_layer_case(B)
    ours = fused_layer(X, lens, w, 'onednn-int8')
    expected = ref.encoder_layer(X, lens, w, 4, dense=ref.int8_dense)
    assert_close(ours, expected, atol=1e-3, rtol=0)
    exact = ref.encoder_layer(X, lens, w, 4)
    assert not onp.allclose(ours, exact, atol=1e-4)  # int8 really ran
    assert_close(ours, exact, atol=INT8_LAYER_TOLERANCE, rtol=0)


# Each operand row is off by up to half a step (1/510 of its range), each
# weight by 1/126 of its row's largest; through one block, LayerNormed:
# a few percent of the unit scale at most at these sizes.
INT8_LAYER_TOLERANCE = 5e-2


@NEEDS_INT8
def test_int8_request_and_batch_paths_agree():
    """A row is quantized by itself: the batch path (five sequences) and a
    request of each sequence alone give the same answers, though their
    products are split differently over threads and packed shares."""
    X, lens, w = int8_layer_case(5)
    batch = fused_layer(X, lens, w, 'onednn-int8')
    for i in range(5):
        alone = fused_layer(X[i:i + 1], lens[i:i + 1], w, 'onednn-int8')
        assert_close(alone[0], batch[i], atol=1e-5, rtol=0, err_msg=f'sequence {i}')


def test_int8_products_are_the_encoder_ops_only():
    """bert_linear and bert_dense (training graphs, heads) refuse int8 by
    name; the fused encoder ops take it."""
    x, w = mx.nd.ones((2, 4)), mx.nd.ones((3, 4))
    with pytest.raises(mx.base.MXNetError, match="bert_linear: products must be one of .*, "
                                                 "got 'onednn-int8'"):
        mx.nd.bert_linear(x, w, use_bias=False, products='onednn-int8').wait_to_read()


@NEEDS_INT8
@pytest.mark.slow
def test_int8_answers_do_not_depend_on_the_isa():
    """Under ONEDNN_MAX_CPU_ISA=AVX2 oneDNN's int8 product is gemm:jit on
    vpmaddubsw, whose 16-bit pair sums saturate; 7-bit weights keep every
    pair within them, so its answers equal those of AMX or VNNI here, even
    for operands at the extremes (every u8 level 255 or 0 against weights
    of +-63)."""
    script = """
import numpy as onp, mxnet as mx
from bert_gluon import kernels
from test_kernels import int8_layer_case, fused_layer
X, lens, w = int8_layer_case(5)
X[0] = 30.0  # every level 255
for name in ('W_q', 'W_k', 'W_v'):  # every level 63: pairs sum to 2 * 255 * 63
    w[name] = onp.ones_like(w[name])
print(kernels.onednn_matmul('int8'))
onp.save('OUT', onp.concatenate([fused_layer(X, lens, w, 'onednn-int8'),  # batch, request
                                 fused_layer(X[:1], lens[:1], w, 'onednn-int8')]))
"""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        answers = {}
        for cap in ('', 'AVX2'):
            out_file = f'{folder}/answers{cap}.npy'
            out = run_native(script.replace('OUT', out_file),
                             **({'ONEDNN_MAX_CPU_ISA': cap} if cap else {}))
            assert out.returncode == 0, out.stderr[-2000:]
            answers[cap] = (out.stdout.split()[-1], onp.load(out_file))
    assert answers['AVX2'][0] == 'gemm:jit', answers['AVX2'][0]
    assert_close(answers['AVX2'][1], answers[''][1], atol=1e-5, rtol=0)


@NEEDS_INT8
@pytest.mark.slow
def test_int8_products_never_fall_to_onednns_reference_matmul():
    """On four threads a request's products are shared out by columns and a
    batch's run whole: oneDNN names the implementation of every matmul it
    runs (ONEDNN_VERBOSE), and none is its reference ('ref:any', some
    hundred times slower: what a share written straight into the strided
    output got)."""
    script = """
from test_kernels import int8_layer_case, fused_layer
for B in (1, 5):
    X, lens, w = int8_layer_case(B)
    fused_layer(X, lens, w, 'onednn-int8')
"""
    out = run_native(script, OMP_NUM_THREADS='4', ONEDNN_VERBOSE='1')
    assert out.returncode == 0, out.stderr[-2000:]
    matmuls = [line for line in out.stdout.splitlines()
               if line.startswith('onednn_verbose') and ',exec,' in line and ',matmul,' in line]
    assert matmuls and not [line for line in matmuls if 'ref' in line], matmuls[:5]
