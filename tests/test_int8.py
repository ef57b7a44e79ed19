"""The twin in int8 (dtype='int8'): inference graphs' encoder blocks
quantized (kernels/blas.h), real sentence embeddings kept, float32 where
int8 does not pay or cannot run, training refused. The ONNX engines' int8:
test_quantization.py; the kernels against NumPy: test_kernels.py."""
import json
import warnings

import mxnet as mx
import numpy as onp
import pytest

import bert_gluon as bg
from bert_gluon import kernels
from conftest import DATA, TINY, assert_close, make_batch, run_script, tolerance

pytestmark = pytest.mark.skipif(kernels.int8_unavailable_reason('onednn') is not None,
                                reason=f"int8 products cannot run here: "
                                       f"{kernels.int8_unavailable_reason('onednn')}")
CONFIG = TINY.replace(dropout=0.0, activation='gelu', use_bias=True)


def _sentences(n):
    """Real text: WikiText-2's validation lines of more than eight words."""
    with open(f'{DATA}/wikitext-2/wiki.valid.tokens', encoding='utf-8') as f:
        return [line.strip() for line in f if len(line.split()) > 8][:n]


def _model(dtype, seed=0):
    mx.random.seed(seed)
    net = bg.HybridBERTModel(CONFIG.replace(dtype=dtype), backend='native')
    net.initialize(mx.init.Normal(0.1))
    return net


def _graph_products(inference):
    """{op: products attributes} of a traced inference graph."""
    seen = {}
    for node in json.loads(inference._cached_graph[1].tojson())['nodes']:
        if 'products' in node.get('attrs', {}):
            seen.setdefault(node['op'], set()).add(node['attrs']['products'])
    return seen


def test_int8_quantizes_the_inference_graphs_encoder_only(forced):
    """The inference plan runs the encoder blocks' products in int8 and the
    rest (pooler, heads) in float32; the model's own (trainable) graph runs
    float32 and says why. Its answers are near float32's, not equal."""
    forced('int8', 'onednn')
    net = _model('int8')
    batch = make_batch(CONFIG, batch_size=4, seq_len=12)
    inference = net.for_inference(static_shape=True)
    answers = inference(*batch)
    plan = inference.plan
    assert (plan.precision, plan.products, plan.request_products) == (
        'int8', 'onednn-int8', 'onednn-int8')
    float32_products = kernels.products_attribute('float32', plan.dense_provider)
    assert plan.dense_products == float32_products
    assert _graph_products(inference) == {'bert_encoder_stack': {'onednn-int8'},
                                          'bert_linear': {float32_products},
                                          'bert_dense': {float32_products}}
    assert 'float32 by' in plan.describe() and 'int8 by onednn' in plan.describe()
    assert net.plan.precision == 'float32'
    assert "dtype='int8' quantizes inference graphs (for_inference()) only" in net.plan.why
    reference = _model('float32')
    expected = reference.for_inference(static_shape=True)(*batch)
    for ours, theirs in zip(answers, expected):
        assert_close(ours, theirs, atol=tolerance('int8'), rtol=0)
    assert not onp.allclose(answers[0].asnumpy(), expected[0].asnumpy(), atol=1e-4)


