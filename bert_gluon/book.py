"""The book's BERT, cell for cell ("Dive into Deep Learning", section "BERT").

These are the book's `nn.Block`s on `mxnet.np`/`npx`, built from
`d2l.EncoderBlock` and `d2l.PositionalEncoding`, with the book's constructor
signatures and return values. Two additions, neither changing a number: each
`forward` first checks its inputs (a clear `ValueError` instead of a crash
inside MXNet), and each block keeps the sizes it was built with.
The fast, hybridizable twin with the same parameter tree is `model.py`.
"""
from mxnet import np
from mxnet.gluon import nn

from .inputs import check_encoded, check_encoder_inputs, check_pred_positions

__all__ = ['BERTEncoder', 'MaskLM', 'NextSentencePred', 'BERTModel']


class _D2L:
    """`from d2l import mxnet as d2l`, done when a book block is first built:
    d2l imports matplotlib, pandas and IPython, which `import bert_gluon`
    should not."""
    def __getattr__(self, name):
        from d2l import mxnet
        return getattr(mxnet, name)


d2l = _D2L()


class BERTEncoder(nn.Block):
    """BERT encoder."""
    check_inputs = True  # set False when batches are checked upstream

    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads,
                 num_layers, dropout, **kwargs):
        super(BERTEncoder, self).__init__(**kwargs)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        self.pos_encoding = d2l.PositionalEncoding(num_hiddens, dropout)
        self.blks = nn.Sequential()
        for _ in range(num_layers):
            self.blks.add(d2l.EncoderBlock(
                num_hiddens, ffn_num_hiddens, num_heads, dropout))

    def forward(self, tokens, segments, valid_lens):
        check_encoder_inputs(tokens, segments, valid_lens, self.vocab_size,
                             max_len=self.pos_encoding.P.shape[1],
                             check_values=self.check_inputs)
        # Shape of X remains unchanged in the following code snippet:
        # (batch size, max sequence length, num_hiddens)
        X = self.token_embedding(tokens) + self.segment_embedding(segments)
        X = self.pos_encoding(X)
        for blk in self.blks:
            X = blk(X, valid_lens)
        return X


class MaskLM(nn.Block):
    """The masked language model task of BERT."""
    check_inputs = True

    def __init__(self, vocab_size, num_hiddens, **kwargs):
        super(MaskLM, self).__init__(**kwargs)
        self.num_hiddens = num_hiddens
        self.mlp = nn.Sequential()
        self.mlp.add(
            nn.Dense(num_hiddens, flatten=False, activation='relu'))
        self.mlp.add(nn.LayerNorm())
        self.mlp.add(nn.Dense(vocab_size, flatten=False))

    def forward(self, X, pred_positions):
        batch_size, seq_len, _ = check_encoded('X', X)
        check_pred_positions(pred_positions, batch_size, seq_len,
                             check_values=self.check_inputs)
        num_pred_positions = pred_positions.shape[1]
        pred_positions = pred_positions.reshape(-1)
        batch_size = X.shape[0]
        batch_idx = np.arange(0, batch_size)
        # Suppose that batch_size = 2, num_pred_positions = 3,
        # batch_idx = np.array([0, 0, 0, 1, 1, 1])
        batch_idx = np.repeat(batch_idx, num_pred_positions)
        masked_X = X[batch_idx, pred_positions]
        masked_X = masked_X.reshape((batch_size, num_pred_positions, -1))
        mlm_Y_hat = self.mlp(masked_X)
        return mlm_Y_hat


class NextSentencePred(nn.Block):
    """The next sentence prediction task of BERT."""
    def __init__(self, num_hiddens, **kwargs):
        super(NextSentencePred, self).__init__(**kwargs)
        self.mlp = nn.Sequential()
        self.mlp.add(nn.Dense(num_hiddens, activation='tanh'))
        self.mlp.add(nn.Dense(2))

    def forward(self, X):
        check_encoded('X', X)
        # 0 is the index of the CLS token
        X = X[:, 0, :]
        # X shape: (batch size, num_hiddens)
        return self.mlp(X)


class BERTModel(nn.Block):
    """The BERT model."""
    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads,
                 num_layers, dropout):
        super(BERTModel, self).__init__()
        self.encoder = BERTEncoder(vocab_size, num_hiddens, ffn_num_hiddens,
                                   num_heads, num_layers, dropout)
        self.nsp = NextSentencePred(num_hiddens)
        self.mlm = MaskLM(vocab_size, num_hiddens)

    def forward(self, tokens, segments, valid_lens=None,
                pred_positions=None):
        encoded_X = self.encoder(tokens, segments, valid_lens)
        if pred_positions is not None:
            mlm_Y_hat = self.mlm(encoded_X, pred_positions)
        else:
            mlm_Y_hat = None
        nsp_Y_hat = self.nsp(encoded_X)
        return encoded_X, mlm_Y_hat, nsp_Y_hat

    @classmethod
    def from_config(cls, config):
        """The book's model of a `BERTConfig` that the book can express."""
        if not config.is_book:
            raise ValueError('the book blocks hold only sinusoidal positions, '
                             'no biases, ReLU, no embedding LayerNorm, eps '
                             f'1e-5, max_len 1000; got {config}. Use '
                             'bert_gluon.HybridBERTModel.from_config')
        return cls(config.vocab_size, config.num_hiddens,
                   config.ffn_num_hiddens, config.num_heads,
                   config.num_layers, config.dropout)
