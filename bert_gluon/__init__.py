"""bert_gluon: BERT as "Dive into Deep Learning" teaches it, on MXNet Gluon.

`import bert_gluon` switches MXNet to its NumPy interface (`npx.set_np()`),
as the book's code does, and nothing else.
"""
try:
    import mxnet
except ImportError as error:  # MXNet is not a hard dependency (see setup.py)
    raise ImportError(
        "bert_gluon needs MXNet 1.9: pip install 'bert_gluon[cpu]' for the CPU "
        'wheel, or mxnet-cu112==1.9.1 (your CUDA build) on a GPU') from error
if not mxnet.__version__.startswith('1.9'):
    raise ImportError(f'bert_gluon needs MXNet 1.9.x, found {mxnet.__version__}')

from mxnet import npx  # noqa: E402

npx.set_np()

from .book import BERTEncoder, BERTModel, MaskLM, NextSentencePred  # noqa: E402
from . import layers, loss  # noqa: E402,F401  (bg.layers, bg.loss)
from .export import export_model, load_exported  # noqa: E402
from .config import BERTConfig, CONFIGS, get_config, list_configs  # noqa: E402
from .model import (HybridBERTEncoder, HybridBERTModel, HybridMaskLM,  # noqa: E402
                    HybridNextSentencePred)

__version__ = '0.1.0'

__all__ = ['BERTEncoder', 'MaskLM', 'NextSentencePred', 'BERTModel',
           'HybridBERTEncoder', 'HybridMaskLM', 'HybridNextSentencePred',
           'HybridBERTModel', 'BERTConfig', 'CONFIGS', 'get_config',
           'list_configs', 'export_model', 'load_exported']
