"""Real checkpoints: all-MiniLM-L6-v2 equals Hugging Face, layer by layer."""
import os

import mxnet as mx
import numpy as onp
import pytest

from bert_gluon.huggingface import (HF_TO_TWIN, config_from_hf, config_to_hf, hf_name,
                                    load_hf_bert, twin_name)
from bert_gluon.pretrained import from_pretrained, list_pretrained, minilm_folder
from bert_gluon.represent import encode_batch
from conftest import assert_close, graph_ops

os.environ.setdefault('HF_HUB_OFFLINE', '1')

PAIRS = [('A man is playing a guitar.', 'Someone plays music on a stage.'),
         ('The cat sat on the mat near the window today.', 'No.'),
         ('short', 'a much longer second sentence that goes on and on for a while, '
                   'with commas, "quotes" and numbers like 1,000')]
MAX_LEN = 40


@pytest.fixture(scope='module')
def minilm():
    return from_pretrained('all-MiniLM-L6-v2')


@pytest.fixture(scope='module')
def reference():
    import torch
    from transformers import BertModel, BertTokenizer
    folder = str(minilm_folder())
    model = BertModel.from_pretrained(folder).eval()
    tokenizer = BertTokenizer.from_pretrained(folder)
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding='max_length',
                    max_length=MAX_LEN, truncation='longest_first', return_tensors='pt')
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return enc, out


def test_minilm_config(minilm):
    _, tokenizer, config = minilm
    assert (config.num_layers, config.num_hiddens, config.num_heads,
            config.ffn_num_hiddens) == (6, 384, 12, 1536)
    assert config.activation == 'gelu' and config.layer_norm_eps == 1e-12
    assert config.position_embedding == 'learned' and config.use_bias
    assert tokenizer.vocab_size == config.vocab_size == 30522
    assert 'all-MiniLM-L6-v2' in list_pretrained()


def test_wordpiece_matches_hugging_face(minilm, reference):
    _, tokenizer, _ = minilm
    enc, _ = reference
    tokens, segments, lens = tokenizer.encode_pairs(PAIRS, MAX_LEN)
    onp.testing.assert_array_equal(tokens, enc['input_ids'].numpy())
    onp.testing.assert_array_equal(segments, enc['token_type_ids'].numpy())
    onp.testing.assert_array_equal(lens, enc['attention_mask'].numpy().sum(1))
    assert len(set(lens)) == len(PAIRS)  # a padded batch of different lengths


@pytest.mark.backend_dependent
def test_every_layer_and_pooler_equal_hugging_face(minilm, reference, backend, request):
    net, tokenizer, _ = minilm
    enc, out = reference
    net.backend = backend
    request.addfinalizer(lambda: (net.hybridize(active=False), setattr(net, 'backend', 'auto')))
    arrays = [mx.np.array(a) for a in tokenizer.encode_pairs(PAIRS, MAX_LEN)]
    states = net.encoder.hidden_states(*arrays)
    assert len(states) == len(out.hidden_states) == 7
    lens = arrays[2].asnumpy().astype(int)
    for layer, (ours, theirs) in enumerate(zip(states, out.hidden_states)):
        for row, n in enumerate(lens):
            assert_close(ours.asnumpy()[row, :n], theirs.numpy()[row, :n],
                                        atol=1e-5, rtol=0, err_msg=f'layer {layer}')
    inference = net.for_inference(static_shape=True)
    encoded_X, _, _ = inference(*arrays)
    # the native backend runs the fused blocks, MXNet's does not
    assert ('bert_encoder_stack' in graph_ops(inference.encoder)) == (backend == 'native')
    pooled = net.nsp.mlp[0](encoded_X[:, 0, :])
    assert_close(pooled.asnumpy(), out.pooler_output.numpy(), atol=1e-5, rtol=0)
    for row, n in enumerate(lens):
        assert_close(encoded_X.asnumpy()[row, :n],
                                    out.last_hidden_state.numpy()[row, :n], atol=1e-5, rtol=0)


