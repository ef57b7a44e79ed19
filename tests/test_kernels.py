"""The native LayerNorm equals MXNet's, forward and backward, and the package
works the same without it."""
import json
import subprocess
import sys

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, np, npx

import bert_gluon as bg
from bert_gluon import kernels
from bert_gluon.layers import LayerNorm
from conftest import TINY, make_batch


def test_native_kernels_are_built_and_loaded_here():
    assert kernels.native_available()  # g++ is on this machine and in CI


@pytest.mark.parametrize('shape', [(7, 5, 24), (3, 384), (1, 1, 8)])
@pytest.mark.parametrize('hybridize', [False, True])
def test_native_layer_norm_equals_mxnet(shape, hybridize):
    ln = LayerNorm(epsilon=1e-12, in_channels=shape[-1])
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
        onp.testing.assert_allclose(a, e, rtol=1e-5, atol=2e-5, err_msg=name)


def test_export_uses_mxnet_operators_only(tmp_path):
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    symbol_file, _ = bg.export_model(net, str(tmp_path / 'm'))
    ops = {node['op'] for node in json.load(open(symbol_file))['nodes']}
    assert 'LayerNorm' in ops and not any(op.startswith('bert_') for op in ops)


def test_same_outputs_without_native_kernels(tmp_path):
    """A fresh process with BERT_GLUON_NATIVE=0 computes the same numbers."""
    net = bg.HybridBERTModel(TINY)
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
assert not kernels.native_available()
net = bg.HybridBERTModel(TINY)
net.load_parameters(r'{tmp_path / "p.params"}')
net.hybridize(static_alloc=True, static_shape=True)
out = net(*make_batch())[0].asnumpy()
onp.testing.assert_allclose(out, onp.load(r'{tmp_path / "expected.npy"}'), atol=1e-5)
print('same')
"""
    import os
    env = dict(os.environ, BERT_GLUON_NATIVE='0',
               PYTHONPATH=os.pathsep.join([str(__import__('pathlib').Path(__file__).parent),
                                           os.environ.get('PYTHONPATH', '')]))
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and 'same' in out.stdout, out.stderr[-2000:]


def test_native_cross_entropy_equals_mxnet_forward_and_backward():
    loss = bg.loss.PretrainingLoss()  # eager: picks the kernel at every call
    mlm_Y_hat = np.random.normal(0, 3, (4, 5, 300))
    nsp_Y_hat = np.random.normal(0, 1, (4, 2))
    mlm_Y = np.random.randint(0, 300, (4, 5)).astype('int32')
    weights = (np.random.uniform(0, 1, (4, 5)) > 0.3).astype('float32')
    nsp_y = np.array([0, 1, 1, 0], dtype='int32')
    results = []
    for native in (True, False):
        mlm_Y_hat.attach_grad()
        with autograd.record():
            if native:
                mlm_sum, nsp_sum = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
            else:
                with kernels.portable():
                    mlm_sum, nsp_sum = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
            total = mlm_sum / 7.0 + nsp_sum
        total.backward()
        results.append((float(mlm_sum), mlm_Y_hat.grad.asnumpy()))
    (native_sum, native_grad), (mx_sum, mx_grad) = results
    assert abs(native_sum - mx_sum) < 1e-4 * abs(mx_sum)
    onp.testing.assert_allclose(native_grad, mx_grad, atol=1e-6)
    assert (native_grad[weights.asnumpy() == 0] == 0).all()  # padded slots: no gradient
