"""bert_gluon: BERT as "Dive into Deep Learning" teaches it, on MXNet Gluon.

`import bert_gluon` switches MXNet to its NumPy interface (`npx.set_np()`),
as the book's code does, and nothing else.
"""
from mxnet import npx

npx.set_np()

from .book import BERTEncoder, BERTModel, MaskLM, NextSentencePred  # noqa: E402
from .config import BERTConfig, CONFIGS, get_config, list_configs  # noqa: E402
from .model import (HybridBERTEncoder, HybridBERTModel, HybridMaskLM,  # noqa: E402
                    HybridNextSentencePred)

__version__ = '0.1.0'

__all__ = ['BERTEncoder', 'MaskLM', 'NextSentencePred', 'BERTModel',
           'HybridBERTEncoder', 'HybridMaskLM', 'HybridNextSentencePred',
           'HybridBERTModel', 'BERTConfig', 'CONFIGS', 'get_config',
           'list_configs']
