"""The native CPU kernels against the MXNet operators they replace, forward +
backward unless the row says otherwise, on the pretraining workload's shapes
at batch 128, in one process, ms per call.

    LayerNorm: (128 * 64, 128) — one encoder LayerNorm
    softmax cross-entropy: (128 * 10, 20256) MLM logits, 30% padded slots
    dropout: (128, 64, 128)
    attention: q, k, v (128, 64, 128), 2 heads, lengths 32..64; MXNet's side
      is the twin's fallback (head transposes, batch_dot, masked softmax)
    vocabulary projection, forward: (1280, 128) @ (128, 20256) + bias
    Dense (8192, 128) -> 256 (the FFN's first layer): bert_linear (MKL)
      against FullyConnected (MXNet's oneDNN), float32 and bf16 operands
    encoder block, forward: the fused bert_encoder_layer against the same
      block as per-step native ops (what a recorded call runs)

The header names the CPU, its ISA flags and the matrix-product library.

    OMP_NUM_THREADS=2 python bench/bench_kernels.py
"""
import os
import time

import mxnet as mx
from mxnet import autograd, np, npx

import bert_gluon  # noqa: F401  (numpy mode)
from bert_gluon import kernels
from bert_gluon.layers import EncoderBlock, _merge_heads, _split_heads
import harness


def ms_per_call(fn, repeats=10, rounds=3):
    """Milliseconds per call, the fastest of `rounds` rounds of `repeats`."""
    for _ in range(2):
        fn()
    mx.nd.waitall()
    best = float('inf')
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        mx.nd.waitall()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 1000 * best


