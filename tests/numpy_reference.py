"""BERT's forward pass in plain NumPy (float64), written from the book's
equations, to check both MXNet implementations against something that shares
no code with them."""
import numpy as onp


def _layer_norm(X, gamma, beta, eps=1e-5):
    mean = X.mean(-1, keepdims=True)
    var = X.var(-1, keepdims=True)
    return (X - mean) / onp.sqrt(var + eps) * gamma + beta


def _softmax(X):
    X = X - X.max(-1, keepdims=True)
    e = onp.exp(X)
    return e / e.sum(-1, keepdims=True)


def bert_forward(p, num_heads, tokens, segments, valid_lens=None,
                 pred_positions=None):
    """p: structural name -> array (from `_collect_params_with_prefix`)."""
    p = {k: v.astype('float64') for k, v in p.items()}
    tokens, segments = onp.asarray(tokens, int), onp.asarray(segments, int)
    B, T = tokens.shape
    X = (p['encoder.token_embedding.weight'][tokens]
         + p['encoder.segment_embedding.weight'][segments])
    H = X.shape[-1]
    angles = onp.arange(T)[:, None] / onp.power(10000, onp.arange(0, H, 2) / H)
    P = onp.zeros((T, H))
    P[:, 0::2], P[:, 1::2] = onp.sin(angles), onp.cos(angles)
    X = X + P
    lens = onp.full(B, T) if valid_lens is None else onp.asarray(valid_lens, int)
    key_is_valid = onp.arange(T)[None, :] < lens[:, None]  # (B, T)
    d = H // num_heads
    layer = 0
    while f'encoder.blks.{layer}.attention.W_q.weight' in p:
        w = lambda name: p[f'encoder.blks.{layer}.{name}']  # noqa: E731
        def heads(Y):  # (B, T, H) -> (B, N, T, d)
            return Y.reshape(B, T, num_heads, d).transpose(0, 2, 1, 3)
        q, k, v = (heads(X @ w(f'attention.{n}.weight').T) for n in ('W_q', 'W_k', 'W_v'))
        scores = q @ k.transpose(0, 1, 3, 2) / onp.sqrt(d)
        scores = onp.where(key_is_valid[:, None, None, :], scores, -onp.inf)
        att = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
        Y = _layer_norm(X + att @ w('attention.W_o.weight').T,
                        w('addnorm1.ln.gamma'), w('addnorm1.ln.beta'))
        hidden = onp.maximum(Y @ w('ffn.dense1.weight').T + w('ffn.dense1.bias'), 0)
        ffn = hidden @ w('ffn.dense2.weight').T + w('ffn.dense2.bias')
        X = _layer_norm(Y + ffn, w('addnorm2.ln.gamma'), w('addnorm2.ln.beta'))
        layer += 1
    mlm = None
    if pred_positions is not None:
        pred_positions = onp.asarray(pred_positions, int)
        rows = X[onp.arange(B)[:, None], pred_positions]  # (B, P, H)
        h = onp.maximum(rows @ p['mlm.mlp.0.weight'].T + p['mlm.mlp.0.bias'], 0)
        h = _layer_norm(h, p['mlm.mlp.1.gamma'], p['mlm.mlp.1.beta'])
        mlm = h @ p['mlm.mlp.2.weight'].T + p['mlm.mlp.2.bias']
    pooled = onp.tanh(X[:, 0] @ p['nsp.mlp.0.weight'].T + p['nsp.mlp.0.bias'])
    nsp = pooled @ p['nsp.mlp.1.weight'].T + p['nsp.mlp.1.bias']
    return X, mlm, nsp
