import functools
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as onp
import pytest

import bert_gluon as bg
from bert_gluon import kernels

# Real data: $BERT_GLUON_DATA, else the checkout's ../shared/data. Tests that
# need it fail (never skip) without it, with find_dataset's message.
DATA = os.environ.setdefault(
    'BERT_GLUON_DATA', str(Path(__file__).resolve().parents[2] / 'shared' / 'data'))

# Small enough to run in milliseconds, big enough to exercise heads and layers.
TINY = bg.get_config('d2l.pretrain', vocab_size=50, num_hiddens=16,
                     ffn_num_hiddens=24, num_heads=4, num_layers=2)


@pytest.fixture(params=['native', 'mxnet'])
def backend(request):
    """Both implementations of the twin, chosen explicitly: every test that
    takes this runs in both of CI's passes, whatever 'auto' means there."""
    return request.param


@pytest.fixture
def tiny_config():
    return TINY


def make_batch(config=TINY, batch_size=3, seq_len=9, num_pred=4, seed=0):
    """A batch like the book's: ids, segments 0 then 1, lengths, positions."""
    rng = onp.random.RandomState(seed)
    tokens = rng.randint(0, config.vocab_size, (batch_size, seq_len))
    valid_lens = rng.randint(2, seq_len + 1, batch_size)
    valid_lens[0] = seq_len
    segments = onp.zeros((batch_size, seq_len), 'int32')
    for b, n in enumerate(valid_lens):
        segments[b, n // 2:n] = 1
    pred_positions = onp.stack([rng.randint(0, n, num_pred) for n in valid_lens])
    return (mx.np.array(tokens, dtype='int32'), mx.np.array(segments, dtype='int32'),
            mx.np.array(valid_lens, dtype='float32'),
            mx.np.array(pred_positions, dtype='int32'))


def run_script(script, unset=(), timeout=600, **env):
    """`script` in a fresh Python with `env` set and `unset` removed, tests/
    importable (conftest, test modules): the finished process."""
    env = dict(os.environ, **env,
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent)]
                                          + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    for name in unset:
        env.pop(name, None)
    return subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=timeout)


def graph_ops(block):
    """The operators of `block`'s traced graph (it has run hybridized)."""
    import json
    _, out = block._cached_graph
    return {node['op'] for node in json.loads(out.tojson())['nodes']}


def params_of(net):
    return {name: p.data().asnumpy()
            for name, p in net._collect_params_with_prefix().items()}


def assert_close(actual, expected, atol=1e-5, rtol=1e-5, err_msg=''):
    """Equal within atol times the larger of 1 and the largest magnitude in
    `expected`, plus rtol of each entry.

    Why scaled: two float32 computations of one array (another summation
    order, another CPU's vector width or GEMM blocking) differ by a few ulps
    of the largest terms they sum, not of each result, so an entry near 0
    by cancellation inside a gradient whose entries reach hundreds is off
    by ~1e-5 of those hundreds (seen: 0.0017 in a gradient reaching 300, on
    AVX-512 and not on AVX2)."""
    actual = actual.asnumpy() if hasattr(actual, 'asnumpy') else onp.asarray(actual)
    expected = expected.asnumpy() if hasattr(expected, 'asnumpy') else onp.asarray(expected)
    scale = max(1.0, float(onp.abs(expected).max())) if expected.size else 1.0
    onp.testing.assert_allclose(actual, expected, atol=atol * scale, rtol=rtol,
                                err_msg=err_msg)


@pytest.fixture(scope='session')
def tiny_pretrained(tmp_path_factory):
    """A folder from a short real pretraining run of a tiny model."""
    from bert_gluon.pretraining import pretrain
    folder = tmp_path_factory.mktemp('pretrained')
    config = bg.get_config('d2l.pretrain', num_hiddens=16, ffn_num_hiddens=16,
                           num_heads=2, num_layers=1)
    before = list(_READ_THE_BACKEND)
    pretrain(num_steps=4, batch_size=16, max_len=32, config=config, out_dir=folder,
             validate=False, progress=False)
    _READ_THE_BACKEND[:] = before  # shared: see pytest_fixture_setup
    return folder


def runnable(precision, provider):
    """(precision, provider) as a parameter, skipped (saying why) where it
    cannot run."""
    reason = {'float32': kernels.float32_unavailable_reason,
              'bfloat16': kernels.bf16_unavailable_reason,
              'int8': kernels.int8_unavailable_reason}[precision](provider)
    return pytest.param(precision, provider, id=f'{precision}-{provider}',
                        marks=pytest.mark.skipif(
                            reason is not None,
                            reason=f'{precision} products by {provider} cannot run here: {reason}'))


