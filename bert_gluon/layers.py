"""Hybridizable pieces of the BERT twin.

Each block mirrors a d2l block's parameter names (`W_q`, `addnorm1.ln`,
`ffn.dense1`, ...), so the twin and the book share one `.params` file.
Legend for shape tags: B batch size, T sequence length, H num_hiddens,
N num_heads, d = H / N, P prediction slots per sequence.
Everything here avoids Python shapes so it hybridizes with static shapes.
"""
import math

import mxnet as mx
from mxnet.gluon import nn

from .execution import Planned

__all__ = ['Dense', 'Dropout', 'LayerNorm', 'MultiHeadSelfAttention', 'AddNorm',
           'PositionWiseFFN', 'EncoderBlock', 'sinusoidal_positions',
           'param_value', 'gather_rows', 'cls_rows', 'cross_entropy']


class Dense(Planned, nn.Dense):
    """`nn.Dense` that also knows 'gelu' (the exact, erf form real BERT uses).

    Same parameters as `nn.Dense`, so it can stand where the book has one.
    On the native backend (flatten=False) its product runs the native
    bert_linear op, products by the provider measured fastest here (float32 or bf16:
    kernels/providers.py), forward and backward;
    vocabulary=True (the MLM head's 20k-word output, with a bias) runs
    bert_dense instead, which in training projects only weighted slots
    (bench/bench_kernels.py compares both with FullyConnected).
    """
    def __init__(self, units, activation=None, vocabulary=False, **kwargs):
        self._gelu = activation == 'gelu'
        super().__init__(units, activation=None if self._gelu else activation,
                         **kwargs)
        self._vocabulary = vocabulary and self.bias is not None

    def hybrid_forward(self, F, x, weight, bias=None):
        plan = self._running()
        if plan.native and self._flatten is False:
            inputs = [x.as_nd_ndarray(), weight.as_nd_ndarray()]
            if bias is not None:
                inputs.append(bias.as_nd_ndarray())
            if self._vocabulary:
                out = F.bert_dense(*inputs, products=plan.dense_products)
            else:
                out = F.bert_linear(*inputs, use_bias=bias is not None,
                                    products=plan.dense_products)
            out = out.as_np_ndarray()
            if self.act is not None:
                out = self.act(out)
        else:
            out = super().hybrid_forward(F, x, weight, bias)
        return F.npx.leaky_relu(out, act_type='gelu') if self._gelu else out


class Dropout(Planned, nn.Dropout):
    """`nn.Dropout`; in a tree whose purpose is 'training', on the native
    backend, it runs the native kernel (a hashed-counter mask, faster than
    MXNet's on the CPU: bench/bench_kernels.py); in an 'inference' tree it
    is gone."""
    def hybrid_forward(self, F, x):
        if self.purpose == 'inference':
            return x
        if (self._rate > 0 and not self._axes and self.purpose == 'training'
                and self.native):
            return F.bert_dropout(x.as_nd_ndarray(), p=self._rate)[0].as_np_ndarray()
        return super().hybrid_forward(F, x)


class LayerNorm(Planned, nn.LayerNorm):
    """`nn.LayerNorm` over the last axis (same parameters); the native kernel
    on the native backend.

    ln(data, residual) is ln(data + residual), the sum fused into the kernel.
    """
    def __init__(self, epsilon=1e-5, in_channels=0, **kwargs):
        super().__init__(axis=-1, epsilon=epsilon, in_channels=in_channels, **kwargs)

    def hybrid_forward(self, F, data, residual=None, gamma=None, beta=None):
        if not self.native:
            if residual is not None:
                data = data + residual
            return super().hybrid_forward(F, data, gamma, beta)
        inputs = [data.as_nd_ndarray(), gamma.as_nd_ndarray(), beta.as_nd_ndarray()]
        if residual is not None:
            inputs.append(residual.as_nd_ndarray())
        out = F.bert_layer_norm(*inputs, eps=self._epsilon,
                                residual=residual is not None)
        return out[0].as_np_ndarray()


def _split_heads(F, X, num_heads):
    # (B, T, H) -> (B, T, N, d) -> (B, N, T, d) -> (B*N, T, d), as d2l.transpose_qkv
    X = F.npx.reshape(X, (-2, -2, num_heads, -1))
    X = F.np.transpose(X, (0, 2, 1, 3))
    return F.npx.reshape(X, (-5, -2, -2))


def _merge_heads(F, X, num_heads):
    # (B*N, T, d) -> (B, N, T, d) -> (B, T, N, d) -> (B, T, H), as d2l.transpose_output
    X = F.npx.reshape(X, (-6, -1, num_heads, -2, -2))
    X = F.np.transpose(X, (0, 2, 1, 3))
    return F.npx.reshape(X, (-2, -2, -1))