def test_int8_runs_float32_where_it_does_not_pay_and_says_so_once(forced):
    """Where int8 loses to float32 here (forced: BERT_GLUON_INT8_PROVIDER=
    float32, as 'auto' decides on such a CPU), dtype='int8' runs the float32
    products, answers float32's exactly, and warns once per process."""
    forced('int8', 'float32')
    batch = make_batch(CONFIG, batch_size=2, seq_len=8)
    with pytest.warns(UserWarning, match="dtype='int8' runs its products in float32 on this "
                                         "CPU: forced by BERT_GLUON_INT8_PROVIDER"):
        first = _model('int8').for_inference()(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once
        second = _model('int8')
        answers = second.for_inference()(*batch)
    assert second.for_inference().plan.precision == 'float32'
    expected = _model('float32').for_inference()(*batch)
    for a, b, e in zip(first, answers, expected):
        onp.testing.assert_array_equal(a.asnumpy(), e.asnumpy())
        onp.testing.assert_array_equal(b.asnumpy(), e.asnumpy())


def test_int8_is_refused_where_it_cannot_run_and_for_training():
    """MXNet's operators (a GPU's path) have no int8: refused naming the
    dtype; training asks for a trainable precision."""
    from bert_gluon.finetuning import finetune
    from bert_gluon.training import check_run_arguments
    net = bg.HybridBERTModel(CONFIG.replace(dtype='int8'), backend='mxnet')
    net.initialize()
    with pytest.raises(ValueError, match="dtype='int8' cannot run here: it runs on the "
                                         "'native' backend"):
        net(*make_batch(CONFIG))
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'bfloat16'\) for "
                                         "training, got 'int8': int8 quantizes"):
        check_run_arguments(1e-3, dtype='int8', batch_size=4)
    with pytest.raises(ValueError, match="dtype must be one of"):
        finetune('MRPC', (net, None), dtype='int8')


