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


def _classifier():
    from bert_gluon.classifier import BERTClassifier
    clf = BERTClassifier(_minilm(), 3, labels=('entailment', 'contradiction', 'neutral'))
    clf.output.initialize(mx.init.Xavier())
    return clf


def _feed(tokens, segments, valid_lens, positions=None):
    """The Hugging Face inputs of a twin batch: int64, a right-padded mask."""
    T = tokens.shape[1]
    feed = {'input_ids': tokens.asnumpy().astype('int64'),
            'token_type_ids': segments.asnumpy().astype('int64'),
            'attention_mask': (onp.arange(T)[None] < valid_lens.asnumpy()[:, None])
            .astype('int64')}
    if positions is not None:
        feed['masked_positions'] = positions.asnumpy().astype('int64')
    return feed


def _twin_outputs(net, heads, tokens, segments, valid_lens, positions):
    """What the ONNX outputs must equal, computed by the twin."""
    from bert_gluon.classifier import BERTClassifier
    from bert_gluon.represent import mean_pool
    if isinstance(net, BERTClassifier):
        return [net(tokens, segments, valid_lens)]
    if heads:
        return list(net(tokens, segments, valid_lens, positions))
    X = net.encoder(tokens, segments, valid_lens)
    return [X, net.nsp.mlp[0](X[:, 0, :]), mean_pool(X, valid_lens)]


def _runners(path):
    """onnxruntime and OpenVINO (f32) sessions of one file: name -> feed -> outputs."""
    import onnxruntime as ort
    import openvino as ov
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    compiled = ov.Core().compile_model(path, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    return {'onnxruntime': lambda feed: session.run(None, feed),
            'openvino': lambda feed: [compiled(feed)[o] for o in compiled.outputs]}


@pytest.mark.slow
@pytest.mark.backend_dependent
@pytest.mark.parametrize('build, heads', [(_book_model, False), (_book_model, True),
                                          (_minilm, False), (_classifier, False)],
                         ids=['book', 'book-heads', 'minilm', 'classifier'])
def test_onnx_is_a_standard_bert_that_engines_run_to_the_twins_numbers(tmp_path, capfd,
                                                                     build, heads):
    """Hugging Face's input names and dtypes, named outputs, weights as
    initializers only (onnxruntime loads it without a warning), opset 17;
    batches 1, 3, 8 and lengths 5, 33, 128, none of them traced: onnxruntime
    and OpenVINO within 1e-5 of the twin's outputs' scale."""
    import onnx
    import onnxruntime as ort
    from bert_gluon.classifier import BERTClassifier
    from bert_gluon.onnx_export import OUTPUTS
    net = build()
    kind = ('classifier' if isinstance(net, BERTClassifier) else
            'pretraining' if heads else 'encoder')
    path = export_onnx(net, str(tmp_path / 'bert.onnx'), heads=heads)
    model = onnx.load(path)
    assert model.opset_import[0].version == 17
    weights = {t.name for t in model.graph.initializer}
    assert not weights & {i.name for i in model.graph.input}
    assert weights <= {name for node in model.graph.node for name in node.input}
    capfd.readouterr()
    ort.set_default_logger_severity(2)  # warnings and up, onnxruntime's default
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    said = capfd.readouterr().err
    assert 'onnxruntime' not in said, said[-2000:]
    names = ['input_ids', 'token_type_ids', 'attention_mask'] + (['masked_positions']
                                                                  if heads else [])
    assert [(i.name, i.type) for i in session.get_inputs()] == [(n, 'tensor(int64)')
                                                                 for n in names]
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS[kind])
    runners = _runners(path)
    for batch_size, seq_len in ((1, 5), (3, 33), (8, 128)):
        batch = make_batch(net.config, batch_size=batch_size, seq_len=seq_len, num_pred=4)
        expected = _twin_outputs(net, heads, *batch)
        feed = _feed(*batch[:3], batch[3] if heads else None)
        for engine, run in runners.items():
            for name, ours, theirs in zip(OUTPUTS[kind], run(feed), expected):
                assert ours.shape == theirs.shape, (engine, name)
                assert_close(ours, theirs, atol=1e-5, rtol=0, err_msg=f'{engine} {name}')


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_onnx_in_openvino_bf16_is_within_the_bf16_tolerance(tmp_path):
    import openvino as ov
    from conftest import BF16_TOLERANCE
    net = _minilm()
    path = export_onnx(net, str(tmp_path / 'minilm.onnx'))
    compiled = ov.Core().compile_model(path, 'CPU', {'INFERENCE_PRECISION_HINT': 'bf16'})
    batch = make_batch(net.config, batch_size=3, seq_len=33)
    expected = _twin_outputs(net, False, *batch)
    got = compiled(_feed(*batch[:3]))
    for output, theirs in zip(compiled.outputs, expected):
        assert_close(got[output], theirs, atol=BF16_TOLERANCE, rtol=0,
                     err_msg=output.get_any_name())


