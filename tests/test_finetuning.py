"""Representations and fine-tuning on real sentence-pair data."""
import mxnet as mx
import numpy as onp
import pytest

import bert_gluon as bg
from bert_gluon.data.pairs import encode_pairs, read_pairs, truncate_pair, word_tokenize
from bert_gluon.classifier import BERTClassifier
from bert_gluon.finetuning import finetune
from bert_gluon.pretrained import from_pretrained
from bert_gluon.represent import encode_batch, get_bert_encoding


@pytest.mark.backend_dependent
def test_crane_example(tiny_pretrained):
    net, vocab, config = from_pretrained(tiny_pretrained)
    assert all(vocab[t] != vocab.unk for t in ('crane', 'flying', 'driver', 'came'))
    tokens_a = ['a', 'crane', 'is', 'flying']
    encoded_text = get_bert_encoding(net, tokens_a, vocab=vocab)
    # Tokens: '<cls>', 'a', 'crane', 'is', 'flying', '<sep>'
    assert encoded_text.shape == (1, 6, config.num_hiddens)
    encoded_text_cls = encoded_text[:, 0, :]
    encoded_text_crane = encoded_text[:, 2, :]
    tokens_a, tokens_b = ['a', 'crane', 'driver', 'came'], ['he', 'just', 'left']
    encoded_pair = get_bert_encoding(net, tokens_a, tokens_b, vocab=vocab)
    # '<cls>', 'a', 'crane', 'driver', 'came', '<sep>', 'he', 'just', 'left', '<sep>'
    assert encoded_pair.shape == (1, 10, config.num_hiddens)
    encoded_pair_cls = encoded_pair[:, 0, :]
    encoded_pair_crane = encoded_pair[:, 2, :]
    assert encoded_text_cls.shape == encoded_pair_cls.shape == (1, config.num_hiddens)
    # Context-sensitive: the same word, different vectors
    assert onp.abs((encoded_text_crane - encoded_pair_crane).asnumpy()).max() > 1e-3
    with pytest.raises(ValueError, match='vocab'):
        get_bert_encoding(net, tokens_a)


@pytest.mark.backend_dependent
def test_encode_batch_matches_one_by_one(tiny_pretrained):
    net, vocab, _ = from_pretrained(tiny_pretrained)
    texts = [('a crane is flying', None), ('a crane driver came', 'he just left')]
    cls = encode_batch(net, texts, vocab, max_len=16, pooling='cls')
    for i, (a, b) in enumerate(texts):
        alone = get_bert_encoding(net, a.split(), b and b.split(), vocab=vocab)
        onp.testing.assert_allclose(cls[i], alone[0, 0].asnumpy(), atol=1e-5)
    rows = encode_batch(net, texts, vocab, max_len=16, pooling='none')
    assert [r.shape[0] for r in rows] == [6, 10]


@pytest.mark.parametrize('task, split, rows, positives', [
    ('MRPC', 'train', 3668, 2474), ('MRPC', 'dev', 408, 279),
    ('RTE', 'train', 2490, 1249), ('RTE', 'dev', 277, 146)])
def test_readers_on_the_real_files(task, split, rows, positives):
    first, second, labels = read_pairs(task, split)
    assert len(first) == len(second) == len(labels) == rows
    assert sum(labels) == positives  # label 1: paraphrase / entailment
    assert not first[0].startswith('\ufeff')
    assert any('"' in s for s in first + second)  # quotes kept, not parsed


def test_reader_errors(tmp_path):
    with pytest.raises(ValueError, match='task'):
        read_pairs('QQP')
    with pytest.raises(ValueError, match='split'):
        read_pairs('MRPC', 'test')
    with pytest.raises(FileNotFoundError, match='SNLI'):
        read_pairs('SNLI', data_dir=tmp_path)


def test_pair_truncation_the_books_way():
    a, b = truncate_pair(list('abcdefgh'), list('xyz'), 10)
    assert (a, b) == (list('abcd'), list('xyz'))  # the longer one shrinks first
    a, b = truncate_pair(list('abc'), list('xyz'), 7)
    assert (a, b) == (list('ab'), list('xy'))
    vocab = bg.data.Vocab([['a', 'b']], reserved_tokens=['<pad>', '<mask>', '<cls>', '<sep>'])
    tokens, segments, lens = encode_pairs([('a b a b a', 'b')], vocab, 6)
    assert vocab.to_tokens(tokens[0].tolist()) == ['<cls>', 'a', 'b', '<sep>', 'b', '<sep>']
    assert segments[0].tolist() == [0, 0, 0, 0, 1, 1] and lens[0] == 6
    assert word_tokenize('He said "Hi," then left.') == ['he', 'said', '"', 'hi', ',', '"',
                                                         'then', 'left', '.']


