"""Bad input gets a ValueError that names the argument, in both model kinds."""
import pytest
import mxnet as mx
from mxnet import np

import bert_gluon as bg
from conftest import TINY, assert_close, make_batch


def _models():
    book = bg.BERTModel.from_config(TINY)
    book.initialize()
    twin = bg.HybridBERTModel(TINY)
    twin.initialize()
    hybrid = bg.HybridBERTModel(TINY)
    hybrid.initialize()
    hybrid.hybridize(static_alloc=True, static_shape=True)
    return {'book': book, 'twin': twin, 'hybrid': hybrid}


MODELS = _models()


def _bad_cases():
    tokens, segments, valid_lens, positions = make_batch()
    B, T = tokens.shape
    cases = {
        'segments shape': ((tokens, segments[:, :-1], valid_lens, positions), 'segments'),
        'tokens 1-D': ((tokens[0], segments[0], None, None), 'tokens'),
        'non-integer tokens': ((tokens.astype('float32') + 0.5, segments, valid_lens, positions), 'tokens'),
        'bool tokens': ((tokens > 3, segments, valid_lens, positions), 'tokens'),
        'token id = vocab_size': ((np.full((B, T), TINY.vocab_size, dtype='int32'),
                                   segments, valid_lens, positions), 'tokens'),
        'negative token id': ((tokens - 100, segments, valid_lens, positions), 'tokens'),
        'segment 2': ((tokens, segments + 1, valid_lens, positions), 'segments'),
        'valid_lens length': ((tokens, segments, valid_lens[:-1], positions), 'valid_lens'),
        'valid_lens 2-D': ((tokens, segments, valid_lens.reshape(-1, 1), positions), 'valid_lens'),
        'valid_lens > T': ((tokens, segments, valid_lens + T, positions), 'valid_lens'),
        'valid_lens 0': ((tokens, segments, valid_lens * 0, positions), 'valid_lens'),
        'position = T': ((tokens, segments, valid_lens, positions * 0 + T), 'pred_positions'),
        'negative position': ((tokens, segments, valid_lens, positions - T), 'pred_positions'),
        'positions batch': ((tokens, segments, valid_lens, positions[:-1]), 'pred_positions'),
        'numpy tokens': ((tokens.asnumpy(), segments, valid_lens, positions), 'tokens'),
    }
    return cases


CASES = _bad_cases()


@pytest.mark.parametrize('kind', sorted(MODELS))
@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_input_names_the_argument(kind, case):
    args, name = CASES[case]
    with pytest.raises(ValueError, match=name):
        MODELS[kind](*args)


@pytest.mark.parametrize('kind', sorted(MODELS))
def test_sequence_beyond_the_position_table(kind):
    T = 1001  # d2l.PositionalEncoding covers 1000 positions
    tokens = np.zeros((1, T), dtype='int32')
    with pytest.raises(ValueError, match='max_len'):
        MODELS[kind](tokens, np.zeros_like(tokens))


def test_heads_check_their_inputs():
    tokens, segments, valid_lens, positions = make_batch()
    for mlm in (bg.MaskLM(TINY.vocab_size, TINY.num_hiddens), bg.HybridMaskLM(TINY)):
        mlm.initialize()
        with pytest.raises(ValueError, match='X'):
            mlm(np.ones((3, 9)), positions)
        with pytest.raises(ValueError, match='pred_positions'):
            mlm(np.ones((3, 9, TINY.num_hiddens)), positions + 9)
    with pytest.raises(ValueError, match='X'):
        bg.HybridNextSentencePred(TINY)(np.ones((3, TINY.num_hiddens)))


@pytest.mark.backend_dependent
def test_checks_can_be_switched_off_for_prechecked_batches():
    twin = bg.HybridBERTModel(TINY)
    twin.initialize()
    twin.check_inputs = False
    tokens, segments, valid_lens, positions = make_batch()
    twin(tokens, segments + 0.0, valid_lens, positions)  # no host copy, no error
    with pytest.raises(ValueError, match='segments'):  # shapes are still checked
        twin(tokens, segments[:, :-1], valid_lens, positions)


