"""BERT's forward pass in plain NumPy (float64), written from the book's
equations, to check both MXNet implementations against something that shares
no code with them."""
import math

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


# --- int8 products, as the fused encoder ops run them (kernels/blas.h) ------
# Written from blas.h's description, in float32 where the kernels round:
# a rounding tie may land one level apart, never more.

def quantize_rows(X):
    """Each row of X to u8 over [min(x, 0), max(x, 0)] in 255 steps: (levels,
    step (rows,), zero point (rows,))."""
    X = onp.asarray(X, 'float32')
    lo, hi = onp.minimum(X.min(-1), 0), onp.maximum(X.max(-1), 0)
    step = onp.where(hi > lo, (hi - lo) / onp.float32(255), onp.float32(1)).astype('float32')
    zero = onp.rint(-lo / step).astype('float32')
    inverse = (onp.float32(1) / step)[:, None]
    levels = onp.floor(onp.clip(X * inverse + zero[:, None] + onp.float32(0.5), 0, 255))
    return levels.astype('int64'), step, zero


def quantize_weight(W):
    """Each row of W (N, K) to s8 of 7 bits (|level| <= 63): (levels, scale (N,))."""
    W = onp.asarray(W, 'float32')
    top = onp.abs(W).max(-1)
    scale = onp.where(top > 0, top / onp.float32(63), onp.float32(1)).astype('float32')
    levels = onp.clip(onp.rint(W * (onp.float32(1) / scale)[:, None]), -63, 63)
    return levels.astype('int64'), scale


def int8_dense(X, W, b=None):
    """X (..., K) @ W^T (+ b) with both sides quantized as the kernels do,
    the integer sums exact."""
    shape = X.shape
    x, step, zero = quantize_rows(onp.asarray(X).reshape(-1, shape[-1]))
    w, scale = quantize_weight(W)
    sums = (x @ w.T).astype('float64')
    Y = step[:, None] * scale[None, :] * (sums - zero[:, None] * w.sum(1)[None, :])
    if b is not None:
        Y = Y + b
    return Y.reshape(*shape[:-1], W.shape[0])


def encoder_layer(X, valid_lens, w, num_heads, activation='gelu', eps=1e-12, dense=None):
    """One post-LayerNorm encoder block (dropout off) in NumPy; w: W_q, W_k,
    W_v, W_o (with b_q .. b_o, or without biases), gamma1, beta1, W1, b1, W2, b2,
    gamma2, beta2; `dense(X, W, b)` multiplies (exact float64 by default)."""
    erf = onp.vectorize(math.erf)
    dense = dense or (lambda X, W, b=None: X @ W.T + (0 if b is None else b))
    X = onp.asarray(X, 'float64')
    B, T, H = X.shape
    d = H // num_heads
    get = lambda name: w.get(name)  # noqa: E731

    def heads(Y):
        return Y.reshape(B, T, num_heads, d).transpose(0, 2, 1, 3)
    q, k, v = (heads(dense(X, w[f'W_{n}'], get(f'b_{n}'))) for n in 'qkv')
    scores = q @ k.transpose(0, 1, 3, 2) / onp.sqrt(d)
    key_is_valid = onp.arange(T)[None, :] < onp.asarray(valid_lens)[:, None]
    scores = onp.where(key_is_valid[:, None, None, :], scores, -1e6)
    att = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, T, H)
    Y = _layer_norm(X + dense(att, w['W_o'], get('b_o')), w['gamma1'], w['beta1'], eps)
    hidden = dense(Y, w['W1'], w['b1'])
    hidden = (0.5 * hidden * (1 + erf(hidden / onp.sqrt(2))) if activation == 'gelu'
              else onp.maximum(hidden, 0))
    return _layer_norm(Y + dense(hidden, w['W2'], w['b2']), w['gamma2'], w['beta2'], eps)
