"""One place decides how a model runs: its execution plan, visible,
resolved for where the parameters live, made anew (graphs dropped) when
they move or the request changes; kernel builds that cannot take the
process down."""
import json
import os
import shutil
import threading
import warnings

import mxnet as mx
import numpy as onp
import pytest
from mxnet import autograd

import bert_gluon as bg
from bert_gluon import execution
from bert_gluon import kernels
from bert_gluon.execution import ExecutionPlan, resolve_implementation
from conftest import TINY, assert_close, graph_ops, make_batch, run_script

AUTO = 'mxnet' if os.environ.get('BERT_GLUON_NATIVE') == '0' else 'native'


@pytest.mark.backend_dependent
def test_resolution_rules():
    assert resolve_implementation('auto', [mx.cpu()]) == AUTO
    assert resolve_implementation('native', [mx.cpu(0), mx.cpu(1)]) == 'native'
    assert resolve_implementation('mxnet', [mx.cpu()]) == 'mxnet'
    assert resolve_implementation('auto', [mx.gpu(0)]) == 'mxnet'
    assert resolve_implementation('auto', [mx.cpu()], 'float16') == 'mxnet'
    with pytest.raises(ValueError, match=r"backend='native' cannot run here: .*gpu\(0\)"):
        resolve_implementation('native', [mx.cpu(), mx.gpu(0)])
    with pytest.raises(ValueError, match="backend='native' cannot run here: .*float64"):
        resolve_implementation('native', [mx.cpu()], 'float64')
    with pytest.raises(ValueError, match="backend must be 'auto', 'native' or 'mxnet'"):
        bg.HybridBERTModel(TINY, backend='cuda')


@pytest.mark.backend_dependent
def test_no_compilation_for_parameters_off_the_cpu(monkeypatch):
    monkeypatch.setattr(kernels, 'unavailable_reason',
                        lambda: pytest.fail('the kernels were asked for'))
    assert resolve_implementation('auto', [mx.gpu(0)]) == 'mxnet'
    plan = execution.make_plan('auto', [mx.gpu(0)])
    assert (plan.implementation, plan.provider, plan.products) == ('mxnet', '', '')


def test_one_plan_for_the_tree_visible_and_shown():
    net = bg.HybridBERTModel(TINY, backend='mxnet')
    assert net.plan is None and net.backend is None  # nothing to resolve before init
    net.initialize()
    assert isinstance(net.plan, ExecutionPlan) and net.backend == 'mxnet'
    assert net.plan.to_dict()['contexts'] == ['cpu(0)']
    net.backend = 'native'
    blocks = [net.encoder, net.encoder.blks[0].attention, net.mlm.mlp[1]]
    assert {id(b.execution) for b in blocks} == {id(net.execution)}  # one, the root's
    assert all(b.plan is net.plan for b in blocks)
    assert net.plan.implementation == 'native' and net.plan.purpose == 'general'
    assert 'plan: native, float32 by' in repr(net)
    json.dumps(net.plan.to_dict())  # what metrics.json and checkpoints record
    assert bg.HybridBERTModel(TINY).plan is None
    # no block of the tree carries keys of its own besides the shared Execution
    assert not [k for b in blocks for k in vars(b) if k.startswith('_bg_')]


@pytest.mark.backend_dependent
@pytest.mark.filterwarnings('ignore:bert_gluon. the native CPU kernels are off')
def test_moving_the_parameters_makes_a_new_plan(monkeypatch):
    """Parameters moved where the kernels cannot run (here cpu(1) stands in
    for a GPU) get MXNet's operators: `reset_ctx` makes the new plan at
    once, a move behind the model's back at the next call; never the graph
    traced with native ops."""
    net = bg.HybridBERTModel(TINY, backend='auto')
    net.initialize(mx.init.Normal(0.5))
    net.hybridize(static_alloc=True, static_shape=True)
    batch = make_batch()
    expected = net(*batch)
    monkeypatch.setattr(execution, '_native_obstacle',
                        lambda contexts, dtype: None if contexts == (mx.cpu(0),)
                        else 'not a CPU kernels run on')
    assert net.backend == AUTO
    assert any(op.startswith('bert_') for op in graph_ops(net)) == (AUTO == 'native')
    net.reset_ctx(mx.cpu(1))  # explicit: the plan is made now
    assert net.plan.implementation == 'mxnet' and net.plan.contexts == ('cpu(1)',)
    net.reset_ctx(mx.cpu(0))
    assert net.plan.implementation == AUTO
    net.collect_params().reset_ctx(mx.cpu(1))  # behind the model's back
    batch = [a.as_in_ctx(mx.cpu(1)) for a in batch]
    moved = net(*batch)
    assert net.backend == 'mxnet' and net.encoder.blks[1].backend == 'mxnet'
    assert not any(op.startswith('bert_') for op in graph_ops(net))
    for a, e in zip(moved, expected):
        assert_close(a, e.as_in_ctx(mx.cpu(1)))
    explicit = bg.HybridBERTModel(TINY, backend='native')
    explicit.initialize(ctx=mx.cpu(1))
    with pytest.raises(ValueError, match="backend='native' cannot run here"):
        explicit(*batch)