@pytest.mark.slow
@pytest.mark.backend_dependent  # served as users load it: backend 'auto'
def test_minilm_in_int8_on_the_twin_keeps_its_sentence_embeddings():
    """all-MiniLM-L6-v2 served by the twin in int8 (engine 'mxnet'): cosine
    to float32 over 64 real sentences, mean and minimum >= 0.99 (measured
    0.9975 and 0.9949 over 512 by bench/accuracy_int8.py; each activation row has
    its own scale)."""
    from bert_gluon.serving.engines import load_model
    texts = _sentences(64)

    def embeddings(precision):
        model = load_model('all-MiniLM-L6-v2', 'mxnet', precision)
        return model, onp.concatenate([
            model.run(*model.tokenizer.encode_pairs([(t, None) for t in texts[i:i + 16]], 128))
            ['sentence_embedding'] for i in range(0, len(texts), 16)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('BERT_GLUON_INT8_PROVIDER', 'onednn')
        patch.setenv('BERT_GLUON_NATIVE', '1')  # the twin's int8 is its kernels'
        bg.kernels.providers.forget()
        model, int8 = embeddings('int8')
        _, reference = embeddings('float32')
    bg.kernels.providers.forget()
    assert model.info['plan']['precision'] == 'int8'
    cosine = (int8 * reference).sum(1) / onp.linalg.norm(int8, axis=1) / onp.linalg.norm(
        reference, axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.99, (cosine.mean(), cosine.min())


@pytest.mark.slow
def test_minilm_in_int8_answers_the_same_under_the_avx2_caps():
    """The same int8 model under MKL_ENABLE_INSTRUCTIONS=AVX2 and
    ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's int8 on vpmaddubsw, which saturates
    16-bit pair sums that 7-bit weights never reach) gives this CPU's
    encoder states within 1e-5 of their scale."""
    script = """
import numpy as np, os
from bert_gluon.pretrained import from_pretrained
from bert_gluon import kernels
net, tokenizer, _ = from_pretrained('all-MiniLM-L6-v2', dtype='int8')
net.backend = 'native'
inference = net.for_inference()
tokens, segments, lens = (__import__('mxnet').np.array(a) for a in tokenizer.encode_pairs(
    [('the tower was completed in 1889', None), ('a crane is flying over the river', None)], 16))
np.save(os.environ['OUT'], inference.encoder(tokens, segments, lens).asnumpy())
print(inference.plan.products, kernels.onednn_matmul('int8'))
"""
    import tempfile
    answers = {}
    with tempfile.TemporaryDirectory() as folder:
        for tag, caps in (('here', {}), ('avx2', {'MKL_ENABLE_INSTRUCTIONS': 'AVX2',
                                                   'ONEDNN_MAX_CPU_ISA': 'AVX2'})):
            out = run_script(script, OUT=f'{folder}/{tag}.npy', BERT_GLUON_INT8_PROVIDER='onednn',
                             unset=['BERT_GLUON_NATIVE'], **caps)
            assert out.returncode == 0, out.stderr[-2000:]
            answers[tag] = (out.stdout.split(), onp.load(f'{folder}/{tag}.npy'))
    assert answers['avx2'][0] == ['onednn-int8', 'gemm:jit'], answers['avx2'][0]
    assert answers['here'][0][0] == 'onednn-int8'
    assert_close(answers['avx2'][1], answers['here'][1], atol=1e-5, rtol=0)


@pytest.mark.backend_dependent  # the folder is served as users load it: backend 'auto'
def test_quantize_records_int8_on_real_text_and_serving_checks_the_record(tiny_pretrained,
                                                                          tmp_path,
                                                                          monkeypatch, capsys):
    """`bert-gluon quantize --from FOLDER --calibrate FILE` measures int8
    against float32 on the file's sentences and records it (int8.json, with
    the weights' digest); serving the folder in int8 reads the record and
    refuses it once the weights change after calibration. An empty file, or
    text in another language than the model's, is refused by name."""
    import shutil
    from bert_gluon.cli import main
    from bert_gluon.pretrained import from_pretrained
    from bert_gluon.quantization import CALIBRATION_FILE
    from bert_gluon.serving.engines import load_model
    monkeypatch.setenv('BERT_GLUON_NATIVE', '1')  # int8 is the kernels'
    folder = tmp_path / 'model'
    shutil.copytree(tiny_pretrained, folder)
    texts = tmp_path / 'texts.txt'
    texts.write_text('\n'.join(_sentences(40)), encoding='utf-8')
    status = main(['quantize', '--from', str(folder), '--calibrate', str(texts),
                   '--min-cosine', '0.5', '--no-progress'])
    said = capsys.readouterr().out
    record = json.loads((folder / CALIBRATION_FILE).read_text())
    assert status == 0 and record['passed'] and 'passed' in said, said
    assert record['texts'] == 40 and record['kind'] == 'encoder'
    assert 0.5 <= record['cosine_min'] <= record['cosine_mean'] <= 1.0
    assert record['plan']['precision'] == 'int8'
    assert load_model(str(folder), 'mxnet', 'int8').plan['precision'] == 'int8'
    net, _, _ = from_pretrained(str(folder))  # the weights change after calibration
    net.encoder.token_embedding.weight.set_data(net.encoder.token_embedding.weight.data() * 2)
    net.save_parameters(str(folder / 'pretrained.params'))
    with pytest.raises(ValueError, match='int8.json was measured on other weights: the model '
                                         'changed after calibration'):
        load_model(str(folder), 'mxnet', 'int8')
    load_model(str(folder), 'mxnet', 'float32')  # float32 does not read the record
    strict = main(['quantize', '--from', str(folder), '--calibrate', str(texts),
                   '--min-cosine', '1.0', '--no-progress'])  # again: a bar int8 cannot meet
    assert strict == 1 and 'MISSED THE BAR' in capsys.readouterr().out
    with pytest.warns(UserWarning, match='int8 missed its bar on the calibration text'):
        load_model(str(folder), 'mxnet', 'int8')
    (tmp_path / 'empty.txt').write_text('\n \n', encoding='utf-8')
    (tmp_path / 'russian.txt').write_text('Башня была построена в 1889 году и сегодня является '
                                          'знаменитой достопримечательностью Парижа.\n',
                                          encoding='utf-8')
    for name, message in (('empty.txt', 'holds no text'),
                          ('russian.txt', "unknown to the model's vocabulary")):
        with pytest.raises(SystemExit) as exit_:
            main(['quantize', '--from', str(folder), '--calibrate', str(tmp_path / name)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