@pytest.mark.parametrize('changes, name', [
    ({'num_heads': 5}, 'num_heads'), ({'dropout': 1.0}, 'dropout'),
    ({'vocab_size': 0}, 'vocab_size'), ({'activation': 'tanh'}, 'activation'),
    ({'position_embedding': 'rotary'}, 'position_embedding'),
    ({'layer_norm_eps': 0.0}, 'layer_norm_eps')])
def test_bad_config_names_the_field(changes, name):
    with pytest.raises(ValueError, match=name):
        bg.get_config('d2l.pretrain', **changes)


def test_named_configs():
    assert bg.get_config('book.demo').num_hiddens == 768
    small = bg.get_config('d2l.pretrain')
    assert (small.num_hiddens, small.ffn_num_hiddens, small.num_heads,
            small.num_layers) == (128, 256, 2, 2)
    assert small.is_book and not bg.get_config('bert.small').is_book
    base = bg.get_config('bert.base')
    assert (base.num_hiddens, base.ffn_num_hiddens, base.num_heads,
            base.num_layers) == (768, 3072, 12, 12)
    assert bg.get_config('d2l.pretrain', vocab_size=7).vocab_size == 7
    assert bg.BERTConfig.from_dict(base.to_dict()) == base
    with pytest.raises(ValueError, match='unknown config name'):
        bg.get_config('bert.huge')
    with pytest.raises(ValueError, match='unknown BERTConfig fields'):
        bg.BERTConfig.from_dict({'hidden_size': 3})