@pytest.mark.backend_dependent
def test_a_cast_makes_a_new_plan():
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    assert net.plan.dtype == 'float32' and net.plan.implementation == AUTO
    net.cast('float64')  # the kernels take float32: MXNet's operators
    assert (net.plan.dtype, net.plan.implementation) == ('float64', 'mxnet')
    net.cast('float32')
    assert net.plan.implementation == AUTO


@pytest.mark.skipif(kernels.unavailable_reason() is not None,
                    reason=f'native kernels: {kernels.unavailable_reason()}')
def test_a_forced_provider_and_precision_make_their_plan(forced):
    """BERT_GLUON_FLOAT32_PROVIDER / _BF16_PROVIDER and the config's dtype
    reach the plan, and the plan's products reach the traced graph."""
    seen = {}
    for provider in kernels.FLOAT32_PROVIDERS:
        if kernels.float32_unavailable_reason(provider):
            continue
        forced('float32', provider)
        net = bg.HybridBERTModel(TINY, backend='native')
        net.initialize()
        inference = net.for_inference(static_shape=True)
        inference(*make_batch())
        seen[provider] = net.plan
        assert (net.plan.provider, net.plan.why) == (provider,
                                                     'forced by BERT_GLUON_FLOAT32_PROVIDER')
        attributes = {node.get('attrs', {}).get('products') for node in json.loads(
            inference._cached_graph[1].tojson())['nodes'] if node['op'] == 'bert_encoder_stack'}
        assert attributes == {net.plan.products}
    assert seen
    bf16 = bg.HybridBERTModel(TINY.replace(dtype='bfloat16'), backend='native')
    bf16.initialize()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a CPU without bf16 says it runs float32
        plan = bf16.plan
    assert plan.precision in ('bfloat16', 'float32') and plan.why


@pytest.mark.backend_dependent
def test_the_inference_sibling_shares_parameters_and_follows_its_model():
    net = bg.HybridBERTModel(TINY.replace(dropout=0.5))
    net.initialize(mx.init.Normal(0.3))
    net.hybridize(static_alloc=True, static_shape=True)
    batch = make_batch()
    inference = net.for_inference(static_shape=True)
    assert inference is net.for_inference(static_shape=True)  # made once
    assert inference not in net._children.values()  # not in the model's tree
    assert set(inference.collect_params()) == set(net.collect_params())
    assert all(inference.collect_params()[k] is p for k, p in net.collect_params().items())
    with autograd.record(train_mode=False):  # the model's own graph, dropout off
        expected = net(*batch)
    first, second = inference(*batch), inference(*batch)
    for a, b, e in zip(first, second, expected):
        onp.testing.assert_array_equal(a.asnumpy(), b.asnumpy())  # no dropout
        assert_close(a, e, atol=1e-5)
    with autograd.record():  # never recorded, never dropout
        again = inference(*batch)
    onp.testing.assert_array_equal(again[0].asnumpy(), first[0].asnumpy())
    with pytest.raises(mx.base.MXNetError):  # nothing was recorded to differentiate
        again[0].backward()
    assert inference.plan.purpose == 'inference'
    assert ('bert_encoder_stack' in graph_ops(inference)) == (AUTO == 'native')
    net.backend = 'mxnet'  # it follows its model's request
    inference(*batch)
    assert inference.plan.implementation == 'mxnet'
    assert not any(op.startswith('bert_') for op in graph_ops(inference))
    net.nsp.mlp[1].bias.set_data(mx.np.ones(2))  # shared: the sibling sees it
    assert_close(inference(*batch)[2], net(*batch)[2], atol=1e-5)


