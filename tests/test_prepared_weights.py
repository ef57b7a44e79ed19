"""The inference graph's prepared weights (kernels/prepared.h: packed or
reordered once, float32, bf16 or int8, kept while unchanged) are never stale: after
every path that changes parameters the twin answers as MXNet's operators do
on the new parameters, and a steady stream of requests prepares nothing."""
import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd, gluon

import bert_gluon as bg
from bert_gluon import kernels
from conftest import (BF16_PRODUCTS, FLOAT32_PRODUCTS, INT8_PRODUCTS, TINY, assert_close,
                      make_batch, tolerance)

# every test for each provider of each precision, forced
pytestmark = [pytest.mark.skipif(kernels.unavailable_reason() is not None,
                                 reason=f'native kernels: {kernels.unavailable_reason()}'),
              pytest.mark.parametrize('precision, provider',
                                      FLOAT32_PRODUCTS + BF16_PRODUCTS + INT8_PRODUCTS)]
CONFIG = TINY.replace(dropout=0.0)


@pytest.fixture(autouse=True)
def force_provider(precision, provider, forced):
    forced(precision, provider)


def served(precision, seed=1, ctx=mx.cpu()):
    """A hybridized native twin, answering through its inference graph."""
    net = bg.HybridBERTModel(CONFIG.replace(dtype=precision), backend='native')
    mx.random.seed(seed)
    net.initialize(mx.init.Normal(0.1), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def batch_on(ctx=mx.cpu()):
    return [a.as_in_context(ctx) for a in make_batch(CONFIG, batch_size=4, seq_len=12)]


def answer(net, batch):
    return [o.asnumpy() for o in net.for_inference(static_shape=True)(*batch)]


def expected(net, batch, tmp_path):
    """MXNet's operators (float32) on `net`'s parameters as they are now."""
    path = tmp_path / 'now.params'
    net.save_parameters(str(path))
    ctx = batch[0].ctx
    reference = bg.HybridBERTModel(CONFIG, backend='mxnet')
    reference.load_parameters(str(path), ctx=ctx, cast_dtype=True)
    return answer(reference, batch)


def check_fresh(net, batch, before, tmp_path, precision):
    """`net` answers for its parameters now, not for those it had before."""
    now, truth = answer(net, batch), expected(net, batch, tmp_path)
    atol = tolerance(precision)
    for a, e in zip(now, truth):
        assert_close(a, e, atol=atol, rtol=0)
    # the change is far beyond the tolerance (5x: int8's is 5%): a stale weight
    # would be caught
    assert onp.abs(now[0] - before[0]).max() > 5 * atol * max(1, onp.abs(truth[0]).max())


def counts():
    made, reused = kernels.prepared_weight_counts()
    return made, reused


def test_a_stream_of_requests_prepares_nothing(precision, provider):
    net, batch = served(precision), batch_on()
    answer(net, batch)
    inference_plan = net.for_inference(static_shape=True).plan  # int8: inference only
    assert inference_plan.products == kernels.products_attribute(precision, provider)
    made, reused = counts()
    for _ in range(3):
        answer(net, batch)
    made_after, reused_after = counts()
    assert made_after == made, 'a request re-prepared a weight'
    # every call reuses at least each layer's stacked q | k | v (a float32
    # request of one task multiplies the other weights as they are)
    assert reused_after - reused >= 3 * CONFIG.num_layers


def test_load_parameters(precision, tmp_path):
    net, batch = served(precision), batch_on()
    before = answer(net, batch)
    other = served(precision, seed=2)
    other.save_parameters(str(tmp_path / 'other.params'))
    net.load_parameters(str(tmp_path / 'other.params'))
    check_fresh(net, batch, before, tmp_path, precision)


def test_set_data(precision, tmp_path):
    net, batch = served(precision), batch_on()
    before = answer(net, batch)
    for param in net.collect_params().values():
        param.set_data(-param.data())
    check_fresh(net, batch, before, tmp_path, precision)


def test_trainer_step(precision, tmp_path):
    net, batch = served(precision), batch_on()
    before = answer(net, batch)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 2.0})
    with autograd.record():
        encoded, mlm, nsp = net(*batch)
        loss = (encoded ** 2).mean() + mlm.mean() + nsp.mean()
    loss.backward()
    trainer.step(1)
    check_fresh(net, batch, before, tmp_path, precision)


def test_reset_ctx(precision, tmp_path):
    """Moved to another device, the model answers as before there; a new
    model made where its arrays were freed answers for its own weights."""
    net, batch = served(precision), batch_on()
    before = answer(net, batch)
    net.collect_params().reset_ctx(mx.cpu(1))
    moved = answer(net, batch_on(mx.cpu(1)))
    for a, e in zip(moved, before):
        onp.testing.assert_array_equal(a, e)
    newcomer = served(precision, seed=3)
    check_fresh(newcomer, batch, before, tmp_path, precision)


def test_cast(precision, tmp_path):
    """Cast away and back with new values in between: new float32 arrays,
    perhaps where the old ones were."""
    net, batch = served(precision), batch_on()
    before = answer(net, batch)
    net.cast('float64')
    for param in net.collect_params().values():
        param.set_data(-param.data())
    net.cast('float32')
    check_fresh(net, batch, before, tmp_path, precision)