class MultiHeadSelfAttention(Planned, nn.HybridBlock):
    """d2l.MultiHeadAttention with queries = keys = values (all BERT needs)."""
    def __init__(self, num_hiddens, num_heads, dropout, use_bias=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self._scale = 1.0 / math.sqrt(num_hiddens // num_heads)
        with self.name_scope():
            self.dropout = Dropout(dropout)
            for name in ('W_q', 'W_k', 'W_v', 'W_o'):
                setattr(self, name, Dense(num_hiddens, use_bias=use_bias,
                                          flatten=False, in_units=num_hiddens))

    def hybrid_forward(self, F, X, valid_lens):
        # X: (B, T, H); valid_lens: (B,), every row's count of real tokens
        N = self.num_heads
        if self.native:  # heads read in place: no split/merge transposes
            q, k, v = (W(X).as_nd_ndarray() for W in (self.W_q, self.W_k, self.W_v))
            lens = valid_lens.as_nd_ndarray()
            if self.dropout._rate == 0 or self.dropout_off(F):
                # one op: the (T, T) probabilities never leave the kernel
                output = F.bert_attention(q, k, v, lens, num_heads=N, scale=self._scale)
            else:
                probs = F.bert_attention_scores(q, k, lens, num_heads=N,
                                                scale=self._scale)  # (B, N, T, T)
                probs = self.dropout(probs.as_np_ndarray()).as_nd_ndarray()
                output = F.bert_attention_context(probs, v, num_heads=N)
            return self.W_o(output.as_np_ndarray())  # (B, T, H)
        queries = _split_heads(F, self.W_q(X), N)  # (B*N, T, d)
        keys = _split_heads(F, self.W_k(X), N)
        values = _split_heads(F, self.W_v(X), N)
        scores = F.npx.batch_dot(queries, keys, transpose_b=True) * self._scale
        # Scores of keys past valid_lens are replaced by -1e6, as d2l's
        # masked_softmax does: their exponentials are exactly 0, and a row
        # with no valid key attends uniformly (an added -1e6 would not).
        # s * 1 + 0 is s and s * 0 - 1e6 is -1e6, exactly (MXNet 1.9's
        # np.where with a scalar has a wrong backward). Then a plain softmax
        # (MXNet's length-aware one is several times slower on the CPU).
        key_positions = F.npx.arange_like(X, axis=1)  # (T,)
        valid = (F.np.expand_dims(key_positions, 0) < F.np.expand_dims(
            valid_lens, -1)).astype('float32')  # (B, T)
        valid = F.np.expand_dims(F.np.expand_dims(valid, 1), 1)  # (B, 1, 1, T)
        scores = (F.npx.reshape(scores, (-6, -1, N, -2, -2)) * valid
                  + (valid - 1) * 1e6)  # (B, N, T, T)
        weights = F.npx.reshape(F.npx.softmax(scores, axis=-1), (-5, -2, -2))
        output = F.npx.batch_dot(self.dropout(weights), values)  # (B*N, T, d)
        return self.W_o(_merge_heads(F, output, N))  # (B, T, H)


class AddNorm(Planned, nn.HybridBlock):
    """Residual connection followed by layer normalization (d2l.AddNorm)."""
    def __init__(self, dropout, epsilon=1e-5, in_channels=0, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.dropout = Dropout(dropout)
            self.ln = LayerNorm(epsilon=epsilon, in_channels=in_channels)

    def hybrid_forward(self, F, X, Y):
        return self.ln(self.dropout(Y), X)  # LayerNorm(dropout(Y) + X)


class PositionWiseFFN(Planned, nn.HybridBlock):
    """Position-wise feed-forward network (d2l.PositionWiseFFN)."""
    def __init__(self, ffn_num_hiddens, ffn_num_outputs, activation='relu',
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        with self.name_scope():
            self.dense1 = Dense(ffn_num_hiddens, activation=activation,
                                flatten=False, in_units=ffn_num_outputs)
            self.dense2 = Dense(ffn_num_outputs, flatten=False,
                                in_units=ffn_num_hiddens)

    def hybrid_forward(self, F, X):
        return self.dense2(self.dense1(X))


class EncoderBlock(Planned, nn.HybridBlock):
    """Transformer encoder block (d2l.EncoderBlock), post-LayerNorm."""
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout,
                 use_bias=False, activation='relu', layer_norm_eps=1e-5,
                 **kwargs):
        super().__init__(**kwargs)
        self._use_bias, self._eps = use_bias, layer_norm_eps
        with self.name_scope():
            self.attention = MultiHeadSelfAttention(num_hiddens, num_heads,
                                                    dropout, use_bias)
            self.addnorm1 = AddNorm(dropout, layer_norm_eps, num_hiddens)
            self.ffn = PositionWiseFFN(ffn_num_hiddens, num_hiddens,
                                       activation)
            self.addnorm2 = AddNorm(dropout, layer_norm_eps, num_hiddens)

    def hybrid_forward(self, F, X, valid_lens):
        if self.purpose == 'inference' and self.native:
            return self._fused(F, X, valid_lens)
        Y = self.addnorm1(X, self.attention(X, valid_lens))
        return self.addnorm2(Y, self.ffn(Y))

    def _fused(self, F, X, valid_lens):
        """The whole block as one native op (no dropout, no backward): what
        an inference tree (`for_inference()`) runs."""
        return F.bert_encoder_layer(
            X.as_nd_ndarray(), valid_lens.as_nd_ndarray(), *self.fused_weights(F, X),
            **self.fused_attributes()).as_np_ndarray()

    def fused_weights(self, F, like):
        """The block's parameters in the order the fused ops take them."""
        att, ffn = self.attention, self.ffn
        params = [att.W_q.weight, att.W_k.weight, att.W_v.weight, att.W_o.weight]
        if self._use_bias:
            params += [att.W_q.bias, att.W_k.bias, att.W_v.bias, att.W_o.bias]
        params += [self.addnorm1.ln.gamma, self.addnorm1.ln.beta,
                   ffn.dense1.weight, ffn.dense1.bias, ffn.dense2.weight, ffn.dense2.bias,
                   self.addnorm2.ln.gamma, self.addnorm2.ln.beta]
        return [param_value(F, p, like) for p in params]

    def fused_attributes(self):
        """The fused ops' attributes for this block, by its plan."""
        plan = self._running()
        return dict(num_heads=self.attention.num_heads, scale=self.attention._scale,
                    eps=self._eps, activation=self.ffn.activation, use_bias=self._use_bias,
                    products=plan.products, request_products=plan.request_products)


def sinusoidal_positions(F, X, num_hiddens):
    """d2l.PositionalEncoding's table for the length of X's axis 1, computed
    in the graph.

    Returns P of shape (T, H): P[t, 2i] = sin(t / 10000^(2i/H)),
    P[t, 2i+1] = cos(...), the same float32 arithmetic as d2l's table.
    """
    positions = F.np.expand_dims(  # (T, 1)
        F.npx.arange_like(X, axis=1).astype('float32'), -1)
    angles = positions / F.np.power(
        10000, F.np.arange(0, num_hiddens, 2) / num_hiddens)  # (T, H/2)
    # Interleave: stack to (T, H/2, 2), flatten to (T, H) = sin, cos, sin, ...
    P = F.np.stack([F.np.sin(angles), F.np.cos(angles)], axis=-1)
    return F.npx.reshape(P, (-2, -1))


def param_value(F, param, like):
    """A child block's Parameter used directly in a parent's hybrid_forward,
    as a legacy array for the native ops: its symbol when traced, else its
    value on `like`'s context."""
    value = param.var() if F is mx.sym else param.data(like.ctx)
    return value.as_nd_ndarray()


def cls_rows(F, X):
    """X[:, 0, :], the '<cls>' rows: (B, T, H) -> (B, H), as a slice and a
    squeeze (X[:, 0, :] traces to a reshape ONNX converters mishandle)."""
    return F.np.squeeze(F.npx.slice(X, begin=(None, 0, None), end=(None, 1, None)), axis=1)


def gather_rows(F, X, pred_positions):
    """X[b, pred_positions[b, j]] for every b, j, without advanced indexing.

    X: (B, T, H); pred_positions: (B, P) -> (B, P, H).
    batch_size=2, 3 positions -> batch_idx = [[0, 0, 0], [1, 1, 1]]
    The gather_nd form is GluonNLP's (select_vectors_by_position, Apache-2.0).
    """
    positions = pred_positions.astype('int32')
    batch_idx = (F.np.expand_dims(F.npx.arange_like(positions, axis=0), -1)
                 .astype('int32') + F.np.zeros_like(positions))
    return F.npx.gather_nd(X, F.np.stack([batch_idx, positions]))


def cross_entropy(F, logits, labels):
    """-log softmax(logits)[label] along the last axis, as gluon's
    SoftmaxCrossEntropyLoss: (..., C) logits, (...) labels -> (...)."""
    return -F.npx.pick(F.npx.log_softmax(logits), labels, axis=-1)
