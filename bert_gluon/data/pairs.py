"""Sentence-pair classification data: GLUE MRPC and RTE from their TSV files,
SNLI as the book reads it, and the book's pair truncation and encoding.

Each reader returns (premises, hypotheses, labels) lists, like d2l's
`read_snli`. TSVs are split on tabs with no quoting: sentences hold quotes.
"""
import re

import numpy as onp

from .files import find_dataset

__all__ = ['TASKS', 'read_pairs', 'word_tokenize', 'truncate_pair',
           'encode_pairs']

# task -> (dataset, {split: file}, column of sentence 1, sentence 2, label,
#          label names in id order)
TASKS = {
    'MRPC': ('MRPC', {'train': 'train.tsv', 'dev': 'dev.tsv'}, 3, 4, 0,
             ('0', '1')),
    'RTE': ('RTE', {'train': 'train.tsv', 'dev': 'dev.tsv'}, 1, 2, 3,
            ('not_entailment', 'entailment')),
    # SNLI's binary-parse columns, parentheses removed, as d2l's read_snli
    'SNLI': ('SNLI', {'train': 'snli_1.0_train.txt', 'dev': 'snli_1.0_test.txt'},
             1, 2, 0, ('entailment', 'contradiction', 'neutral')),
}


SNLI_NO_GOLD_LABEL = '-'


def _snli_text(s):
    s = re.sub('\\(', '', s)
    s = re.sub('\\)', '', s)
    return re.sub('\\s{2,}', ' ', s).strip()


def read_pairs(task, split='train', data_dir=None):
    """(sentences 1, sentences 2, label ids) of `task`'s `split` ('train'/'dev')."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {task!r}')
    dataset, split_files, c1, c2, cl, names = TASKS[task]
    if split not in split_files:
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    path = find_dataset(dataset, data_dir) / split_files[split]
    label_ids = {name: i for i, name in enumerate(names)}
    first, second, labels = [], [], []
    with open(path, 'rb') as f:  # decoded line by line: a bad byte is named with its line
        if next(f, None) is None:
            raise ValueError(f'{path} is empty: expected a header line, then a '
                             'tab-separated pair per line')
        for number, raw in enumerate(f, start=2):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as exc:
                raise ValueError(f'{path}, line {number}: not UTF-8 text ({exc.reason} at '
                                 f'offset {exc.start} of the line)') from None
            row = line.rstrip('\r\n').split('\t')
            if len(row) <= max(c1, c2, cl):
                raise ValueError(f'{path}, line {number}: expected at least '
                                 f'{max(c1, c2, cl) + 1} tab-separated columns, '
                                 f'got {len(row)}')
            if task == 'SNLI' and row[cl] == SNLI_NO_GOLD_LABEL:
                continue  # the annotators did not agree: d2l's read_snli skips it too
            if row[cl] not in label_ids:
                raise ValueError(f'{path}, line {number}: label {row[cl]!r} is '
                                 f'not one of {names}')
            if task == 'SNLI':
                row[c1], row[c2] = _snli_text(row[c1]), _snli_text(row[c2])
            first.append(row[c1])
            second.append(row[c2])
            labels.append(label_ids[row[cl]])
    if not labels:
        raise ValueError(f'{path} holds no labelled pair: expected rows labelled '
                         f'{" / ".join(names)} after its header')
    return first, second, labels


def word_tokenize(text):
    """Lower-cased words and punctuation, split the way WikiText-2 is."""
    return re.findall(r"[\w]+|[^\w\s]", text.lower())


def truncate_pair(tokens_a, tokens_b, max_len):
    """The book's `_truncate_pair_of_tokens`: pop from the longer of the two
    until '<cls>' a '<sep>' b '<sep>' fits in max_len. Returns new lists."""
    tokens_a, tokens_b = list(tokens_a), list(tokens_b)
    while len(tokens_a) + len(tokens_b) > max_len - 3:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
    return tokens_a, tokens_b


def encode_pairs(pairs, vocab, max_len, tokenize=word_tokenize):
    """Padded arrays for sentence pairs (or single sentences: b = None).

    Returns tokens (N, max_len) int32, segments (N, max_len) int32,
    valid_lens (N,) float32, the book's `<cls>` a `<sep>` b `<sep>` layout.
    """
    if max_len < 3:
        raise ValueError(f'max_len must be >= 3, got {max_len}')
    n = len(pairs)
    tokens = onp.full((n, max_len), vocab['<pad>'], dtype=onp.int32)
    segments = onp.zeros((n, max_len), dtype=onp.int32)
    valid_lens = onp.zeros(n, dtype=onp.float32)
    cls, sep = vocab['<cls>'], vocab['<sep>']
    for i, (a, b) in enumerate(pairs):
        a = tokenize(a) if isinstance(a, str) else list(a)
        b = None if b is None else (tokenize(b) if isinstance(b, str) else list(b))
        if b is None:
            a = a[:max_len - 2]
            ids = [cls] + vocab[a] + [sep]
            segs = [0] * len(ids)
        else:
            a, b = truncate_pair(a, b, max_len)
            ids = [cls] + vocab[a] + [sep] + vocab[b] + [sep]
            segs = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        tokens[i, :len(ids)] = ids
        segments[i, :len(segs)] = segs
        valid_lens[i] = len(ids)
    return tokens, segments, valid_lens