@pytest.mark.backend_dependent
def test_classifier_shape_and_books_calling_style(tiny_pretrained):
    net, vocab, config = from_pretrained(tiny_pretrained)
    clf = BERTClassifier(net, num_outputs=3)
    clf.output.initialize()
    arrays = [mx.np.array(a) for a in encode_pairs([('a b', 'c'), ('d', 'e f g')], vocab, 12)]
    assert clf(*arrays).shape == (2, 3)
    onp.testing.assert_allclose(clf(tuple(arrays)).asnumpy(), clf(*arrays).asnumpy())
    with pytest.raises(ValueError, match='HybridBERTModel'):
        BERTClassifier(bg.BERTModel.from_config(bg.get_config('d2l.pretrain')))


@pytest.mark.backend_dependent
def test_frozen_encoder_is_unchanged_and_head_learns(tiny_pretrained, tmp_path):
    before = {k: v.data().asnumpy() for k, v in
              from_pretrained(tiny_pretrained)[0]._collect_params_with_prefix().items()}
    result = finetune('RTE', tiny_pretrained, num_epochs=1, batch_size=64, max_len=32,
                      lr=1e-3, freeze_encoder=True, out_dir=tmp_path, progress=False)
    after = result['net']._collect_params_with_prefix()
    for name, value in before.items():
        if name.startswith('encoder.'):
            onp.testing.assert_array_equal(after[name].data().asnumpy(), value, err_msg=name)
    assert not onp.allclose(after['hidden.weight'].data().asnumpy(), before['nsp.mlp.0.weight'])
    epoch = result['epochs'][0]
    assert epoch['examples'] == 277 and 0 <= epoch['accuracy'] <= 1
    assert (tmp_path / 'metrics.json').is_file() and (tmp_path / 'loss.png').is_file()


@pytest.mark.backend_dependent
def test_finetune_resume_equals_straight_run(tiny_pretrained, tmp_path):
    kwargs = dict(batch_size=128, max_len=32, lr=1e-3, progress=False)
    straight = finetune('MRPC', tiny_pretrained, num_epochs=2, out_dir=tmp_path / 'a', **kwargs)
    finetune('MRPC', tiny_pretrained, num_epochs=1, out_dir=tmp_path / 'b', **kwargs)
    resumed = finetune('MRPC', tiny_pretrained, num_epochs=2, out_dir=tmp_path / 'b',
                       resume=True, **kwargs)
    a = straight['net']._collect_params_with_prefix()
    b = resumed['net']._collect_params_with_prefix()
    for name in a:
        onp.testing.assert_allclose(b[name].data().asnumpy(), a[name].data().asnumpy(),
                                    atol=1e-6, rtol=0, err_msg=name)
    assert [e['accuracy'] for e in resumed['epochs']] == [e['accuracy'] for e in straight['epochs']]
    assert 0 <= straight['epochs'][-1]['f1'] <= 1


def test_finetune_rejects_bad_arguments(tiny_pretrained, tmp_path):
    with pytest.raises(ValueError, match='task'):
        finetune('CoLA', tiny_pretrained, out_dir=tmp_path)
    with pytest.raises(ValueError, match='max_len'):
        finetune('MRPC', tiny_pretrained, max_len=5000, out_dir=tmp_path)
    with pytest.raises(ValueError, match='unknown pretrained'):
        finetune('MRPC', tmp_path / 'nothing', out_dir=tmp_path)
    with pytest.raises(ValueError, match=r'batch_size 100000 exceeds the dataset size 3668'):
        finetune('MRPC', tiny_pretrained, batch_size=100000, out_dir=tmp_path / 'big')
    from bert_gluon.classifier import save_classifier
    net, vocab, _ = from_pretrained(tiny_pretrained)
    clf = BERTClassifier(net, 2, task='MRPC')
    clf.output.initialize()
    (tmp_path / 'clf').mkdir()
    save_classifier(clf, tmp_path / 'clf', vocab)
    with pytest.raises(ValueError, match=r'clf holds a fine-tuned classifier \(classifier.json\), '
                                         'not a pretrained BERT model'):
        finetune('MRPC', tmp_path / 'clf', out_dir=tmp_path / 'again')


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_cli_finetune_and_encode(tiny_pretrained, tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'finetune', '--task', 'RTE',
                          '--from', str(tiny_pretrained), '--epochs', '1', '--max-len', '24',
                          '--batch-size', '128', '--out', str(tmp_path / 'ft'), '--no-progress'],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'RTE epoch 1: train loss' in out.stdout and 'dev accuracy' in out.stdout
    (tmp_path / 'in.txt').write_text('a crane is flying\na crane driver came\the left\n')
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'encode', '--from',
                          str(tiny_pretrained), '--input', str(tmp_path / 'in.txt'),
                          '--output', str(tmp_path / 'v.npy')], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert onp.load(tmp_path / 'v.npy').shape == (2, 16)
    bad = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'finetune', '--task', 'RTE',
                          '--from', str(tmp_path / 'none')], capture_output=True, text=True)
    assert bad.returncode != 0 and 'unknown pretrained model' in bad.stderr