FLOAT32_PRODUCTS = [runnable('float32', p) for p in kernels.FLOAT32_PROVIDERS]
BF16_PRODUCTS = [runnable('bfloat16', p) for p in kernels.BF16_PROVIDERS]
INT8_PRODUCTS = [runnable('int8', p) for p in kernels.INT8_PROVIDERS]
NEEDS_A_BF16_PROVIDER = pytest.mark.skipif(
    all(kernels.bf16_unavailable_reason(p) for p in kernels.BF16_PROVIDERS),
    reason='no bf16 provider runs here (a CPU with AVX512_BF16 or AMX, and MKL or oneDNN)')
# bf16 keeps 8 bits of mantissa: each operand is off by up to 2^-9 of itself,
# so a sum of K products is off by ~2^-9 * sqrt(K) of its terms' scale (random
# signs); 2% of the largest magnitude bounds that at these sizes (K <= 128).
BF16_TOLERANCE = 2e-2


# int8 (quantization.py for the ONNX engines, kernels/blas.h for the twin):
# weights per channel with 7 bits, off by up to 2^-8 of their channel's
# largest; activations with 8 (per tensor, or per row in the twin), off by
# 2^-9 of their range; summed over K products at random signs, as for bf16,
# but from coarser steps: 5% of the largest magnitude.
INT8_TOLERANCE = 5e-2


def tolerance(precision):
    return {'float32': 1e-5, 'bfloat16': BF16_TOLERANCE, 'int8': INT8_TOLERANCE}[precision]


@pytest.fixture
def forced(monkeypatch):
    """forced(precision, provider): BERT_GLUON_FLOAT32_PROVIDER or
    BERT_GLUON_BF16_PROVIDER for one test; the choices made before and after
    it are forgotten."""
    from bert_gluon.kernels import providers
    providers.forget()

    def force(precision, value):
        monkeypatch.setenv(providers.FORCED_BY[precision], value)
        providers.forget()
    yield force
    monkeypatch.undo()
    providers.forget()


# --- Which tests depend on the backend ------------------------------------
# .ci/run's second pass (BERT_GLUON_NATIVE=0) runs only the tests marked
# `backend_dependent`: those whose models resolve backend 'auto' (read from
# that variable) or that start processes inheriting it. The marks are checked,
# not trusted: a test that does either without the mark fails, naming why.
# '1' is the default: set, so that a child inheriting it can be told from one
# started with it unset or pinned
os.environ.setdefault('BERT_GLUON_NATIVE', '1')
_READ_THE_BACKEND = []  # why the running test depends on the backend
_COMPILERS = {'g++', 'gcc', 'c++', 'cc'}  # children that never read the variable


def _record_auto(resolve):
    @functools.wraps(resolve)
    def recording(request, *args, **kwargs):
        if request == 'auto':
            _READ_THE_BACKEND.append("a model resolved backend='auto'")
        return resolve(request, *args, **kwargs)
    return recording


def _record_children(popen_init):
    @functools.wraps(popen_init)
    def recording(self, args, *rest, **kwargs):
        env = kwargs.get('env')
        first = args[0] if isinstance(args, (list, tuple)) else args
        program = os.path.basename(str(first).split()[0])
        inherits = (env is None
                    or env.get('BERT_GLUON_NATIVE') == os.environ.get('BERT_GLUON_NATIVE'))
        if inherits and program not in _COMPILERS:
            _READ_THE_BACKEND.append(f'it starts {program!r}, which inherits BERT_GLUON_NATIVE')
        popen_init(self, args, *rest, **kwargs)
    return recording


from bert_gluon import execution  # noqa: E402  (after the variable is set)
execution.resolve_implementation = _record_auto(execution.resolve_implementation)
subprocess.Popen.__init__ = _record_children(subprocess.Popen.__init__)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _READ_THE_BACKEND.clear()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """A shared fixture (module or session) is set up by whichever test needs
    it first: what it does is nobody's, or the marks would depend on the order.
    (A session fixture of this file is set up by the session, whose hooks are
    not this file's: tiny_pretrained does the same itself.)"""
    before = list(_READ_THE_BACKEND)
    yield
    if fixturedef.scope != 'function':
        _READ_THE_BACKEND[:] = before


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (call.when == 'teardown' and report.passed and _READ_THE_BACKEND
            and item.get_closest_marker('backend_dependent') is None):
        report.outcome = 'failed'
        report.longrepr = (f'{item.nodeid} depends on the backend ({_READ_THE_BACKEND[0]}) but is '
                           'not marked @pytest.mark.backend_dependent: .ci/run would not run it '
                           'on BERT_GLUON_NATIVE=0')
    listing = os.environ.get('BERT_GLUON_LIST_DEPENDENT')  # a file: which tests, and why
    if call.when == 'teardown' and listing and _READ_THE_BACKEND:
        with open(listing, 'a') as f:
            f.write(f'{item.nodeid}\t{_READ_THE_BACKEND[0]}\n')