def main():
    if not kernels.native_available():
        raise SystemExit(f'native kernels unavailable: {kernels.unavailable_reason()}')
    x = np.random.normal(0, 1, (128 * 64, 128))
    gamma, beta = np.ones(128), np.zeros(128)
    for a in (x, gamma, beta):
        a.attach_grad()

    def mxnet_ln():
        with autograd.record():
            y = npx.layer_norm(x, gamma, beta, axis=-1, eps=1e-5)
        y.backward()

    def native_ln():
        with autograd.record():
            y = mx.nd.bert_layer_norm(x.as_nd_ndarray(), gamma.as_nd_ndarray(),
                                      beta.as_nd_ndarray(), eps=1e-5)[0]
        y.backward()

    logits = np.random.normal(0, 3, (1280, 20256))
    logits.attach_grad()
    labels = np.random.randint(0, 20256, (1280,)).astype('int32')
    weights = (np.random.uniform(0, 1, (1280,)) > 0.3).astype('float32')

    def mxnet_ce():
        with autograd.record():
            l = (-npx.pick(npx.log_softmax(logits), labels, axis=-1) * weights).sum()
        l.backward()

    def native_ce():
        with autograd.record():
            l = mx.nd.bert_softmax_ce(logits.as_nd_ndarray(), labels.as_nd_ndarray(),
                                      weights.as_nd_ndarray())[0].sum()
        l.backward()

    h = np.random.normal(0, 1, (128, 64, 128))
    h.attach_grad()

    def mxnet_dropout():
        with autograd.record():
            y = npx.dropout(h, p=0.2)
        y.backward()

    def native_dropout():
        with autograd.record():
            y = mx.nd.bert_dropout(h.as_nd_ndarray(), p=0.2)[0]
        y.backward()

    q, k, v = (np.random.normal(0, 1, (128, 64, 128)) for _ in range(3))
    for a in (q, k, v):
        a.attach_grad()
    lens = np.random.randint(32, 65, (128,)).astype('float32')
    key_mask = (np.arange(64)[None, :] >= lens[:, None]) * -1e6  # (B, T), as the twin
    key_mask = key_mask.reshape(128, 1, 1, 64)

    def native_attention():
        with autograd.record():
            y = mx.nd.bert_attention(q.as_nd_ndarray(), k.as_nd_ndarray(), v.as_nd_ndarray(),
                                     lens.as_nd_ndarray(), num_heads=2, scale=0.125)
        y.backward()

    def mxnet_attention():
        with autograd.record():
            Q, K, V = (_split_heads(mx.nd, x, 2) for x in (q, k, v))
            scores = npx.batch_dot(Q, K, transpose_b=True) * 0.125
            scores = npx.reshape(scores, (-6, -1, 2, -2, -2)) + key_mask
            weights = npx.reshape(npx.softmax(scores, axis=-1), (-5, -2, -2))
            y = _merge_heads(mx.nd, npx.batch_dot(weights, V), 2)
        y.backward()

    slots = np.random.normal(0, 1, (128, 10, 128))  # the MLM head's hidden rows
    vocab_w, vocab_b = np.random.normal(0, 0.1, (20256, 128)), np.zeros(20256)

    def native_projection():
        mx.nd.bert_dense(slots.as_nd_ndarray(), vocab_w.as_nd_ndarray(),
                         vocab_b.as_nd_ndarray())

    def mxnet_projection():
        npx.fully_connected(slots, vocab_w, vocab_b, num_hidden=20256, flatten=False)

    dense_x = np.random.normal(0, 1, (8192, 128))
    dense_w, dense_b = np.random.normal(0, 0.1, (256, 128)), np.zeros(256)
    for a in (dense_x, dense_w, dense_b):
        a.attach_grad()

    def linear(products):
        def run():
            with autograd.record():
                y = mx.nd.bert_linear(dense_x.as_nd_ndarray(), dense_w.as_nd_ndarray(),
                                      dense_b.as_nd_ndarray(), products=products)
            y.backward()
        return run

    def mxnet_linear():
        with autograd.record():
            y = npx.fully_connected(dense_x, dense_w, dense_b, num_hidden=256, flatten=False)
        y.backward()

    block = EncoderBlock(128, 256, 2, 0.0)
    block.initialize(mx.init.Normal(0.1))
    block.backend = 'native'  # resolved now that the parameters exist
    block.hybridize(static_alloc=True, static_shape=True)
    fused = EncoderBlock(128, 256, 2, 0.0, prefix=block.prefix,
                         params=block.collect_params())  # block's parameters, fused
    fused.set_execution('native', purpose='inference')
    fused.hybridize(static_alloc=True, static_shape=True)

    def per_step_block():
        with autograd.record(train_mode=False):  # the model's own graph
            block(h, lens)

    rows = [('LayerNorm (8192, 128)', native_ln, mxnet_ln),
            ('softmax CE (1280, 20256)', native_ce, mxnet_ce),
            ('dropout (128, 64, 128)', native_dropout, mxnet_dropout),
            ('attention (128, 64, 128)', native_attention, mxnet_attention),
            ('vocab projection, fwd', native_projection, mxnet_projection),
            ('Dense 128->256, MKL f32', linear(''), mxnet_linear),
            ('encoder block, fwd', lambda: fused(h, lens), per_step_block)]
    for provider in kernels.BF16_PROVIDERS:
        if kernels.bf16_unavailable_reason(provider) is None:
            rows.insert(6, (f'Dense 128->256, {provider} bf16',
                            linear(kernels.products_attribute('bfloat16', provider)),
                            mxnet_linear))
    if kernels.float32_unavailable_reason('onednn') is None:
        rows.insert(6, ('Dense 128->256, onednn f32', linear('onednn'), mxnet_linear))
    threads = os.environ.get('OMP_NUM_THREADS', 'default')
    print('\n'.join(harness.header_lines(threads, f'products: {kernels.blas_provider()}')))
    print(f'ms per call (fastest of 3 rounds of 10), native vs the alternative; last two '
          'rows: the fused block vs the same block as per-step native ops')
    for name, ours, theirs in rows:
        a, b = ms_per_call(ours), ms_per_call(theirs)
        print(f'{name:<26} native {a:8.2f}   other {b:8.2f}   {b / a:5.1f}x')


if __name__ == '__main__':
    main()