@pytest.mark.backend_dependent
def test_trimmed_padding_gives_the_same_logits(tiny_pretrained):
    from bert_gluon.finetuning import trim_padding
    net, vocab, _ = from_pretrained(tiny_pretrained)
    clf = BERTClassifier(net, num_outputs=2)
    clf.output.initialize()
    arrays = encode_pairs([('a b c', 'd'), ('e', 'f g')], vocab, 64)
    trimmed = trim_padding(list(arrays))
    assert trimmed[0].shape == (2, 16)
    full = clf(*[mx.np.array(a) for a in arrays]).asnumpy()
    short = clf(*[mx.np.array(a) for a in trimmed]).asnumpy()
    onp.testing.assert_allclose(short, full, atol=1e-5)


def test_snli_reader_the_books_way(tmp_path):
    """SNLI is not shipped here; a file in its format, read as d2l reads it."""
    folder = tmp_path / 'snli_1.0'
    folder.mkdir()
    header = 'gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tother\n'
    rows = ['entailment\t( ( A man ) ( is ( playing ( a guitar ) ) ) )\t( ( A person ) plays )\tx\n',
            '-\t( no gold )\t( label )\tx\n',
            'neutral\t( ( Two dogs ) run )\t( ( Dogs ) ( are happy ) )\tx\n']
    for name in ('snli_1.0_train.txt', 'snli_1.0_test.txt'):
        (folder / name).write_text(header + ''.join(rows))
    premises, hypotheses, labels = read_pairs('SNLI', 'train', data_dir=tmp_path)
    assert premises == ['A man is playing a guitar', 'Two dogs run']
    assert hypotheses == ['A person plays', 'Dogs are happy']
    assert labels == [0, 2]  # entailment, neutral; '-' rows dropped
    train = folder / 'snli_1.0_train.txt'
    train.write_text(header + rows[0] + 'entailmnet\t( a )\t( b )\tx\n')
    with pytest.raises(ValueError, match=r"train.txt, line 3: label 'entailmnet' is not one of"):
        read_pairs('SNLI', 'train', data_dir=tmp_path)
    train.write_text('')
    with pytest.raises(ValueError, match='train.txt is empty: expected a header line'):
        read_pairs('SNLI', 'train', data_dir=tmp_path)
    train.write_text(header + rows[1])
    with pytest.raises(ValueError, match='train.txt holds no labelled pair'):
        read_pairs('SNLI', 'train', data_dir=tmp_path)
    train.write_bytes((header + rows[0]).encode() + b'neutral\t( caf\xe9 )\t( b )\tx\n')
    with pytest.raises(ValueError, match=r'train.txt, line 3: not UTF-8 text \(invalid '
                                         r'continuation byte at offset 13 of the line\)'):
        read_pairs('SNLI', 'train', data_dir=tmp_path)


def _encode_cli(pretrained, input_path, output_path):
    import subprocess
    import sys
    return subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'encode', '--from',
                           str(pretrained), '--input', str(input_path), '--output',
                           str(output_path)], capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_cli_encode_inputs_and_output_path(tiny_pretrained, tmp_path):
    mixed = tmp_path / 'mixed.txt'
    mixed.write_text('a crane is flying\nthe crane\ta bird\n\n')
    out = _encode_cli(tiny_pretrained, mixed, tmp_path / 'vectors.txt')
    assert out.returncode == 0, out.stderr
    assert f'-> {tmp_path / "vectors.txt"} (2, 16)' in out.stdout
    assert onp.load(tmp_path / 'vectors.txt').shape == (2, 16)  # that path, no '.npy' added
    (tmp_path / 'empty.txt').write_text('\n  \n')
    (tmp_path / 'binary.bin').write_bytes(bytes(range(256)))
    for path, message in ((tmp_path / 'empty.txt', 'holds no text'),
                          (tmp_path / 'binary.bin', 'is not UTF-8 text'),
                          (tmp_path, 'is a folder; expected a UTF-8 text file'),
                          (tmp_path / 'missing.txt', 'does not exist')):
        out = _encode_cli(tiny_pretrained, path, tmp_path / 'v.npy')
        assert out.returncode == 2 and message in out.stderr, (path, out.stderr)
    out = _encode_cli(tiny_pretrained, mixed, tmp_path)
    assert out.returncode == 2 and '--output' in out.stderr and 'is a folder' in out.stderr


def test_a_corrupt_pretrained_folder_is_named(tiny_pretrained, tmp_path):
    import shutil
    folder = tmp_path / 'copy'
    shutil.copytree(tiny_pretrained, folder)
    (folder / 'config.json').write_text('{"vocab_size": 7,')
    with pytest.raises(ValueError, match='config.json is not a readable JSON file'):
        from_pretrained(str(folder))
    (folder / 'config.json').write_text('{"hidden_size": 7}')
    with pytest.raises(ValueError, match="config.json is not a bert_gluon config"):
        from_pretrained(str(folder))
