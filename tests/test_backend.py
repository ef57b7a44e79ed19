"""One explicit backend per model: visible, resolved for where the
parameters live, re-resolved (graphs dropped) when they move; kernel
builds that cannot take the process down."""
import json
import os
import shutil
import threading

import mxnet as mx
import pytest

import bert_gluon as bg
from bert_gluon import backend as backend_module
from bert_gluon import kernels
from bert_gluon.backend import resolve_backend
from conftest import TINY, assert_close, make_batch, run_script

AUTO = 'mxnet' if os.environ.get('BERT_GLUON_NATIVE') == '0' else 'native'


def _graph_ops(block):
    """The operators of `block`'s traced graph."""
    _, out = block._cached_graph
    return {node['op'] for node in json.loads(out.tojson())['nodes']}


def test_resolution_rules():
    assert resolve_backend('auto', [mx.cpu()]) == AUTO
    assert resolve_backend('native', [mx.cpu(0), mx.cpu(1)]) == 'native'
    assert resolve_backend('mxnet', [mx.cpu()]) == 'mxnet'
    assert resolve_backend('auto', [mx.gpu(0)]) == 'mxnet'
    assert resolve_backend('auto', [mx.cpu()], 'float16') == 'mxnet'
    with pytest.raises(ValueError, match=r"backend='native' cannot run here: .*gpu\(0\)"):
        resolve_backend('native', [mx.cpu(), mx.gpu(0)])
    with pytest.raises(ValueError, match="backend='native' cannot run here: .*float64"):
        resolve_backend('native', [mx.cpu()], 'float64')
    with pytest.raises(ValueError, match="backend must be 'auto', 'native' or 'mxnet'"):
        bg.HybridBERTModel(TINY, backend='cuda')


def test_no_compilation_for_parameters_off_the_cpu(monkeypatch):
    monkeypatch.setattr(kernels, 'unavailable_reason',
                        lambda: pytest.fail('the kernels were asked for'))
    assert resolve_backend('auto', [mx.gpu(0)]) == 'mxnet'


def test_backend_is_visible_and_set_on_every_block():
    net = bg.HybridBERTModel(TINY, backend='mxnet')
    assert net.backend is None  # nothing to resolve for before initialization
    net.initialize()
    assert net.backend == 'mxnet'
    net.backend = 'native'
    blocks = [net.encoder, net.encoder.blks[0].attention, net.mlm.mlp[1]]
    assert [b.backend for b in blocks] == ['native'] * 3
    assert bg.HybridBERTModel(TINY).backend is None


def test_moving_a_traced_model_drops_native_operators(monkeypatch):
    """Parameters moved where the kernels cannot run (here cpu(1) stands in
    for a GPU) get MXNet's operators at the next call, not the graph
    traced with native ops."""
    net = bg.HybridBERTModel(TINY, backend='auto')
    net.initialize(mx.init.Normal(0.5))
    net.hybridize(static_alloc=True, static_shape=True)
    batch = make_batch()
    with mx.autograd.record(train_mode=False):  # the model's own graph
        expected = net(*batch)
    monkeypatch.setattr(backend_module, '_native_obstacle',
                        lambda contexts, dtype: None if contexts == (mx.cpu(0),)
                        else 'not a CPU kernels run on')
    assert net.backend == AUTO
    assert any(op.startswith('bert_') for op in _graph_ops(net)) == (AUTO == 'native')
    net.collect_params().reset_ctx(mx.cpu(1))
    batch = [a.as_in_ctx(mx.cpu(1)) for a in batch]
    with mx.autograd.record(train_mode=False):
        moved = net(*batch)
    assert net.backend == 'mxnet' and net.encoder.blks[1].backend == 'mxnet'
    assert not any(op.startswith('bert_') for op in _graph_ops(net))
    for a, e in zip(moved, expected):
        assert_close(a, e.as_in_ctx(mx.cpu(1)))
    explicit = bg.HybridBERTModel(TINY, backend='native')
    explicit.initialize(ctx=mx.cpu(1))
    with pytest.raises(ValueError, match="backend='native' cannot run here"):
        explicit(*batch)


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
    assert any(op.startswith('bert_') for op in _graph_ops(objective))
    net.backend = 'mxnet'
    with mx.autograd.record():
        objective(tokens, segments, valid_lens, positions, *targets)
    assert objective.backend == 'mxnet'
    assert not any(op.startswith('bert_') for op in _graph_ops(objective))
    classifier = BERTClassifier(net, 2)
    classifier.output.initialize()
    assert classifier.backend == 'mxnet'
    classifier.backend = 'native'
    assert net.encoder.backend == 'native'


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
