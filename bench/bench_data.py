"""Building the pretraining dataset from wiki.train.tokens (max_len 64): the
book's `_read_wiki` + `_WikiTextDataset` (d2l 0.16.7) against ours, in one
run, with the statistics side by side. Single-threaded Python on both sides.

    BERT_GLUON_DATA=../shared/data python bench/bench_data.py
"""
import random
import time

import numpy as onp


def main(max_len=64):
    from d2l import mxnet as d2l
    from bert_gluon.data import find_dataset, load_wiki_pretraining

    folder = find_dataset('wikitext-2')
    start = time.perf_counter()
    ours = load_wiki_pretraining(max_len)
    ours_s = time.perf_counter() - start

    random.seed(0)
    start = time.perf_counter()
    book = d2l._WikiTextDataset(d2l._read_wiki(str(folder)), max_len)
    book_s = time.perf_counter() - start

    book_lens = onp.array([float(x) for x in book.valid_lens])
    book_preds = onp.array([float(w.sum()) for w in book.all_mlm_weights])
    print(f'dataset build, wiki.train.tokens, max_len {max_len}')
    print(f'{"":<10}{"seconds":>9}{"pairs":>8}{"vocab":>7}{"mean len":>10}{"preds/pair":>12}{"is_next":>9}')
    print(f'{"book":<10}{book_s:>9.2f}{len(book):>8}{len(book.vocab):>7}'
          f'{book_lens.mean():>10.2f}{book_preds.mean():>12.3f}'
          f'{onp.mean([bool(x) for x in book.nsp_labels]):>9.3f}')
    print(f'{"ours":<10}{ours_s:>9.2f}{len(ours):>8}{len(ours.vocab):>7}'
          f'{ours.valid_lens.mean():>10.2f}{ours.mlm_weights.sum(1).mean():>12.3f}'
          f'{ours.nsp_labels.mean():>9.3f}')
    print(f'speed-up: {book_s / ours_s:.1f}x')


if __name__ == '__main__':
    main()
