"""The fast twin of the book's BERT: HybridBlocks with the same parameter tree.

`HybridBERTModel.from_config(get_config('d2l.pretrain'))` builds the model;
`hybridize(static_alloc=True, static_shape=True)` compiles it. A `.params`
file saved from `book.BERTModel` loads into `HybridBERTModel` and back.
Real-BERT configs add parameters (learned positions, biases, embedding
LayerNorm) under the names d2l's pretrained checkpoints use.
"""
import mxnet as mx
from mxnet.gluon import nn

from .execution import Planned
from .config import BERTConfig
from .inputs import (check_encoded, check_pred_positions, checked_scope, inputs_checked,
                     is_symbolic, prepare_encoder_inputs, prepare_pred_positions)
from .layers import (Dense, Dropout, EncoderBlock, LayerNorm, cls_rows, cross_entropy,
                     gather_rows, param_value, sinusoidal_positions)

__all__ = ['HybridBERTEncoder', 'HybridMaskLM', 'HybridNextSentencePred',
           'HybridBERTModel', 'check_heads_trained']


def check_heads_trained(config, what):
    """Refuse `what` (an argument or an export) that needs the MLM and NSP
    heads of a model whose checkpoint had none."""
    if not config.pretraining_heads:
        raise ValueError(f'{what}: this model\'s MLM and NSP heads are not trained (its '
                         'checkpoint has none, as Hugging Face\'s BertModel and '
                         'all-MiniLM-L6-v2): their outputs would be random. Use the '
                         'encoder (net.encoder, encode_batch, an export without the heads) '
                         'or train the heads first (config pretraining_heads=True)')


