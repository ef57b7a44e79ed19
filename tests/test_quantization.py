"""int8 for the ONNX engines (bert_gluon/quantization.py): real sentence
embeddings kept, the same answers on onnxruntime and OpenVINO and under
oneDNN's AVX2 cap, clear refusals."""
import subprocess
import sys

import numpy as onp
import pytest

from bert_gluon.quantization import INT8_OPS, quantize_onnx
from conftest import DATA, assert_close, run_script

pytestmark = pytest.mark.backend_dependent  # they export the twin


def _sentences(n):
    """Real text: WikiText-2's validation lines of more than eight words."""
    with open(f'{DATA}/wikitext-2/wiki.valid.tokens', encoding='utf-8') as f:
        return [line.strip() for line in f if len(line.split()) > 8][:n]


def _embeddings(model, texts):
    return onp.concatenate([
        model.run(*model.tokenizer.encode_pairs([(t, None) for t in texts[i:i + 16]], 128))
        ['sentence_embedding'] for i in range(0, len(texts), 16)])


@pytest.mark.slow
def test_minilm_in_int8_keeps_its_sentence_embeddings_on_both_engines():
    """Cosine to float32 over 64 real sentences: mean >= 0.99 (measured
    0.992 on both engines), none below 0.97 (measured 0.982). The engines
    run the graph's integer products each their own way (OpenVINO's answers
    differ from onnxruntime's by up to 0.1 of 0.2), so each is held to float32."""
    from bert_gluon.serving.engines import load_model
    texts = _sentences(64)
    float32 = load_model('all-MiniLM-L6-v2', 'onnxruntime', 'float32')
    reference = _embeddings(float32, texts)
    for engine in ('onnxruntime', 'openvino'):
        int8 = _embeddings(load_model('all-MiniLM-L6-v2', engine, 'int8'), texts)
        cosine = (int8 * reference).sum(1) / onp.linalg.norm(int8, axis=1) / onp.linalg.norm(
            reference, axis=1)
        assert cosine.mean() >= 0.99 and cosine.min() >= 0.97, (engine, cosine.mean(),
                                                                 cosine.min())


def test_quantize_refuses_what_it_cannot_quantize(tmp_path):
    with pytest.raises(ValueError, match='source: .*missing.onnx is not an ONNX file'):
        quantize_onnx(tmp_path / 'missing.onnx', tmp_path / 'out.onnx')
    (tmp_path / 'text.onnx').write_text('not a model')
    with pytest.raises(ValueError, match='source: .*text.onnx is not an ONNX model'):
        quantize_onnx(tmp_path / 'text.onnx', tmp_path / 'out.onnx')


@pytest.mark.slow
def test_the_cli_exports_int8_and_the_engines_agree_under_the_avx2_cap(tiny_pretrained,
                                                                        tmp_path):
    """`export --precision int8` writes the quantized graph; quantizing it
    again is refused; OpenVINO (whose oneDNN ONEDNN_MAX_CPU_ISA caps) gives
    the same int8 answers held to AVX2 as on this CPU."""
    import onnx
    path = tmp_path / 'int8.onnx'
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'export', '--from',
                          str(tiny_pretrained), '--format', 'onnx', '--precision', 'int8',
                          '--output', str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert set(INT8_OPS) <= ops and 'MatMul' in ops  # attention scores stay float32
    with pytest.raises(ValueError, match='is quantized already'):
        quantize_onnx(path, tmp_path / 'again.onnx')
    with pytest.raises(ValueError, match='exists; pass overwrite'):
        quantize_onnx(path, path)
    refused = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'export', '--from',
                              str(tiny_pretrained), '--format', 'symbol', '--precision', 'int8',
                              '--output', str(tmp_path / 'sym')], capture_output=True, text=True)
    assert refused.returncode == 2 and 'only --format onnx is quantized' in refused.stderr
    script = f"""
import numpy as np, openvino as ov
from bert_gluon.onnx_export import onnx_inputs
rng = np.random.RandomState(0)
ids = rng.randint(5, 40, (3, 16))
feed = onnx_inputs(ids, np.zeros_like(ids), np.array([16, 9, 4], 'float32'))
model = ov.Core().compile_model({str(path)!r}, 'CPU', {{'INFERENCE_PRECISION_HINT': 'f32'}})
np.save({str(tmp_path)!r} + '/' + __import__('os').environ.get('TAG') + '.npy',
        model(feed)[model.outputs[0]])
"""
    for tag, caps in (('here', {}), ('avx2', {'ONEDNN_MAX_CPU_ISA': 'AVX2'})):
        done = run_script(script, TAG=tag, unset=['BERT_GLUON_NATIVE'], **caps)
        assert done.returncode == 0, done.stderr[-2000:]
    assert_close(onp.load(tmp_path / 'avx2.npy'), onp.load(tmp_path / 'here.npy'), atol=1e-5)


def test_the_int8_model_follows_its_weights_and_a_corrupt_one_is_quantized_again(
        tiny_pretrained, tmp_path, monkeypatch):
    """model-int8.onnx is quantized once from the folder's float32 ONNX and
    kept; weights changed afterwards rebuild both (the int8 answers follow
    the new weights); a damaged int8 file is said and quantized again."""
    import shutil
    import bert_gluon.quantization as quantization
    from bert_gluon.pretrained import from_pretrained
    from bert_gluon.serving.engines import load_model
    folder = tmp_path / 'model'
    shutil.copytree(tiny_pretrained, folder)
    model = load_model(str(folder), 'onnxruntime', 'int8')
    inputs = model.tokenizer.encode_pairs([('a crane is flying', None)], 8)
    before = model.run(*inputs)['sentence_embedding']
    int8 = folder / 'onnx' / 'model-int8.onnx'
    assert int8.is_file()
    monkeypatch.setattr(quantization, 'quantize_onnx', lambda *a, **k: pytest.fail('again'))
    load_model(str(folder), 'openvino', 'int8')  # kept, and the other engine reads it too
    monkeypatch.undo()
    net, _, _ = from_pretrained(str(folder))
    net.encoder.token_embedding.weight.set_data(net.encoder.token_embedding.weight.data() * 2)
    net.save_parameters(str(folder / 'pretrained.params'))
    after = load_model(str(folder), 'onnxruntime', 'int8').run(*inputs)['sentence_embedding']
    assert onp.abs(after - before).max() > 1e-2  # the new weights answer
    int8.write_bytes(int8.read_bytes()[:-10])
    with pytest.warns(UserWarning, match=r'model-int8.onnx is corrupt .*quantizing it again'):
        again = load_model(str(folder), 'onnxruntime', 'int8').run(*inputs)['sentence_embedding']
    assert_close(again, after)
