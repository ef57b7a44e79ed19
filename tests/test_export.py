"""Export: ONNX with dynamic batch and length that onnxruntime runs to the
twin's numbers; the Hugging Face format that transformers loads to equal
outputs; the `bert-gluon export` command."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as onp
import pytest

import bert_gluon as bg
from bert_gluon.huggingface import export_huggingface
from bert_gluon.onnx_export import export_onnx
from bert_gluon.pretrained import from_pretrained
from conftest import TINY, assert_close, make_batch

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def _book_model():
    net = bg.HybridBERTModel(bg.get_config('book.demo'))  # the book's 768/1024/4/2
    net.initialize(mx.init.Xavier())
    return net


def _minilm():
    return from_pretrained('all-MiniLM-L6-v2')[0]


@pytest.mark.parametrize('build', [_book_model, _minilm], ids=['book', 'minilm'])
def test_onnx_runs_in_onnxruntime_with_any_batch_and_length(tmp_path, build):
    """Batches 1, 3, 8 and lengths 5, 33, 128, none of them the traced (2, 8):
    onnxruntime's outputs within 1e-4 of the twin's (relative to their scale)."""
    import onnxruntime as ort
    net = build()
    path = export_onnx(net, str(tmp_path / 'bert.onnx'))
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [i.shape for i in session.get_inputs()] == [
        ['batch', 'length'], ['batch', 'length'], ['batch'], ['batch', 'predictions']]
    for batch_size, seq_len in ((1, 5), (3, 33), (8, 128)):
        batch = make_batch(net.config, batch_size=batch_size, seq_len=seq_len, num_pred=4)
        expected = net(*batch)
        feed = {i.name: a.asnumpy() for i, a in zip(session.get_inputs(), batch)}
        for ours, theirs in zip(session.run(None, feed), expected):
            assert ours.shape == theirs.shape
            assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_huggingface_format_loads_in_transformers_with_equal_outputs(tmp_path):
    import torch
    from transformers import BertModel
    net, tokenizer, _ = from_pretrained('all-MiniLM-L6-v2')
    folder = export_huggingface(net, tmp_path / 'hf', tokenizer)
    model, info = BertModel.from_pretrained(str(folder), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys']
    arrays = tokenizer.encode_pairs([('A man plays a guitar.', 'Music is played.'),
                                     ('Hello there.', None)], 24)
    mask = (onp.arange(24)[None] < arrays[2][:, None]).astype('int64')
    with torch.no_grad():
        out = model.eval()(input_ids=torch.from_numpy(arrays[0].astype('int64')),
                           token_type_ids=torch.from_numpy(arrays[1].astype('int64')),
                           attention_mask=torch.from_numpy(mask))
    encoded, _, _ = net(*[mx.np.array(a) for a in arrays])
    for row, n in enumerate(arrays[2].astype(int)):
        assert_close(encoded.asnumpy()[row, :n], out.last_hidden_state.numpy()[row, :n])
    reloaded, _, _ = from_pretrained(str(folder))  # and back into the twin
    assert_close(reloaded(*[mx.np.array(a) for a in arrays])[0], encoded)
    with pytest.raises(ValueError, match='real-BERT configs'):
        book = bg.HybridBERTModel(TINY)
        book.initialize()
        export_huggingface(book, tmp_path / 'book')


def test_cli_export_writes_each_format(tiny_pretrained, tmp_path):
    for fmt, output, made in (('symbol', tmp_path / 'sym' / 'bert', 'bert-symbol.json'),
                              ('onnx', tmp_path / 'bert.onnx', 'bert.onnx')):
        out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'export', '--from',
                              str(tiny_pretrained), '--format', fmt, '--output', str(output)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert (output.parent / made).is_file()
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'export', '--from',
                          str(tiny_pretrained), '--format', 'huggingface', '--output',
                          str(tmp_path / 'hf')], capture_output=True, text=True)
    assert out.returncode == 2 and 'real-BERT configs' in out.stderr


def test_onnx_export_leaves_mxnet_and_onnx_as_they_were(tmp_path):
    """The converters are registered only while an export runs: MXNet's
    registry and onnx's functions are the same objects before and after."""
    import onnx.checker
    import onnx.defs
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from bert_gluon.onnx_export import CONVERTERS, ONNX_OPSET
    before = {opset: dict(table) for opset, table in MXNetGraph.registry_.items()}
    functions = (onnx.defs.onnx_opset_version, onnx.checker.check_graph)
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    export_onnx(net, str(tmp_path / 'tiny.onnx'))
    assert {opset: dict(table) for opset, table in MXNetGraph.registry_.items()} == before
    assert (onnx.defs.onnx_opset_version, onnx.checker.check_graph) == functions
    assert not set(CONVERTERS) & set(MXNetGraph.registry_[ONNX_OPSET])


def test_exports_refuse_what_they_would_overwrite_or_cannot_write(tmp_path):
    """An existing file, a folder where a file goes, a place that cannot
    hold files, a user's non-empty folder: each refused naming it, nothing
    written; overwrite=True replaces; files get the usual mode, not 0600."""
    import stat
    from bert_gluon.export import export_model
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    target = tmp_path / 'm.onnx'
    export_onnx(net, str(target))
    with pytest.raises(ValueError, match=r'path: .*m.onnx exists; pass overwrite'):
        export_onnx(net, str(target))
    export_onnx(net, str(target), overwrite=True)
    with pytest.raises(ValueError, match=r'path: .* is a folder; expected a file path'):
        export_onnx(net, str(tmp_path))
    (tmp_path / 'a_file').write_text('x')
    with pytest.raises(ValueError, match=r'path: .*a_file is a file, not a folder'):
        export_onnx(net, str(tmp_path / 'a_file' / 'm.onnx'))
    with pytest.raises(ValueError, match=r'prefix: .*a_file is a file, not a folder'):
        export_model(net, str(tmp_path / 'a_file' / 'bert'))
    export_model(net, str(tmp_path / 'sym' / 'bert'))
    with pytest.raises(ValueError, match=r'prefix: .*bert-symbol.json exists'):
        export_model(net, str(tmp_path / 'sym' / 'bert'))
    minilm, tokenizer, _ = from_pretrained('all-MiniLM-L6-v2')
    users = tmp_path / 'users'
    users.mkdir()
    (users / 'config.json').write_text('{"mine": true}')
    with pytest.raises(ValueError, match=r'folder: .*users is not empty \(config.json\)'):
        export_huggingface(minilm, users, tokenizer)
    assert (users / 'config.json').read_text() == '{"mine": true}'
    folder = export_huggingface(minilm, tmp_path / 'hf', tokenizer)
    umask = os.umask(0)
    os.umask(umask)
    for name in ('model.safetensors', 'config.json', 'vocab.txt'):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
