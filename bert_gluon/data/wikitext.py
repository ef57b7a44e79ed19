"""WikiText-2 for BERT pretraining: the book's dataset, vectorized and seeded.

Book section "The Dataset for Pretraining BERT". Same semantics: paragraphs
of >= 2 sentences split on ' . ', lower-cased word tokens, a vocab with
min_freq 5 and '<pad>' '<mask>' '<cls>' '<sep>', 50% next / 50% random
sentence pairs, pairs longer than max_len dropped, 15% of the tokens of a
pair (at least 1) predicted with 80% '<mask>' / 10% random token / 10%
unchanged, round(0.15 * max_len) prediction slots padded with weight 0.
Where we differ: every random draw comes from one seeded generator (the book
shuffles unseeded); the "random token" is a random word of the vocab (the
book's code passes an int id into a token lookup, so it becomes '<unk>');
ties in the vocab's frequency order go by file order, not a random shuffle.
"""
import numpy as onp

from .files import find_dataset
from .vocab import BERT_RESERVED_TOKENS, Vocab

__all__ = ['read_wiki', 'PretrainingDataset', 'load_wiki_pretraining']

_NUM_SPECIAL = 1 + len(BERT_RESERVED_TOKENS)  # '<unk>' + reserved: never drawn


def read_wiki(path):
    """Paragraphs (lists of lower-cased sentence strings) with >= 2 sentences,
    in file order."""
    with open(path, encoding='utf-8') as f:
        lines = f.readlines()
    return [line.strip().lower().split(' . ') for line in lines
            if len(line.split(' . ')) >= 2]


def _num_mlm_preds(max_len):
    # Python's round() as the book uses it (ties to even): max(1, round(0.15 L))
    return onp.array([max(1, round(length * 0.15)) for length in range(max_len + 1)])