@pytest.mark.slow
@pytest.mark.backend_dependent
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


@pytest.mark.slow
@pytest.mark.backend_dependent
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
    # --heads, and a classifier folder (its logits)
    import onnx
    from bert_gluon.classifier import BERTClassifier, save_classifier
    net, vocab, _ = from_pretrained(str(tiny_pretrained))
    clf = BERTClassifier(net, 2, labels=('no', 'yes'))
    clf.output.initialize()
    (tmp_path / 'clf').mkdir()
    save_classifier(clf, tmp_path / 'clf', vocab)
    for source, flags, outputs in ((tiny_pretrained, ['--heads'],
                                    ['last_hidden_state', 'mlm_logits', 'nsp_logits']),
                                   (tmp_path / 'clf', [], ['logits'])):
        target = tmp_path / f'{len(outputs)}.onnx'
        out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'export', '--from',
                              str(source), '--format', 'onnx', '--output', str(target), *flags],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert [o.name for o in onnx.load(str(target)).graph.output] == outputs


@pytest.mark.backend_dependent
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
    assert not set(CONVERTERS) & set(MXNetGraph.registry_.get(ONNX_OPSET, {}))


@pytest.mark.backend_dependent
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


@pytest.mark.backend_dependent
def test_heads_a_checkpoint_lacks_are_never_answered_with(tmp_path):
    """all-MiniLM-L6-v2 has no MLM head and no NSP output layer: its config
    says so, the model refuses pred_positions and answers no NSP logits, and
    every export that would carry the heads fails naming why; the encoder's
    export and a classifier built on it (the pooler is the checkpoint's)
    still work. The mark survives save and load."""
    from bert_gluon.classifier import BERTClassifier, load_classifier, save_classifier
    net, tokenizer, config = from_pretrained('all-MiniLM-L6-v2')
    assert config.pretraining_heads is False and net.config.pretraining_heads is False
    arrays = [mx.np.array(a) for a in tokenizer.encode_pairs([('a short sentence', None)], 8)]
    positions = mx.np.zeros((1, 2), dtype='int32')
    for model in (net, net.for_inference()):
        with pytest.raises(ValueError, match=r"pred_positions: this model's MLM and NSP heads "
                                             'are not trained'):
            model(*arrays, positions)
        encoded_X, mlm_Y_hat, nsp_Y_hat = model(*arrays)
        assert encoded_X.shape == (1, 8, 384) and mlm_Y_hat is None and nsp_Y_hat is None
    with pytest.raises(ValueError, match="heads=True: this model's MLM and NSP heads"):
        export_onnx(net, str(tmp_path / 'heads.onnx'), heads=True)
    assert not (tmp_path / 'heads.onnx').exists()
    with pytest.raises(ValueError, match=r'export_model \(its graph carries the MLM and NSP '
                                         r'heads\): this model'):
        bg.export_model(net, str(tmp_path / 'sym' / 'bert'))
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'export', '--from',
                          'all-MiniLM-L6-v2', '--format', 'onnx', '--heads', '--output',
                          str(tmp_path / 'cli.onnx')], capture_output=True, text=True)
    assert out.returncode == 2 and 'heads are not trained' in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / 'cli.onnx').exists()
    classifier = BERTClassifier(net, 2)
    classifier.output.initialize()
    assert classifier(*arrays).shape == (1, 2)
    (tmp_path / 'clf').mkdir()
    save_classifier(classifier, tmp_path / 'clf', tokenizer)
    again, _, _ = load_classifier(tmp_path / 'clf')
    assert again.config.pretraining_heads is False
    assert bg.BERTConfig.from_dict(net.config.to_dict()).pretraining_heads is False
    # a model whose heads were trained answers with them
    trained = bg.HybridBERTModel(TINY)
    trained.initialize()
    assert trained(*make_batch())[1] is not None


