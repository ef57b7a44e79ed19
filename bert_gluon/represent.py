"""Text representations from a BERT model (book section "Representing Text
with BERT" and sentence embeddings as sentence-transformers computes them)."""
import mxnet as mx
import numpy as onp

from .data.pairs import encode_pairs

__all__ = ['get_bert_encoding', 'encode_batch', 'mean_pool']


def _ctx_of(net):
    return next(iter(net.collect_params().values())).list_ctx()[0]


def get_bert_encoding(net, tokens_a, tokens_b=None, vocab=None):
    """The book's function: token lists in, encoded_X (1, T, H) out, with
    T = len(tokens_a) + 2 (+ len(tokens_b) + 1). The book reads `vocab` and
    the device from globals; here they are an argument and the net's."""
    if vocab is None:
        raise ValueError('vocab: the vocabulary the model was trained with')
    if isinstance(tokens_a, str) or (tokens_b is not None and isinstance(tokens_b, str)):
        raise ValueError('tokens_a and tokens_b must be lists of tokens, as in '
                         "the book: ['a', 'crane', 'is', 'flying']")
    tokens = ['<cls>'] + list(tokens_a) + ['<sep>']
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += list(tokens_b) + ['<sep>']
        segments += [1] * (len(tokens_b) + 1)
    ctx = _ctx_of(net)
    token_ids = mx.np.expand_dims(mx.np.array(vocab[tokens], ctx=ctx, dtype='int32'), axis=0)
    segments = mx.np.expand_dims(mx.np.array(segments, ctx=ctx, dtype='int32'), axis=0)
    valid_len = mx.np.array([len(tokens)], ctx=ctx, dtype='float32')
    encoded_X, _, _ = net(token_ids, segments, valid_len)
    return encoded_X


def mean_pool(encoded_X, valid_lens):
    """Mean over each row's valid positions: (B, T, H), (B,) -> (B, H)."""
    T = encoded_X.shape[1]
    mask = (mx.np.arange(T, ctx=encoded_X.ctx)[None, :]
            < valid_lens.astype('float32')[:, None]).astype(encoded_X.dtype)
    summed = (encoded_X * mask[:, :, None]).sum(axis=1)
    return summed / mx.np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)


def encode_batch(net, texts, tokenizer, max_len=128, batch_size=64,
                 pooling='cls'):
    """Representations of many sentences or pairs, batched with padding.

    texts: strings, or (a, b) pairs; tokenizer: a Vocab (word-level, as the
    book) or an object with `encode_pairs(pairs, max_len)`.
    pooling: 'cls' -> encoded '<cls>' (N, H); 'mean' -> mean over valid
    tokens (N, H); 'none' -> list of (T_i, H) arrays.
    Returns a host NumPy array (or list for 'none').
    """
    if pooling not in ('cls', 'mean', 'none'):
        raise ValueError(f"pooling must be 'cls', 'mean' or 'none', got {pooling!r}")
    pairs = [(t, None) if isinstance(t, str) else tuple(t) for t in texts]
    if hasattr(tokenizer, 'encode_pairs'):
        arrays = tokenizer.encode_pairs(pairs, max_len)
    else:
        arrays = encode_pairs(pairs, tokenizer, max_len)
    ctx = _ctx_of(net)
    out = []
    for start in range(0, len(pairs), batch_size):
        tokens, segments, lens = (mx.np.array(a[start:start + batch_size], ctx=ctx)
                                  for a in arrays)
        encoded_X = net.encoder(tokens, segments, lens) if hasattr(net, 'encoder') \
            else net(tokens, segments, lens)
        if pooling == 'cls':
            out.append(encoded_X[:, 0, :].asnumpy())
        elif pooling == 'mean':
            out.append(mean_pool(encoded_X, lens).asnumpy())
        else:
            host = encoded_X.asnumpy()
            out.extend(host[i, :int(n)] for i, n in enumerate(lens.asnumpy()))
    return out if pooling == 'none' else onp.concatenate(out)