@pytest.mark.backend_dependent
def test_sentence_embeddings_equal_reference_mean_pooling(minilm, reference):
    net, tokenizer, _ = minilm
    enc, out = reference
    ours = encode_batch(net, PAIRS, tokenizer, max_len=MAX_LEN, pooling='mean')
    mask = enc['attention_mask'].numpy()[:, :, None].astype('float32')
    theirs = (out.last_hidden_state.numpy() * mask).sum(1) / mask.sum(1)
    assert_close(ours, theirs, atol=1e-5, rtol=0)
    # similar sentences are closer than unrelated ones
    single = encode_batch(net, ['A man plays a guitar.', 'Someone is playing music.',
                                'The stock market fell sharply.'], tokenizer, pooling='mean')
    unit = single / onp.linalg.norm(single, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.2


def _write_hf_folder(folder, tensors):
    from safetensors.numpy import save_file
    import shutil
    src = minilm_folder()
    folder.mkdir()
    shutil.copy(src / 'config.json', folder / 'config.json')
    shutil.copy(src / 'vocab.txt', folder / 'vocab.txt')
    save_file(tensors, str(folder / 'model.safetensors'))
    return folder


def test_converter_fails_on_unknown_or_missing_tensors(tmp_path):
    from safetensors.numpy import load_file
    tensors = load_file(str(minilm_folder() / 'model.safetensors'))
    extra = dict(tensors, **{'cls.predictions.bias': onp.zeros(3, 'float32')})
    with pytest.raises(ValueError, match='neither used nor skipped.*cls.predictions.bias'):
        load_hf_bert(_write_hf_folder(tmp_path / 'extra', extra))
    missing = {k: v for k, v in tensors.items() if 'layer.3.output.dense.weight' not in k}
    with pytest.raises(ValueError, match='encoder.blks.3.ffn.dense2.weight'):
        load_hf_bert(_write_hf_folder(tmp_path / 'missing', missing))
    assert len(HF_TO_TWIN) >= 16


def test_name_table_and_config_fields_read_both_ways(minilm):
    """One table each: every twin parameter the checkpoint fills maps to a
    Hugging Face name and back; the config survives the round trip."""
    net, _, config = minilm
    from safetensors.numpy import load_file
    hf_names = set(load_file(str(minilm_folder() / 'model.safetensors'))) - {
        'embeddings.position_ids'}
    mapped = {}
    for name in net._collect_params_with_prefix():
        theirs, change = hf_name(name)
        if theirs is not None:
            assert twin_name(theirs) == (name, change)
            mapped[theirs] = name
    assert set(mapped) == hf_names
    assert hf_name('mlm.mlp.2.weight') == (None, None)
    assert config_from_hf(config_to_hf(config)) == config.replace(dtype='float32')


def test_a_vocabulary_cut_short_is_refused_in_every_format(tmp_path, minilm, tiny_pretrained):
    """A vocab.txt / vocab.json shorter than the embedding's rows (every word
    past its end would read another word's row, or [UNK]) is refused naming
    the file: Hugging Face folders, pretrain folders, classifier folders."""
    import json
    import shutil
    from bert_gluon.classifier import BERTClassifier, load_classifier, save_classifier
    hf = tmp_path / 'hf'
    shutil.copytree(minilm_folder(), hf)
    lines = (hf / 'vocab.txt').read_text(encoding='utf-8').splitlines()
    (hf / 'vocab.txt').write_text('\n'.join(lines[:2000]) + '\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r'vocab.txt has 2000 tokens.*vocab_size=30522'):
        from_pretrained(str(hf))
    ours = tmp_path / 'ours'
    shutil.copytree(tiny_pretrained, ours)
    tokens = json.loads((ours / 'vocab.json').read_text())
    (ours / 'vocab.json').write_text(json.dumps(tokens[:-5]))
    with pytest.raises(ValueError, match=r'vocab.json has \d+ tokens.*vocab_size='):
        from_pretrained(str(ours))
    net, vocab, _ = from_pretrained(str(tiny_pretrained))
    clf = BERTClassifier(net, 2, labels=('no', 'yes'), task='MRPC')
    clf.output.initialize()
    folder = tmp_path / 'clf'
    folder.mkdir()
    save_classifier(clf, folder, vocab)
    load_classifier(folder)  # whole, it loads
    (folder / 'vocab.json').write_text(json.dumps(vocab.idx_to_token[:-1]))
    with pytest.raises(ValueError, match=r'vocab.json has \d+ tokens'):
        load_classifier(folder)


def test_unknown_pretrained_name():
    with pytest.raises(ValueError, match='unknown pretrained model'):
        from_pretrained('bert-huge-9000')


@pytest.mark.backend_dependent
def test_d2l_checkpoint_zip_downloads_checks_and_loads(tmp_path, monkeypatch):
    """A zip in d2l's format (vocab.json + pretrained.params of d2l's own
    BERTModel), served on loopback, loads with its outputs unchanged."""
    import hashlib
    import io
    import json
    import zipfile
    from d2l import mxnet as d2l
    from bert_gluon.data import files as files_mod
    from test_data import _serve

    tokens = ['<unk>', '<pad>', '<mask>', '<cls>', '<sep>'] + [f'w{i}' for i in range(20)]
    d2l_net = d2l.BERTModel(len(tokens), num_hiddens=256, ffn_num_hiddens=512,
                            num_heads=4, num_layers=2, dropout=0.1, max_len=512)
    d2l_net.initialize(mx.init.Normal(0.1))
    ids = mx.np.array([[3, 7, 8, 4, 9, 4, 1], [3, 10, 4, 11, 12, 13, 4]], dtype='int32')
    segments = mx.np.array([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]], dtype='int32')
    lens = mx.np.array([6, 7], dtype='float32')
    positions = mx.np.array([[1, 2], [3, 5]], dtype='int32')
    expected = d2l_net(ids, segments, lens, positions)
    d2l_net.save_parameters(str(tmp_path / 'pretrained.params'))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        z.writestr('bert.small/vocab.json', json.dumps(tokens))
        z.write(tmp_path / 'pretrained.params', 'bert.small/pretrained.params')
    payload = buffer.getvalue()
    server = _serve(payload)
    spec = files_mod.DATASETS['bert.small']
    monkeypatch.delenv('BERT_GLUON_DATA', raising=False)
    monkeypatch.setenv('BERT_GLUON_CACHE', str(tmp_path / 'cache'))
    try:
        url = f'http://127.0.0.1:{server.server_port}/bert.small.zip'
        monkeypatch.setitem(files_mod.DATASETS, 'bert.small', files_mod.DatasetFiles(
            spec.folder, spec.files, url, '1' * 40))
        with pytest.raises(ValueError, match='wrong SHA-1'):
            from_pretrained('bert.small')
        monkeypatch.setitem(files_mod.DATASETS, 'bert.small', files_mod.DatasetFiles(
            spec.folder, spec.files, url, hashlib.sha1(payload).hexdigest()))
        net, vocab, config = from_pretrained('bert.small')
    finally:
        server.shutdown()
    assert len(vocab) == config.vocab_size == len(tokens)
    net.hybridize(static_alloc=True, static_shape=True)
    for ours, theirs in zip(net(ids, segments, lens, positions), expected):
        assert_close(ours.asnumpy(), theirs.asnumpy(), atol=1e-5, rtol=1e-5)
    # a truncated params file is rejected with its name
    cached = tmp_path / 'cache' / 'bert.small' / 'pretrained.params'
    cached.write_bytes(cached.read_bytes()[:1000])
    with pytest.raises(ValueError, match='pretrained.params'):
        from_pretrained('bert.small')


def test_tokenize_is_unchanged_by_encode_pairs(minilm):
    _, tokenizer, _ = minilm
    text = 'a much longer sentence than the max_len of the batch below allows'
    before = tokenizer.tokenize(text)
    tokenizer.encode_pairs([('a', 'b')], 4)
    assert tokenizer.tokenize(text) == before and len(before) > 4


def test_singles_and_pairs_mix_in_one_batch(minilm):
    _, tokenizer, _ = minilm
    mixed = tokenizer.encode_pairs([PAIRS[0], (PAIRS[1][0], None)], MAX_LEN)
    pair = tokenizer.encode_pairs([PAIRS[0]], MAX_LEN)
    single = tokenizer.encode_pairs([(PAIRS[1][0], None)], MAX_LEN)
    for m, p, s in zip(mixed, pair, single):
        onp.testing.assert_array_equal(m, onp.concatenate([p, s]))


def test_encode_batch_refuses_a_bare_string(minilm):
    net, tokenizer, _ = minilm
    with pytest.raises(ValueError, match='texts must be a list of strings .*got one str'):
        encode_batch(net, 'A man plays a guitar.', tokenizer)
    with pytest.raises(ValueError, match='texts is empty'):
        encode_batch(net, [], tokenizer)
    with pytest.raises(ValueError, match=r'texts\[1\] must be a string'):
        encode_batch(net, ['a', 3], tokenizer)


def test_broken_checkpoint_folders_are_named(tmp_path):
    import json
    import shutil
    folder = tmp_path / 'hf'
    shutil.copytree(minilm_folder(), folder)
    config = (folder / 'config.json').read_text()
    (folder / 'config.json').write_text(config[:40])
    with pytest.raises(ValueError, match='config.json is not a readable JSON file'):
        from_pretrained(str(folder))
    (folder / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(ValueError, match=r"config.json: a BERT config needs the fields \['vocab_size'"):
        from_pretrained(str(folder))
    (folder / 'config.json').write_text(config)
    (folder / 'vocab.txt').write_text('')
    with pytest.raises(ValueError, match='vocab.txt'):
        from_pretrained(str(folder))


def test_a_named_checkpoint_changed_since_publication_is_refused(tmp_path, monkeypatch):
    """One flipped byte inside a weight of MiniLM's model.safetensors still
    parses as safetensors; its SHA-256 is what catches it."""
    import shutil
    import bert_gluon.pretrained as pretrained
    copy = tmp_path / 'model'
    shutil.copytree(minilm_folder(), copy)
    monkeypatch.setattr(pretrained, 'minilm_folder', lambda: copy)
    from_pretrained('all-MiniLM-L6-v2')  # as published: loads
    weights = copy / 'model.safetensors'
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r'model.safetensors is not the published '
                                         r'all-MiniLM-L6-v2: its SHA-256 is [0-9a-f]{64}, '
                                         r'expected 53aa5117'):
        from_pretrained('all-MiniLM-L6-v2')


@pytest.mark.backend_dependent
def test_a_wordpiece_model_saved_reads_back_as_it_was(tmp_path, minilm):
    """save_pretrained with MiniLM's WordPiece tokenizer writes vocab.txt and
    whether it lower-cases; from_pretrained reads the folder back to equal
    outputs (it asked for a vocab.json before)."""
    from bert_gluon.pretrained import save_pretrained
    from bert_gluon.tokenization import WordPieceTokenizer, load_tokenizer
    net, tokenizer, _ = minilm
    save_pretrained(net, tmp_path / 'saved', tokenizer)
    again, tokenizer_again, _ = from_pretrained(str(tmp_path / 'saved'))
    inputs = [mx.np.array(a) for a in tokenizer.encode_pairs([('A Crane flies', None)], 8)]
    assert tokenizer_again.tokenize('A Crane') == tokenizer.tokenize('A Crane') == ['a', 'crane']
    assert_close(again.encoder(*inputs), net.encoder(*inputs))
    cased = WordPieceTokenizer(tokenizer.vocab_file, lowercase=False)
    (tmp_path / 'cased').mkdir()
    cased.save(tmp_path / 'cased')
    assert load_tokenizer(tmp_path / 'cased').lowercase is False
    (tmp_path / 'cased' / 'tokenizer_config.json').write_text('{"do_lower_case": "yes"}')
    with pytest.raises(ValueError, match=r'tokenizer_config.json: do_lower_case must be true or '
                                         r"false, got 'yes'"):
        load_tokenizer(tmp_path / 'cased')