def _left_padded(feed, pad):
    """The same rows with `pad` padding tokens moved from the end to the front."""
    moved = {}
    for name, array in feed.items():
        if name == 'masked_positions':
            moved[name] = array + pad
        else:
            moved[name] = onp.roll(array, pad, axis=1)
    return moved


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_onnx_attention_mask_is_a_key_mask_on_either_side_as_hugging_face_reads_it(tmp_path):
    """MiniLM's ONNX given left padding (and a mask with a hole) answers as
    given right padding, on onnxruntime and OpenVINO, and as Hugging Face's
    BertModel given the same mask with positions counted over the tokens."""
    import torch
    from transformers import BertModel
    from bert_gluon.pretrained import minilm_folder
    path = export_onnx(_minilm(), tmp_path / 'minilm.onnx')
    ids = onp.array([[101, 1037, 2158, 3248, 1037, 2858, 1012, 102, 0, 0, 0],
                     [101, 2009, 102, 2054, 102, 0, 0, 0, 0, 0, 0]], 'int64')
    lengths = (ids != 0).sum(1)
    right = {'input_ids': ids, 'token_type_ids': onp.array([[0] * 11, [0, 0, 0, 1, 1] + [0] * 6]),
             'attention_mask': (ids != 0).astype('int64')}
    left = {name: onp.stack([onp.roll(row, 11 - n) for row, n in zip(array, lengths)])
            for name, array in right.items()}
    # Hugging Face, the same left-padded mask, positions counted over the tokens
    hf = BertModel.from_pretrained(str(minilm_folder())).eval()
    mask = torch.tensor(left['attention_mask'])
    with torch.no_grad():
        states = hf(input_ids=torch.tensor(left['input_ids']),
                    token_type_ids=torch.tensor(left['token_type_ids']), attention_mask=mask,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0)).last_hidden_state.numpy()
    for engine, run in _runners(path).items():
        r = dict(zip(('last_hidden_state', 'pooler_output', 'sentence_embedding'), run(right)))
        l_ = dict(zip(('last_hidden_state', 'pooler_output', 'sentence_embedding'), run(left)))
        for b, n in enumerate(lengths):
            assert_close(l_['last_hidden_state'][b, 11 - n:], r['last_hidden_state'][b, :n],
                         err_msg=f'{engine}: row {b}, left against right padding')
        for name in ('pooler_output', 'sentence_embedding'):
            assert_close(l_[name], r[name], err_msg=f'{engine}: {name}')
        for b, n in enumerate(lengths):
            assert_close(l_['last_hidden_state'][b, 11 - n:], states[b, 11 - n:],
                         err_msg=f'{engine}: row {b} against Hugging Face')
        # a hole: the token at index 3 of row 0 masked out = the row without it
        holed = {k: v[:1].copy() for k, v in right.items()}
        holed['attention_mask'][0, 3] = 0
        shorter = {k: onp.concatenate([v[:1, :3], v[:1, 4:], v[:1, :1] * 0], 1)
                   for k, v in right.items()}
        h = run(holed)[0][0]
        s = run(shorter)[0][0]
        assert_close(onp.concatenate([h[:3], h[4:8]]), s[:7], err_msg=f'{engine}: a hole')


@pytest.mark.backend_dependent
def test_onnx_heads_read_masked_positions_where_the_mask_puts_the_tokens(tmp_path):
    net = bg.HybridBERTModel(TINY)
    net.initialize(mx.init.Xavier())
    path = export_onnx(net, tmp_path / 'heads.onnx', heads=True)
    tokens, segments, valid_lens, positions = make_batch(batch_size=2, seq_len=9)
    valid_lens[:] = 6
    right = _feed(tokens, segments, valid_lens, positions % 6)
    left = _left_padded(right, 3)
    for engine, run in _runners(path).items():
        r, l_ = run(right), run(left)
        assert_close(l_[1], r[1], err_msg=f'{engine}: mlm_logits')
        assert_close(l_[2], r[2], err_msg=f'{engine}: nsp_logits')


@pytest.mark.backend_dependent
def test_onnx_refuses_a_sequence_longer_than_max_len_naming_it(tmp_path):
    """ONNX cannot raise; a sequence the model has no position for fails in
    the engine at a node whose name says why, instead of giving numbers."""
    net = bg.HybridBERTModel(TINY.replace(max_len=12))
    net.initialize(mx.init.Xavier())
    path = export_onnx(net, tmp_path / 'short.onnx')
    for engine, run in _runners(path).items():
        fits = _feed(*make_batch(batch_size=2, seq_len=12)[:3])
        assert run(fits)[0].shape == (2, 12, TINY.num_hiddens)
        with pytest.raises(Exception, match='sequence_longer_than_max_len_12'):
            run(_feed(*make_batch(batch_size=2, seq_len=13)[:3]))
