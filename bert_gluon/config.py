"""Named configurations of BERT: the book's sizes and real-BERT variants.

A config is a frozen dataclass; a new one is an old one with a few fields
changed (`dataclasses.replace`), the way GluonNLP derives its named configs.
"""
import dataclasses

__all__ = ['BERTConfig', 'CONFIGS', 'DTYPES', 'TRAINING_DTYPES', 'get_config', 'list_configs',
           'check_positive_int']

DTYPES = ('float32', 'bfloat16', 'int8')  # of the products (BERTConfig.dtype)
TRAINING_DTYPES = ('float32', 'bfloat16')  # int8 quantizes inference only


def check_positive_int(name, value):
    """Refuse (naming `name`) anything but an int >= 1 (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    return value


@dataclasses.dataclass(frozen=True)
class BERTConfig:
    """Architecture of a BERT model.

    Fields (default in brackets):
      vocab_size [10000]: number of token ids; data-dependent, so usually
          replaced with `len(vocab)`.
      num_hiddens [768]: width of every hidden representation (H).
      ffn_num_hiddens [1024]: width of the position-wise FFN's hidden layer.
      num_heads [4]: attention heads (N); must divide `num_hiddens`.
      num_layers [2]: number of encoder blocks.
      dropout [0.1]: dropout on embeddings, attention weights and residuals.
      max_len [1000]: longest sequence the positional table covers
          (d2l.PositionalEncoding's default).
      position_embedding ['sinusoidal']: 'sinusoidal' (the book) or
          'learned' (real BERT, d2l's pretrained checkpoints).
      use_bias [False]: biases in the Q/K/V/O projections (False in the book).
      activation ['relu']: FFN activation, 'relu' (the book) or 'gelu'
          (real BERT, the exact erf form).
      embedding_layer_norm [False]: LayerNorm + dropout after the summed
          embeddings (real BERT); the book has dropout only.
      embedding_dropout [True]: dropout on the summed embeddings (the book's
          PositionalEncoding and real BERT have it; d2l's learned-position
          BERT, the one its checkpoints hold, does not).
      layer_norm_eps [1e-5]: epsilon of every LayerNorm (Gluon's default;
          real BERT checkpoints use 1e-12).
      num_segments [2]: segment (token type) ids.
      dtype ['float32']: precision of the matrix products. 'bfloat16' runs
          the Dense layers' and the MLM projection's products on bf16
          operands accumulated in float32 (parameters, optimizer states,
          LayerNorm, softmax and losses stay float32): the native backend,
          on a CPU with AVX512_BF16 or AMX. 'int8' runs the encoder blocks'
          products of inference graphs (`for_inference()`, what serving
          and `encode` run) on int8 operands: weights quantized per
          output channel once, each activation row with its own scale
          (kernels/blas.h); the pooler and heads, and every graph that
          trains, stay float32.
      pretraining_heads [True]: whether the MLM head and the NSP output
          layer hold trained weights. False for a checkpoint without them
          (Hugging Face's BertModel, such as all-MiniLM-L6-v2): they keep
          their random initialization, and the model refuses to answer with
          them (the encoder and the pooler are the checkpoint's).
    """
    vocab_size: int = 10000
    num_hiddens: int = 768
    ffn_num_hiddens: int = 1024
    num_heads: int = 4
    num_layers: int = 2
    dropout: float = 0.1
    max_len: int = 1000
    position_embedding: str = 'sinusoidal'
    use_bias: bool = False
    activation: str = 'relu'
    embedding_layer_norm: bool = False
    embedding_dropout: bool = True
    layer_norm_eps: float = 1e-5
    num_segments: int = 2
    dtype: str = 'float32'
    pretraining_heads: bool = True

    def __post_init__(self):
        for name in ('vocab_size', 'num_hiddens', 'ffn_num_hiddens',
                     'num_heads', 'num_layers', 'max_len', 'num_segments'):
            check_positive_int(name, getattr(self, name))
        if self.num_hiddens % self.num_heads:
            raise ValueError(f'num_heads ({self.num_heads}) must divide '
                             f'num_hiddens ({self.num_hiddens})')
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'dropout must be in [0, 1), got {self.dropout!r}')
        if self.position_embedding not in ('sinusoidal', 'learned'):
            raise ValueError("position_embedding must be 'sinusoidal' or "
                             f"'learned', got {self.position_embedding!r}")
        if self.activation not in ('relu', 'gelu'):
            raise ValueError("activation must be 'relu' or 'gelu', got "
                             f'{self.activation!r}')
        if not isinstance(self.pretraining_heads, bool):
            raise ValueError('pretraining_heads must be True or False, got '
                             f'{self.pretraining_heads!r}')
        if self.dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
        if not self.layer_norm_eps > 0:
            raise ValueError('layer_norm_eps must be > 0, got '
                             f'{self.layer_norm_eps!r}')

    @property
    def is_book(self):
        """True when the faithful `book.BERTModel` can hold this architecture."""
        return (self.position_embedding == 'sinusoidal' and not self.use_bias
                and self.max_len == 1000
                and self.activation == 'relu' and not self.embedding_layer_norm
                and self.embedding_dropout
                and self.layer_norm_eps == 1e-5 and self.num_segments == 2
                and self.dtype == 'float32')

    def replace(self, **changes):
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f'unknown BERTConfig fields: {sorted(unknown)}')
        return cls(**values)


# The book's demo cell: vocab 10000, 768 hidden, 1024 FFN, 4 heads, 2 layers.
BOOK_DEMO = BERTConfig()
# d2l's pretraining model ("Pretraining BERT", dropout 0.2 there); vocab_size
# comes from the data (20256 for WikiText-2 with min_freq 5).
D2L_PRETRAIN = BOOK_DEMO.replace(vocab_size=20256, num_hiddens=128,
                                 ffn_num_hiddens=256, num_heads=2, dropout=0.2)
# d2l's released checkpoints, architecture only: learned positions, biased
# projections ("Fine-Tuning BERT" loads them).
BERT_SMALL = D2L_PRETRAIN.replace(num_hiddens=256, ffn_num_hiddens=512,
                                  num_heads=4, max_len=512, dropout=0.1,
                                  position_embedding='learned', use_bias=True,
                                  embedding_dropout=False)
BERT_BASE = BERT_SMALL.replace(num_hiddens=768, ffn_num_hiddens=3072,
                               num_heads=12, num_layers=12)
# Google's BERT: everything real checkpoints need, on top of bert.base.
GOOGLE_BERT_BASE = BERT_BASE.replace(vocab_size=30522, activation='gelu',
                                     embedding_layer_norm=True,
                                     embedding_dropout=True,
                                     layer_norm_eps=1e-12)
# sentence-transformers/all-MiniLM-L6-v2 (BERT architecture, 6 x 384).
ALL_MINILM_L6_V2 = GOOGLE_BERT_BASE.replace(num_hiddens=384,
                                            ffn_num_hiddens=1536,
                                            num_layers=6)

CONFIGS = {
    'book.demo': BOOK_DEMO,
    'd2l.pretrain': D2L_PRETRAIN,
    'bert.small': BERT_SMALL,
    'bert.base': BERT_BASE,
    'google.bert.base': GOOGLE_BERT_BASE,
    'all-MiniLM-L6-v2': ALL_MINILM_L6_V2,
}


def list_configs():
    """The names `get_config` takes, sorted."""
    return sorted(CONFIGS)


def get_config(name, **changes):
    """The named config, with `changes` applied, e.g.
    `get_config('d2l.pretrain', vocab_size=len(vocab))`."""
    if isinstance(name, BERTConfig):
        return name.replace(**changes) if changes else name
    if name not in CONFIGS:
        raise ValueError(f'unknown config name {name!r}; expected one of '
                         f'{list_configs()}')
    return CONFIGS[name].replace(**changes) if changes else CONFIGS[name]