class PretrainingDataset:
    """Padded NSP + MLM examples as arrays, like the book's `_WikiTextDataset`.

    Arrays (N examples, T = max_len, P = round(0.15 * max_len)):
      tokens (N, T) int32, segments (N, T) int32, valid_lens (N,) float32,
      pred_positions (N, P) int32, mlm_weights (N, P) float32,
      mlm_labels (N, P) int32, nsp_labels (N,) int32.
    `dataset[i]` gives the book's 7-tuple.
    """
    FIELDS = ('tokens', 'segments', 'valid_lens', 'pred_positions',
              'mlm_weights', 'mlm_labels', 'nsp_labels')

    def __init__(self, paragraphs, max_len, vocab=None, seed=0, min_freq=5):
        if not isinstance(max_len, int) or max_len < 5:
            raise ValueError(f'max_len must be an int >= 5, got {max_len!r}')
        self.max_len, self.seed = max_len, seed
        self.num_mlm_preds = round(max_len * 0.15)
        sentences = [s.split() for p in paragraphs for s in p]
        if vocab is None:
            vocab = Vocab(sentences, min_freq=min_freq,
                          reserved_tokens=list(BERT_RESERVED_TOKENS))
        elif vocab.to_tokens(list(range(_NUM_SPECIAL))) != ['<unk>', *BERT_RESERVED_TOKENS]:
            raise ValueError('vocab must start with <unk> <pad> <mask> <cls> <sep>')
        self.vocab = vocab
        self._special = {t: vocab[t] for t in BERT_RESERVED_TOKENS}
        rng = onp.random.default_rng(seed)
        self._build_pairs(paragraphs, sentences, rng)
        self.mask(rng)

    def _build_pairs(self, paragraphs, sentences, rng):
        lens = onp.array([len(s) for s in sentences], dtype=onp.int64)
        starts = onp.concatenate([[0], onp.cumsum(lens)[:-1]])
        flat = onp.array(self.vocab[[t for s in sentences for t in s]], dtype=onp.int32)
        counts = onp.array([len(p) for p in paragraphs], dtype=onp.int64)
        firsts = onp.concatenate([[0], onp.cumsum(counts)[:-1]])
        # Every sentence but a paragraph's last starts a candidate pair.
        a = onp.concatenate([f + onp.arange(c - 1) for f, c in zip(firsts, counts)])
        # 50%: the next sentence; 50%: a random sentence of a random paragraph
        is_next = rng.random(len(a)) < 0.5
        para = rng.integers(0, len(counts), len(a))
        random_b = firsts[para] + (rng.random(len(a)) * counts[para]).astype(onp.int64)
        b = onp.where(is_next, a + 1, random_b)
        # '<cls>' a '<sep>' b '<sep>'; pairs longer than max_len are dropped
        keep = lens[a] + lens[b] + 3 <= self.max_len
        a, b, is_next = a[keep], b[keep], is_next[keep]
        len_a, len_b = lens[a][:, None], lens[b][:, None]
        length = len_a + len_b + 3
        j = onp.arange(self.max_len)[None, :]
        in_a = (j >= 1) & (j <= len_a)
        in_b = (j >= len_a + 2) & (j < length - 1)
        idx_a = onp.clip(starts[a][:, None] + j - 1, 0, len(flat) - 1)
        idx_b = onp.clip(starts[b][:, None] + j - len_a - 2, 0, len(flat) - 1)
        tokens = onp.full(in_a.shape, self._special['<pad>'], dtype=onp.int32)
        tokens[in_a] = flat[idx_a[in_a]]
        tokens[in_b] = flat[idx_b[in_b]]
        is_sep = (j == len_a + 1) | (j == length - 1)
        tokens[:, 0] = self._special['<cls>']
        tokens[is_sep] = self._special['<sep>']
        self.clean_tokens = tokens
        self.segments = ((j >= len_a + 2) & (j < length)).astype(onp.int32)
        self.valid_lens = length[:, 0].astype(onp.float32)
        self.nsp_labels = is_next.astype(onp.int32)
        # Prediction candidates: real tokens, not '<cls>' or '<sep>'
        self._candidates = (j < length) & (j > 0) & ~is_sep

    def mask(self, rng):
        """Draw the MLM predictions (again: dynamic masking)."""
        N, P = len(self.clean_tokens), self.num_mlm_preds
        length = self.valid_lens.astype(onp.int64)
        num_preds = onp.minimum(_num_mlm_preds(self.max_len)[length],
                                self._candidates.sum(1))
        # A random order of each row's candidates: sort random keys, with
        # non-candidates keyed past every candidate.
        keys = onp.where(self._candidates, rng.random(self._candidates.shape), 2.0)
        chosen = onp.argsort(keys, axis=1)[:, :P]
        real = onp.arange(P)[None, :] < num_preds[:, None]
        # Sorted by position, as the book sorts them; padded slots after
        positions = onp.sort(onp.where(real, chosen, self.max_len), axis=1)
        real = positions < self.max_len
        positions = onp.where(real, positions, 0).astype(onp.int32)
        rows = onp.arange(N)[:, None]
        labels = onp.where(real, self.clean_tokens[rows, positions], 0)
        # 80% '<mask>', 10% unchanged, 10% a random word (never a special id)
        draw = rng.random((N, P))
        random_words = rng.integers(_NUM_SPECIAL, len(self.vocab), (N, P))
        replaced = onp.where(draw < 0.8, self._special['<mask>'],
                             onp.where(draw < 0.9, labels, random_words))
        tokens = self.clean_tokens.copy()
        tokens[rows, positions] = onp.where(real, replaced, tokens[rows, positions])
        masked = {'tokens': tokens, 'pred_positions': positions,
                  'mlm_weights': real.astype(onp.float32),
                  'mlm_labels': labels.astype(onp.int32)}
        for name, value in masked.items():
            if hasattr(self, name):  # in place: arrays() handed out stay current
                getattr(self, name)[...] = value
            else:
                setattr(self, name, value)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, idx):
        return tuple(getattr(self, name)[idx] for name in self.FIELDS)

    def arrays(self):
        return [getattr(self, name) for name in self.FIELDS]


def load_wiki_pretraining(max_len=64, data_dir=None, split='train', vocab=None,
                          seed=0):
    """The pretraining dataset of WikiText-2's `split` ('train', 'valid',
    'test'); held-out splits take the training `vocab`."""
    if split not in ('train', 'valid', 'test'):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    if split != 'train' and vocab is None:
        raise ValueError(f'vocab: the {split} split needs the training vocab')
    folder = find_dataset('wikitext-2', data_dir)
    paragraphs = read_wiki(folder / f'wiki.{split}.tokens')
    return PretrainingDataset(paragraphs, max_len, vocab=vocab, seed=seed)