class HybridBERTEncoder(Planned, nn.HybridBlock):
    """BERT encoder (book.BERTEncoder's parameters, plus real-BERT options).

    backend: 'auto' (None), 'native' or 'mxnet' (bert_gluon/execution.py).
    forward(tokens, segments, valid_lens=None):
      tokens, segments: (B, T) ids; valid_lens: None or (B,).
      Returns encoded_X: (B, T, H).
    `for_inference()`: the same encoder for predictions (fused, no dropout).
    """
    check_inputs = True  # set False when batches are checked upstream

    def __init__(self, config, backend=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        H = config.num_hiddens
        with self.name_scope():
            self.token_embedding = nn.Embedding(config.vocab_size, H)
            self.segment_embedding = nn.Embedding(config.num_segments, H)
            if config.position_embedding == 'learned':
                # d2l's checkpoints: a (1, max_len, H) parameter of this name
                self.pos_embedding = self.params.get(
                    'pos_embedding', shape=(1, config.max_len, H))
            if config.embedding_layer_norm:
                self.embedding_ln = LayerNorm(config.layer_norm_eps, H)
            self.embedding_dropout = Dropout(
                config.dropout if config.embedding_dropout else 0.0)
            self.blks = nn.HybridSequential()
            for _ in range(config.num_layers):
                self.blks.add(EncoderBlock(
                    H, config.ffn_num_hiddens, config.num_heads,
                    config.dropout, config.use_bias, config.activation,
                    config.layer_norm_eps))
        self.set_execution(backend, precision=config.dtype)

    def _sibling_of(self, prefix, params):
        sibling = HybridBERTEncoder(self.config, prefix=prefix, params=params)
        sibling.check_inputs = self.check_inputs
        return sibling

    def forward(self, tokens, segments, valid_lens=None):
        if is_symbolic(tokens):
            return super().forward(tokens, segments, valid_lens)
        tokens, segments, valid_lens = prepare_encoder_inputs(
            self.config, self.check_inputs, tokens, segments, valid_lens)
        with checked_scope():
            return super().forward(tokens, segments, valid_lens)

    def _embed(self, F, tokens, segments, pos_embedding):
        # Shape of X: (batch size, max sequence length, num_hiddens)
        if self.native and pos_embedding is not None:
            P = pos_embedding  # (1, max_len, H): the kernel reads its first T rows
        elif pos_embedding is None:
            P = sinusoidal_positions(F, tokens, self.config.num_hiddens)  # (T, H)
        else:
            positions = F.npx.arange_like(tokens, axis=1).astype('int32')  # (T,)
            P = F.np.take(F.np.squeeze(pos_embedding, axis=0), positions, axis=0)
        if self.native:
            X = F.bert_embed(  # the three lookups and sums in one pass
                tokens.as_nd_ndarray(), segments.as_nd_ndarray(),
                param_value(F, self.token_embedding.weight, tokens),
                param_value(F, self.segment_embedding.weight, tokens),
                P.as_nd_ndarray()).as_np_ndarray()
        else:
            X = self.token_embedding(tokens) + self.segment_embedding(segments) + P
        if self.config.embedding_layer_norm:
            X = self.embedding_ln(X)
        return self.embedding_dropout(X)

    def hybrid_forward(self, F, tokens, segments, valid_lens,
                       pos_embedding=None):
        X = self._embed(F, tokens, segments, pos_embedding)
        if self.purpose == 'inference' and self.native:  # every block in one native op
            weights = [w for blk in self.blks for w in blk.fused_weights(F, X)]
            return F.bert_encoder_stack(
                X.as_nd_ndarray(), valid_lens.as_nd_ndarray(), *weights,
                num_layers=len(self.blks), **self.blks[0].fused_attributes()).as_np_ndarray()
        for blk in self.blks:
            X = blk(X, valid_lens)
        return X

    def hidden_states(self, tokens, segments, valid_lens=None):
        """Every layer's output, eagerly: [embeddings, block 1, ..., block L],
        each (B, T, H), as Hugging Face's `output_hidden_states`."""
        tokens, segments, valid_lens = prepare_encoder_inputs(
            self.config, self.check_inputs, tokens, segments, valid_lens)
        self.execution.sync()
        pos = (self.pos_embedding.data(tokens.ctx)
               if self.config.position_embedding == 'learned' else None)
        states = [self._embed(mx.nd, tokens,
                              segments, pos)]
        for blk in self.blks:
            states.append(blk(states[-1], valid_lens))
        return states


class HybridMaskLM(Planned, nn.HybridBlock):
    """The masked language model head (book.MaskLM's parameters).

    forward(X, pred_positions): X (B, T, H), pred_positions (B, P)
    -> mlm_Y_hat (B, P, vocab_size).
    """
    check_inputs = True

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        H = config.num_hiddens
        self.num_hiddens = H
        with self.name_scope():
            self.mlp = nn.HybridSequential()
            self.mlp.add(Dense(H, flatten=False, activation=config.activation,
                               in_units=H))
            self.mlp.add(LayerNorm(config.layer_norm_eps, H))
            self.mlp.add(Dense(config.vocab_size, flatten=False, in_units=H,
                               vocabulary=True))

    def forward(self, X, pred_positions):
        if not is_symbolic(X) and not inputs_checked():
            batch_size, seq_len, _ = check_encoded('X', X, self.num_hiddens)
            check_pred_positions(pred_positions, batch_size, seq_len,
                                 self.check_inputs)
        return super().forward(X, pred_positions)

    def decoder_inputs(self, F, X, pred_positions):
        """The head up to its vocabulary projection (`mlp[-1]`): the masked
        rows (B, P, H) through the hidden Dense and LayerNorm."""
        hidden = gather_rows(F, X, pred_positions)  # (B, P, H)
        for i in range(len(self.mlp) - 1):
            hidden = self.mlp[i](hidden)
        return hidden

    def hybrid_forward(self, F, X, pred_positions):
        return self.mlp[len(self.mlp) - 1](self.decoder_inputs(F, X, pred_positions))

    def weighted_loss(self, F, X, pred_positions, mlm_Y, mlm_weights):
        """The head and the book's weighted cross-entropy, for a parent's
        graph: X (B, T, H), pred_positions, mlm_Y, mlm_weights (B, P) ->
        the loss of each slot (B, P), 0 where the weight is 0. On the native
        backend only slots of nonzero weight are projected onto the
        vocabulary (same numbers: the book multiplies the others by 0)."""
        hidden = self.decoder_inputs(F, X, pred_positions)  # (B, P, H)
        decoder = self.mlp[len(self.mlp) - 1]
        plan = self._running()
        if not plan.native:
            return cross_entropy(F, decoder(hidden), mlm_Y) * mlm_weights
        weights = mlm_weights.as_nd_ndarray()
        logits = F.bert_dense(  # (B, P, V), weighted rows packed on top
            hidden.as_nd_ndarray(), param_value(F, decoder.weight, hidden),
            param_value(F, decoder.bias, hidden), weights, packed=True,
            products=plan.dense_products)
        return F.bert_softmax_ce(logits, mlm_Y.as_nd_ndarray(), weights,
                                 packed=True)[0].as_np_ndarray()


class HybridNextSentencePred(Planned, nn.HybridBlock):
    """The next sentence prediction head (book.NextSentencePred's parameters).

    Its hidden layer is BERT's pooler. forward(X): X (B, T, H) -> (B, 2).
    """
    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        H = config.num_hiddens
        self.num_hiddens = H
        with self.name_scope():
            self.mlp = nn.HybridSequential()
            self.mlp.add(nn.Dense(H, activation='tanh', in_units=H))
            self.mlp.add(nn.Dense(2, in_units=H))

    def forward(self, X):
        if not is_symbolic(X) and not inputs_checked():
            check_encoded('X', X, self.num_hiddens)
        return super().forward(X)

    def hybrid_forward(self, F, X):
        # 0 is the index of the '<cls>' token; X[:, 0, :] is (B, H)
        return self.mlp(cls_rows(F, X))


class HybridBERTModel(Planned, nn.HybridBlock):
    """The BERT model: encoder, MLM head, NSP head (book.BERTModel's tree).

    backend: 'auto' (None), 'native' or 'mxnet'; `net.plan` says how it
    runs (bert_gluon/execution.py).
    forward(tokens, segments, valid_lens=None, pred_positions=None)
      -> (encoded_X (B, T, H), mlm_Y_hat (B, P, V) or None, nsp_Y_hat (B, 2)).
    With pred_positions the whole model runs as one graph when hybridized;
    without, the encoder and NSP graphs run.
    `for_inference()`: the same model for predictions (fused encoder
    blocks, no dropout, never recorded), sharing these parameters.
    A model whose config says its heads are not trained
    (`pretraining_heads=False`: a checkpoint without them) refuses
    pred_positions and answers nsp_Y_hat None: its heads are random.
    """
    def __init__(self, config, backend=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(config, BERTConfig):
            raise ValueError('config must be a bert_gluon.BERTConfig, got '
                             f'{type(config).__name__}')
        self.config = config
        with self.name_scope():
            self.encoder = HybridBERTEncoder(config)
            self.nsp = HybridNextSentencePred(config)
            self.mlm = HybridMaskLM(config)
        self.set_execution(backend, precision=config.dtype)

    def _sibling_of(self, prefix, params):
        sibling = HybridBERTModel(self.config, prefix=prefix, params=params)
        sibling.check_inputs = self.check_inputs
        return sibling

    @classmethod
    def from_config(cls, config, backend=None, **changes):
        from .config import get_config
        return cls(get_config(config, **changes), backend=backend)

    @property
    def check_inputs(self):
        return self.encoder.check_inputs

    @check_inputs.setter
    def check_inputs(self, value):
        self.encoder.check_inputs = self.mlm.check_inputs = bool(value)

    def forward(self, tokens, segments, valid_lens=None, pred_positions=None):
        if is_symbolic(tokens):
            return super().forward(tokens, segments, valid_lens,
                                   pred_positions)
        tokens, segments, valid_lens = prepare_encoder_inputs(
            self.config, self.check_inputs, tokens, segments, valid_lens)
        if pred_positions is not None:
            check_heads_trained(self.config, 'pred_positions')
            pred_positions = prepare_pred_positions(pred_positions, tokens,
                                                    self.check_inputs)
        with checked_scope():
            if pred_positions is None:
                encoded_X = self.encoder(tokens, segments, valid_lens)
                nsp_Y_hat = self.nsp(encoded_X) if self.config.pretraining_heads else None
                return encoded_X, None, nsp_Y_hat
            return super().forward(tokens, segments, valid_lens, pred_positions)

    def hybrid_forward(self, F, tokens, segments, valid_lens, pred_positions):
        encoded_X = self.encoder(tokens, segments, valid_lens)
        mlm_Y_hat = self.mlm(encoded_X, pred_positions)
        nsp_Y_hat = self.nsp(encoded_X)
        return encoded_X, mlm_Y_hat, nsp_Y_hat
