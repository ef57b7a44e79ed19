"""Text representations from a BERT model (book section "Representing Text
with BERT" and sentence embeddings as sentence-transformers computes them)."""
import mxnet as mx
import numpy as onp

from .config import check_positive_int

__all__ = ['get_bert_encoding', 'encode_batch', 'mean_pool', 'as_pairs', 'read_texts',
           'predicting', 'POOLINGS']

# Sentence embeddings: 'mean' over valid tokens (sentence-transformers' own,
# the default everywhere) or the encoded '<cls>' token
POOLINGS = ('mean', 'cls')


def as_pairs(texts, name='texts'):
    """A list of strings and (a, b) pairs of strings (b may be None) as
    (a, b or None) pairs; anything else is a ValueError naming `name`."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f'{name} must be a list of strings or (a, b) pairs, got '
                         f'one {type(texts).__name__}: wrap it in a list')
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f'{name} must be a list of strings or (a, b) pairs, got '
                         f'{type(texts).__name__}') from None
    if not texts:
        raise ValueError(f'{name} is empty: nothing to encode')
    pairs = []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            pairs.append((text, None))
        elif (isinstance(text, (list, tuple)) and len(text) == 2
              and isinstance(text[0], str) and isinstance(text[1], (str, type(None)))):
            pairs.append(tuple(text))  # (a, None) is a single sentence
        else:
            raise ValueError(f'{name}[{i}] must be a string or an (a, b) pair of '
                             f'strings, got {text!r:.80}')
    return pairs


def read_texts(path):
    """Non-empty lines of a UTF-8 file: a sentence each, or a pair split at
    its first tab."""
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        raise ValueError(f'input {path} is a folder; expected a UTF-8 text file')
    try:
        text = path.read_text(encoding='utf-8')
    except FileNotFoundError:
        raise ValueError(f'input {path} does not exist') from None
    except UnicodeDecodeError as exc:
        raise ValueError(f'input {path} is not UTF-8 text ({exc.reason} at byte '
                         f'{exc.start})') from None
    if '\x00' in text:
        raise ValueError(f'input {path} holds NUL bytes: a binary file, not text')
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f'input {path} holds no text: expected a sentence (or '
                         'a tab-separated pair) per line')
    return [tuple(line.split('\t', 1)) if '\t' in line else line for line in lines]


def _ctx_of(net):
    return next(iter(net.collect_params().values())).list_ctx()[0]


def predicting(net):
    """The block that predicts for `net`: a twin model's `for_inference()`
    sibling (fused, no dropout), or `net` itself (the book's blocks)."""
    return net.for_inference() if hasattr(net, 'for_inference') else net


def get_bert_encoding(net, tokens_a, tokens_b=None, vocab=None):
    """The book's function: token lists in, encoded_X (1, T, H) out, with
    T = len(tokens_a) + 2 (+ len(tokens_b) + 1). The book reads `vocab` and
    the device from globals; here they are an argument and the net's."""
    if vocab is None:
        raise ValueError('vocab: the vocabulary the model was trained with')
    for name, tokens in (('tokens_a', tokens_a), ('tokens_b', tokens_b)):
        if tokens is not None and (isinstance(tokens, str) or not all(
                isinstance(token, str) for token in tokens)):
            raise ValueError(f'{name} must be a list of token strings, as in the book: '
                             f"['a', 'crane', 'is', 'flying'], got {tokens!r:.80}")
    tokens = ['<cls>'] + list(tokens_a) + ['<sep>']
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += list(tokens_b) + ['<sep>']
        segments += [1] * (len(tokens_b) + 1)
    ctx = _ctx_of(net)
    token_ids = mx.np.expand_dims(mx.np.array(vocab[tokens], ctx=ctx, dtype='int32'), axis=0)
    segments = mx.np.expand_dims(mx.np.array(segments, ctx=ctx, dtype='int32'), axis=0)
    valid_len = mx.np.array([len(tokens)], ctx=ctx, dtype='float32')
    encoded_X, _, _ = predicting(net)(token_ids, segments, valid_len)
    return encoded_X


def mean_pool(encoded_X, valid_lens):
    """Mean over each row's valid positions: (B, T, H), (B,) -> (B, H)."""
    T = encoded_X.shape[1]
    mask = (mx.np.arange(T, ctx=encoded_X.ctx)[None, :]
            < valid_lens.astype('float32')[:, None]).astype(encoded_X.dtype)
    summed = (encoded_X * mask[:, :, None]).sum(axis=1)
    return summed / mx.np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)


def encode_batch(net, texts, tokenizer, max_len=128, batch_size=64,
                 pooling=POOLINGS[0]):
    """Representations of many sentences or pairs, batched with padding.

    texts: a list of strings and/or (a, b) pairs; tokenizer: a Vocab
    (word-level, as the book) or a WordPieceTokenizer (tokenization.py).
    pooling: 'mean' -> mean over valid tokens (N, H); 'cls' -> encoded
    '<cls>' (N, H); 'none' -> list of (T_i, H) arrays.
    Returns a host NumPy array (or list for 'none').
    """
    if pooling not in POOLINGS + ('none',):
        raise ValueError(f"pooling must be one of {POOLINGS + ('none',)}, got {pooling!r}")
    check_positive_int('batch_size', batch_size)
    pairs = as_pairs(texts)
    arrays = tokenizer.encode_pairs(pairs, max_len)
    ctx = _ctx_of(net)
    model = predicting(net)
    out = []
    for start in range(0, len(pairs), batch_size):
        tokens, segments, lens = (mx.np.array(a[start:start + batch_size], ctx=ctx)
                                  for a in arrays)
        encoded_X = model.encoder(tokens, segments, lens) if hasattr(model, 'encoder') \
            else model(tokens, segments, lens)
        if pooling == 'cls':
            out.append(encoded_X[:, 0, :].asnumpy())
        elif pooling == 'mean':
            out.append(mean_pool(encoded_X, lens).asnumpy())
        else:
            host = encoded_X.asnumpy()
            out.extend(host[i, :int(n)] for i, n in enumerate(lens.asnumpy()))
    return out if pooling == 'none' else onp.concatenate(out)
