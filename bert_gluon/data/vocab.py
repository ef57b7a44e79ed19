"""Vocabulary with d2l.Vocab's semantics and a JSON form.

Index 0 is '<unk>', then the reserved tokens, then every token with at least
`min_freq` occurrences by falling frequency. d2l breaks frequency ties by
first appearance in its (unseeded) shuffled corpus; here ties go by first
appearance in the file, so the same data always gives the same ids.
"""
import collections
import json
from pathlib import Path

from ..fileio import atomic_write_json
from .pairs import encode_pairs, word_tokenize

__all__ = ['Vocab', 'BERT_RESERVED_TOKENS']

BERT_RESERVED_TOKENS = ('<pad>', '<mask>', '<cls>', '<sep>')


class Vocab:
    """d2l.Vocab's interface: len, vocab[token(s)], to_tokens, unk."""
    def __init__(self, tokens=None, min_freq=0, reserved_tokens=None):
        counter = collections.Counter()
        for line in tokens or []:
            counter.update(line if isinstance(line, (list, tuple)) else [line])
        # Counter keeps first-seen order; sorted() is stable.
        self._token_freqs = sorted(counter.items(), key=lambda x: x[1],
                                   reverse=True)
        idx_to_token = ['<unk>'] + list(reserved_tokens or [])
        seen = set(idx_to_token)
        for token, freq in self._token_freqs:
            if freq < min_freq:
                break
            if token not in seen:
                idx_to_token.append(token)
                seen.add(token)
        self._set_tokens(idx_to_token)

    def _set_tokens(self, idx_to_token):
        if len(set(idx_to_token)) != len(idx_to_token):
            raise ValueError('idx_to_token has duplicate tokens')
        self.idx_to_token = list(idx_to_token)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        get = self.token_to_idx.get
        return [get(token, 0) for token in tokens]

    def to_tokens(self, indices):
        if not isinstance(indices, (list, tuple)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[index] for index in indices]

    @property
    def unk(self):
        return 0

    @property
    def token_freqs(self):
        return self._token_freqs

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    # The tokenizer interface (tokenization.py): WordPiece's methods, the book's words
    @staticmethod
    def tokenize(text):
        return word_tokenize(text)

    def encode_pairs(self, pairs, max_len):
        """The book's `<cls>` a `<sep>` b `<sep>` arrays: data.pairs.encode_pairs."""
        return encode_pairs(pairs, self, max_len)

    def save(self, folder):
        """vocab.json into `folder`; `tokenization.load_tokenizer(folder)` reads it."""
        self.to_json(Path(folder) / 'vocab.json')

    # d2l's pretrained checkpoints store vocab.json as the idx_to_token list.
    def to_json(self, path):
        atomic_write_json(path, self.idx_to_token, indent=None)

    @classmethod
    def from_json(cls, path):
        try:
            with open(path, encoding='utf-8') as f:
                idx_to_token = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f'vocab file {path} is unreadable: {exc}') from exc
        if not (isinstance(idx_to_token, list) and idx_to_token
                and all(isinstance(t, str) for t in idx_to_token)
                and idx_to_token[0] == '<unk>'):
            raise ValueError(f'vocab file {path} must hold a JSON list of '
                             "token strings starting with '<unk>'")
        vocab = cls()
        vocab._set_tokens(idx_to_token)
        return vocab
