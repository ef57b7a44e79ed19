"""Data: finding and checking files, vocab, WikiText-2 pretraining examples."""
from .files import DATASETS, find_dataset
from .vocab import BERT_RESERVED_TOKENS, Vocab
from .wikitext import PretrainingDataset, load_wiki_pretraining, read_wiki

__all__ = ['DATASETS', 'find_dataset', 'Vocab', 'BERT_RESERVED_TOKENS',
           'PretrainingDataset', 'load_wiki_pretraining', 'read_wiki']