def test_objective_and_classifier_follow_their_model():
    from bert_gluon.classifier import BERTClassifier
    net = bg.HybridBERTModel(TINY, backend='native')
    net.initialize()
    objective = bg.loss.PretrainingObjective(net)
    objective.hybridize(static_alloc=True, static_shape=True)
    tokens, segments, valid_lens, positions = make_batch()
    targets = (mx.np.ones(positions.shape), mx.np.zeros(positions.shape, dtype='int32'),
               mx.np.zeros((3,), dtype='int32'))
    with mx.autograd.record():
        objective(tokens, segments, valid_lens, positions, *targets)
    assert objective.plan.purpose == 'training' and net.plan.purpose == 'general'
    assert any(op.startswith('bert_') for op in graph_ops(objective))
    net.backend = 'mxnet'
    with mx.autograd.record():
        objective(tokens, segments, valid_lens, positions, *targets)
    assert objective.backend == 'mxnet'
    assert not any(op.startswith('bert_') for op in graph_ops(objective))
    classifier = BERTClassifier(net, 2)
    classifier.output.initialize()
    assert classifier.backend == 'mxnet'
    classifier.backend = 'native'
    assert net.encoder.backend == 'native' and classifier.plan is net.plan
    classifier.hybridize()
    classifier(tokens, segments, valid_lens)
    net.backend = 'mxnet'  # the classifier's graph is dropped with its model's
    classifier(tokens, segments, valid_lens)
    assert not any(op.startswith('bert_') for op in graph_ops(classifier))
    net.backend = 'native'
    inference = classifier.for_inference()
    assert_close(inference(tokens, segments, valid_lens),
                 classifier(tokens, segments, valid_lens), atol=1e-5)
    assert 'bert_encoder_stack' in graph_ops(inference)  # asked for: 'native'


def test_no_gluon_private_attribute_is_set_in_the_package():
    """The plan and the inference graph use Gluon's public interface only."""
    import pathlib
    import re
    package = pathlib.Path(bg.__file__).parent
    private = re.compile(r'\.(_active|_flags|_cached_graph|_cached_op|_children|_reg_params)\s*=')
    offenders = [f'{path.name}: {line.strip()}' for path in package.rglob('*.py')
                 for line in path.read_text().splitlines() if private.search(line)]
    assert not offenders, offenders


def test_kernel_cache_is_keyed_by_the_cpu_and_compiler(monkeypatch):
    path = kernels.library_path()
    monkeypatch.setattr(kernels, 'cpu_identity', lambda: 'another CPU kind')
    assert kernels.library_path() != path
    monkeypatch.undo()
    monkeypatch.setattr(kernels, '_compiler_identity', lambda: 'g++ (other) 99')
    assert kernels.library_path() != path


def test_one_build_at_a_time_across_processes_and_threads(tmp_path, monkeypatch):
    builds = []

    def fake_build(target):
        builds.append(threading.get_ident())
        threading.Event().wait(0.3)  # a slow build: the other caller waits
        target.write_bytes(b'library')
        target.with_suffix('.sha1').write_text(kernels.sha1_of(target))
    monkeypatch.setattr(kernels, '_build', fake_build)
    target = tmp_path / 'libx.so'
    threads = [threading.Thread(target=kernels._locked_build, args=(target,))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and kernels._intact(target)


def test_a_truncated_cached_library_is_never_loaded(tmp_path):
    """A library cut short (a full disk, a killed copy) would die with a bus
    error when loaded: it fails its SHA-1 and is rebuilt, or, with no
    compiler, the model runs MXNet's operators with a reason."""
    assert kernels.native_available()
    built = kernels._state['path']
    cache = tmp_path / 'cache'
    (cache / 'kernels').mkdir(parents=True)
    copy = cache / 'kernels' / built.name
    shutil.copy(built, copy)
    shutil.copy(built.with_suffix('.sha1'), copy.with_suffix('.sha1'))
    with open(copy, 'r+b') as f:
        f.truncate(copy.stat().st_size // 2)
    assert not kernels._intact(copy)
    bin_dir = tmp_path / 'bin'  # a PATH without g++: no rebuild possible
    bin_dir.mkdir()
    script = """
import bert_gluon as bg
from bert_gluon import kernels
from conftest import TINY, make_batch
net = bg.HybridBERTModel(TINY)
net.initialize()
net(*make_batch())
print(net.backend, '|', kernels.unavailable_reason())
"""
    out = run_script(script, unset=['BERT_GLUON_NATIVE'], timeout=300,
                     BERT_GLUON_CACHE=str(cache), PATH=str(bin_dir))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith('mxnet |') and 'g++' in out.stdout, out.stdout
    # said once, not run silently slower
    assert out.stderr.count('the native CPU kernels are off') == 1, out.stderr[-2000:]
