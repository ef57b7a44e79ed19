"""The fine-tuned classifier and its folder: the class, the writer and the
reader of one on-disk format.

A classifier folder (what `finetune` leaves, what the endpoint serves):
  classifier.json   task, label names, num_outputs, max_len, tokenizer kind
  config.json       the encoder's BERTConfig
  vocab.txt | vocab.json   the tokenizer's vocabulary (WordPiece | word-level)
  classifier.params the encoder, its '<cls>' hidden layer, the output layer
"""
from pathlib import Path

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

from .execution import Planned
from .config import BERTConfig
from .fileio import atomic_save_parameters, atomic_write_json, read_json
from .inputs import checked_scope, is_symbolic, prepare_encoder_inputs
from .layers import cls_rows
from .model import HybridBERTModel
from .tokenization import WordPieceTokenizer, check_vocab_size, load_tokenizer

__all__ = ['BERTClassifier', 'CLASSIFIER_FILES', 'is_classifier_folder', 'save_classifier',
           'load_classifier']

# What save_classifier writes (one of the two vocabularies)
CLASSIFIER_FILES = ('classifier.json', 'config.json', 'vocab.txt', 'vocab.json',
                    'classifier.params')


class BERTClassifier(Planned, nn.HybridBlock):
    """The book's classifier: the pretrained encoder, its '<cls>' hidden layer
    (the NSP head's first Dense, BERT's pooler), and a new output layer.

    forward(tokens, segments, valid_lens=None) -> (B, num_outputs); the
    book's single tuple argument `forward((tokens, segments, valid_lens))`
    works too. The MLM head and the NSP output layer are left out, so their
    parameters are not trained (the book's `ignore_stale_grad` remark).
    It runs its model's plan (one Execution); `for_inference()` is the
    classifier predictions run (fused encoder blocks, no dropout).
    """
    def __init__(self, bert, num_outputs=3, labels=None, task=None, max_len=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bert, HybridBERTModel):
            raise ValueError('bert must be a bert_gluon.HybridBERTModel (load a '
                             'book model\'s parameters into one), got '
                             f'{type(bert).__name__}')
        self.config = bert.config
        if labels is not None and len(labels) != num_outputs:
            raise ValueError(f'labels: {num_outputs} names expected, got {labels!r}')
        # what serving needs to answer in words: label names, task, input length
        self.labels = tuple(labels) if labels is not None else tuple(map(str, range(num_outputs)))
        self.task, self.max_len = task, max_len or bert.config.max_len
        self._bert_prefix = bert.prefix  # its siblings rebuild the model around the encoder
        with self.name_scope():
            self.encoder = bert.encoder
            self.hidden = bert.nsp.mlp[0]
            self.output = nn.Dense(num_outputs, in_units=bert.config.num_hiddens)
        bert.execution.others.append(self)  # runs the model's plan, graphs dropped with its
        self._adopt(bert.execution)

    def _sibling_of(self, prefix, params):
        # a model over the classifier's encoder and pooler (its MLM head and
        # NSP output are left uninitialized: a classifier never runs them)
        shared = gluon.ParameterDict(self._bert_prefix)  # its children's names follow its prefix
        shared.update(params)
        bert = HybridBERTModel(self.config, prefix=self._bert_prefix, params=shared)
        return BERTClassifier(bert, len(self.labels), self.labels, self.task, self.max_len,
                              prefix=prefix, params=params)

    def forward(self, tokens, segments=None, valid_lens=None):
        if segments is None and isinstance(tokens, (list, tuple)):
            tokens, segments, valid_lens = tokens  # the book's calling style
        if is_symbolic(tokens):
            return super().forward(tokens, segments, valid_lens)
        tokens, segments, valid_lens = prepare_encoder_inputs(
            self.config, self.encoder.check_inputs, tokens, segments, valid_lens)
        with checked_scope():
            return super().forward(tokens, segments, valid_lens)

    def hybrid_forward(self, F, tokens, segments, valid_lens):
        encoded_X = self.encoder(tokens, segments, valid_lens)
        return self.output(self.hidden(cls_rows(F, encoded_X)))

    def freeze_encoder(self):
        """Train only the hidden and output layers."""
        self.encoder.collect_params().setattr('grad_req', 'null')


def is_classifier_folder(folder):
    """Whether `folder` holds a fine-tuned classifier (its classifier.json)."""
    return (Path(folder) / 'classifier.json').is_file()


def save_classifier(net, folder, tokenizer):
    """Everything needed to reload and serve `net` (a BERTClassifier) into
    `folder`; `load_classifier(folder)` reads it back."""
    folder = Path(folder)
    tokenizer.save(folder)
    atomic_write_json(folder / 'config.json', net.config.to_dict())
    atomic_write_json(folder / 'classifier.json', {
        'task': net.task, 'labels': list(net.labels), 'num_outputs': len(net.labels),
        'max_len': net.max_len,
        'tokenizer': 'wordpiece' if isinstance(tokenizer, WordPieceTokenizer) else 'word',
        'lowercase': getattr(tokenizer, 'lowercase', True)})
    atomic_save_parameters(net, folder / 'classifier.params')


def load_classifier(folder, ctx=None, **changes):
    """(BERTClassifier, tokenizer, config) from a classifier folder; the
    classifier knows its label names (`.labels`), task and max_len.
    changes: config fields that keep the weights' meaning (dtype, dropout)."""
    folder = Path(folder)
    if not is_classifier_folder(folder):
        raise ValueError(f'{folder} is not a fine-tuned classifier folder: no classifier.json')
    meta = read_json(folder / 'classifier.json')
    try:
        kind, labels, num_outputs = meta['tokenizer'], meta['labels'], int(meta['num_outputs'])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f'{folder / "classifier.json"} lacks a field: {exc}') from exc
    try:
        config = BERTConfig.from_dict(read_json(folder / 'config.json')).replace(**changes)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f'{folder / "config.json"} is not a bert_gluon config: {exc}') from exc
    tokenizer = load_tokenizer(folder, meta.get('lowercase', True),
                               {'wordpiece': 'vocab.txt', 'word': 'vocab.json'}.get(kind))
    check_vocab_size(tokenizer, config, folder)
    net = BERTClassifier(HybridBERTModel(config), num_outputs, labels=labels,
                         task=meta.get('task'), max_len=meta.get('max_len'))
    try:
        net.load_parameters(str(folder / 'classifier.params'), ctx=ctx or mx.cpu())
    except Exception as exc:  # MXNet raises its own error types
        raise ValueError(f'{folder / "classifier.params"} is missing, corrupt or for '
                         f'another model: {exc}') from exc
    return net, tokenizer, config