@pytest.mark.backend_dependent
def test_an_eager_call_checks_its_batch_once(monkeypatch):
    import bert_gluon.inputs as inputs
    calls = []
    original = inputs.check_encoder_inputs
    monkeypatch.setattr(inputs, 'check_encoder_inputs',
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    tokens, segments, valid_lens, positions = make_batch()
    MODELS['twin'](tokens, segments, valid_lens, positions)
    MODELS['twin'](tokens, segments, valid_lens)
    assert len(calls) == 2  # one per call, not one per block
    with pytest.raises(ValueError, match='tokens'):  # and nested blocks still check alone
        MODELS['twin'].encoder(tokens + 1000, segments, valid_lens)


def test_pretraining_objective_names_bad_targets():
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    objective = bg.loss.PretrainingObjective(net)
    tokens, segments, valid_lens, positions = make_batch()
    good = dict(mlm_weights=np.ones(positions.shape),
                mlm_Y=np.zeros(positions.shape, dtype='int32'),
                nsp_y=np.zeros((3,), dtype='int32'))
    for name, bad, match in (
            ('mlm_weights', np.ones((3, 2)), 'mlm_weights must have the shape'),
            ('mlm_Y', np.full(positions.shape, TINY.vocab_size, dtype='int32'),
             r'mlm_Y must be in \[0, 49\]'),
            ('nsp_y', np.array([0, 2, 1], dtype='int32'), 'nsp_y must be in'),
            ('nsp_y', np.zeros((4,), dtype='int32'), r'nsp_y must have shape')):
        kwargs = dict(good, **{name: bad})
        with pytest.raises(ValueError, match=match):
            objective(tokens, segments, valid_lens, positions, kwargs['mlm_weights'],
                      kwargs['mlm_Y'], kwargs['nsp_y'])


@pytest.mark.backend_dependent
@pytest.mark.parametrize('kind', ['twin', 'hybrid'])
def test_numpy_default_dtypes_are_converted(kind):
    """int64 ids and float64 lengths (NumPy's defaults) give the int32 /
    float32 result, hybridized or not."""
    tokens, segments, valid_lens, positions = make_batch()
    net = MODELS[kind]
    expected = net(tokens, segments, valid_lens, positions)
    converted = net(tokens.astype('int64'), segments.astype('int64'),
                    valid_lens.astype('float64'), positions.astype('int64'))
    for a, e in zip(converted, expected):
        assert_close(a, e)


@pytest.mark.parametrize('kind', sorted(MODELS))
def test_classic_ndarrays_are_named(kind):
    tokens, segments, valid_lens, positions = make_batch()
    with pytest.raises(ValueError, match=r'tokens must be an mxnet.np.ndarray.*as_np_ndarray'):
        MODELS[kind](tokens.as_nd_ndarray(), segments, valid_lens, positions)
    with pytest.raises(ValueError, match=r'valid_lens must be an mxnet.np.ndarray'):
        MODELS[kind](tokens, segments, valid_lens.as_nd_ndarray(), positions)


@pytest.mark.backend_dependent
def test_exported_model_checks_its_inputs(tmp_path):
    twin = bg.HybridBERTModel(TINY)
    twin.initialize()
    prefix = str(tmp_path / 'bert')
    bg.export_model(twin, prefix)
    served = bg.load_exported(prefix)
    tokens, segments, valid_lens, positions = make_batch()
    with pytest.raises(ValueError, match=r'tokens must be in \[0, 49\]'):
        served(tokens + TINY.vocab_size, segments, valid_lens, positions)
    encoded, mlm, nsp = served(tokens, segments)  # valid_lens None: every token
    assert mlm is None and nsp.shape == (3, 2)
    assert_close(encoded, twin(tokens, segments)[0])
    too_long = np.zeros((1, TINY.max_len + 1), dtype='int32')
    with pytest.raises(ValueError, match='max_len'):
        served(too_long, too_long)


@pytest.mark.backend_dependent
def test_exported_files_that_are_corrupt_are_named(tmp_path):
    twin = bg.HybridBERTModel(TINY)
    twin.initialize()
    prefix = str(tmp_path / 'bert')
    symbol_file, params_file = bg.export_model(twin, prefix)
    good = open(symbol_file).read()
    open(symbol_file, 'w').write(good[:len(good) // 2])
    with pytest.raises(ValueError, match='bert-symbol.json is not an MXNet symbol file'):
        bg.load_exported(prefix)
    open(symbol_file, 'w').write(good)
    data = open(params_file, 'rb').read()
    open(params_file, 'wb').write(data[:len(data) // 2])
    with pytest.raises(ValueError, match='bert-0000.params is corrupt'):
        bg.load_exported(prefix)
    open(f'{prefix}-config.json', 'w').write('{"vocab_size": ')
    with pytest.raises(ValueError, match='bert-config.json is not a readable JSON'):
        bg.load_exported(prefix)


def test_the_last_weak_inputs_are_named(tmp_path):
    """No prediction slot, a batch size of 0, ids where the book passes
    token strings, and a folder where a file prefix is expected: each a
    ValueError naming the argument, not an MXNet error or a silent answer."""
    import bert_gluon as bg
    from bert_gluon.data.vocab import Vocab
    from bert_gluon.represent import encode_batch, get_bert_encoding
    from conftest import TINY, make_batch
    net = bg.HybridBERTModel(TINY)
    net.initialize()
    tokens, segments, valid_lens, _ = make_batch()
    with pytest.raises(ValueError, match=r'pred_positions must have shape .*no prediction: '
                                         'pass None'):
        net(tokens, segments, valid_lens, mx.np.zeros((3, 0), dtype='int32'))
    vocab = Vocab([['a', 'crane', 'is', 'flying']], reserved_tokens=['<pad>', '<mask>', '<cls>',
                                                                     '<sep>'])
    with pytest.raises(ValueError, match='batch_size must be a positive int, got 0'):
        encode_batch(net, ['a crane'], vocab, max_len=8, batch_size=0)
    with pytest.raises(ValueError, match='tokens_a must be a list of token strings'):
        get_bert_encoding(net, [1, 2, 3], vocab=vocab)
    with pytest.raises(ValueError, match="prefix .* names a folder, not a file prefix"):
        bg.export_model(net, str(tmp_path / 'exp') + '/')
    assert not list(tmp_path.iterdir())
