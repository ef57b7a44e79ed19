"""Tokenizers: the book's word-level `Vocab` and BERT's WordPiece, one
interface (`len`, `tokenize`, `encode_pairs`, `save`), and the one reader of
a folder's vocabulary with the check every format makes: its size must be
the embedding's rows.
"""
import threading
from pathlib import Path

import numpy as onp

from .data.vocab import Vocab
from .fileio import atomic_copy, atomic_write_json, read_json

__all__ = ['WordPieceTokenizer', 'Vocab', 'load_tokenizer', 'check_vocab_size']


class WordPieceTokenizer:
    """BERT's uncased WordPiece (Hugging Face `tokenizers`) on a vocab.txt,
    giving the arrays the twin takes."""
    def __init__(self, vocab_file, lowercase=True):
        from tokenizers import BertWordPieceTokenizer
        self.vocab_file, self.lowercase = str(vocab_file), lowercase
        try:
            # one for `tokenize`, one whose truncation and padding
            # encode_pairs sets per call (under a lock): neither leaks
            self._tokenizer, self._padder = (
                BertWordPieceTokenizer(self.vocab_file, lowercase=lowercase)
                for _ in range(2))
        except Exception as exc:  # tokenizers raises its own types
            raise ValueError(f'vocab file {self.vocab_file} is unreadable: {exc}') from exc
        self.vocab_size = self._tokenizer.get_vocab_size()
        missing = [t for t in ('[CLS]', '[SEP]', '[PAD]', '[UNK]')
                   if self._tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f'vocab file {self.vocab_file} lacks the special '
                             f'tokens {missing} (a BERT vocab.txt, one token per line)')
        self._lock = threading.Lock()

    def __len__(self):
        return self.vocab_size

    def save(self, folder):
        """Its vocab.txt into `folder`, and whether it lower-cases in
        tokenizer_config.json (Hugging Face's file and field);
        `load_tokenizer(folder)` reads both back."""
        atomic_copy(self.vocab_file, Path(folder) / 'vocab.txt')
        atomic_write_json(Path(folder) / 'tokenizer_config.json',
                          {'do_lower_case': self.lowercase})

    def tokenize(self, text):
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode_pairs(self, pairs, max_len):
        """[CLS] a [SEP] b [SEP] (or [CLS] a [SEP] where b is None),
        truncated longest-first to max_len.
        Returns tokens (N, max_len) int32, segments int32, valid_lens float32."""
        if max_len < 3:
            raise ValueError(f'max_len must be >= 3, got {max_len}')
        single = [i for i, (_, b) in enumerate(pairs) if b is None]
        double = [i for i, (_, b) in enumerate(pairs) if b is not None]
        encodings = [None] * len(pairs)
        with self._lock:
            tok = self._padder
            tok.enable_truncation(max_len, strategy='longest_first')
            tok.enable_padding(length=max_len)
            for rows, inputs in ((single, [pairs[i][0] for i in single]),
                                 (double, [pairs[i] for i in double])):
                for i, encoding in zip(rows, tok.encode_batch(inputs) if rows else []):
                    encodings[i] = encoding
        tokens = onp.array([e.ids for e in encodings], dtype=onp.int32)
        segments = onp.array([e.type_ids for e in encodings], dtype=onp.int32)
        valid_lens = onp.array([sum(e.attention_mask) for e in encodings],
                               dtype=onp.float32)
        return tokens, segments, valid_lens


def load_tokenizer(folder, lowercase=None, name=None):
    """The tokenizer a model folder holds: `name` ('vocab.txt', WordPiece, or
    'vocab.json', the book's word-level Vocab), else whichever is there.
    WordPiece lower-cases as `lowercase` says, else as the folder's
    tokenizer_config.json says (`do_lower_case`), else it does."""
    folder = Path(folder)
    names = [name] if name else ['vocab.txt', 'vocab.json']
    for name in names:
        if (folder / name).is_file():
            if name == 'vocab.json':
                return Vocab.from_json(folder / name)
            if lowercase is None:
                lowercase = _lowercase_of(folder)
            return WordPieceTokenizer(folder / name, lowercase)
    raise ValueError(f'{folder} holds no vocabulary: expected {" or ".join(names)}')


def _lowercase_of(folder):
    path = folder / 'tokenizer_config.json'
    if not path.is_file():
        return True  # BERT's uncased models, which folders without the file hold
    settings = read_json(path)
    value = settings.get('do_lower_case', True) if isinstance(settings, dict) else None
    if not isinstance(value, bool):
        raise ValueError(f'{path}: do_lower_case must be true or false, got {value!r}')
    return value


def check_vocab_size(tokenizer, config, folder):
    """Refuse a vocabulary whose size is not the embedding's rows: ids past
    its end would be clipped, a short one maps words to the wrong rows."""
    if len(tokenizer) != config.vocab_size:
        name = 'vocab.txt' if isinstance(tokenizer, WordPieceTokenizer) else 'vocab.json'
        raise ValueError(f'{Path(folder) / name} has {len(tokenizer)} tokens, but the model\'s '
                         f'embedding has vocab_size={config.vocab_size} rows: the vocabulary '
                         'is cut short or belongs to another model')
