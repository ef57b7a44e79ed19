"""The native CPU kernels against the MXNet operators they replace, forward +
backward, on the pretraining workload's shapes, in one process, ms per call.

    LayerNorm: (128 * 64, 128) — one encoder LayerNorm at batch 128
    softmax cross-entropy: (128 * 10, 20256) MLM logits, 30% padded slots

    OMP_NUM_THREADS=2 python bench/bench_kernels.py
"""
import os

import mxnet as mx
from mxnet import autograd, np, npx

import bert_gluon  # noqa: F401  (numpy mode)
from bert_gluon import kernels
from bench_step import _timed


def ms_per_call(fn, repeats=10):
    return 1000 / _timed(mx, fn, repeats, warmup=2, batch_size=1)  # calls/s -> ms


def main():
    if not kernels.native_available():
        raise SystemExit('native kernels unavailable (no g++ or BERT_GLUON_NATIVE=0)')
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

    print(f'forward + backward, ms per call, OMP_NUM_THREADS='
          f'{os.environ.get("OMP_NUM_THREADS", "default")}')
    for name, ours, theirs in (('LayerNorm (8192, 128)', native_ln, mxnet_ln),
                               ('softmax CE (1280, 20256)', native_ce, mxnet_ce),
                               ('dropout (128, 64, 128)', native_dropout, mxnet_dropout)):
        a, b = ms_per_call(ours), ms_per_call(theirs)
        print(f'{name:<26} native {a:8.2f}   MXNet {b:8.2f}   {b / a:5.1f}x')


if __name__ == '__main__':
    main()
