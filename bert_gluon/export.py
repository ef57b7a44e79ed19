"""Export the hybridized twin to symbol + params and load it back.

The exported graph is the whole `HybridBERTModel`: inputs
(tokens, segments, valid_lens, pred_positions) named data0..data3, outputs
(encoded_X, mlm_Y_hat, nsp_Y_hat).
"""
import os
import warnings

import mxnet as mx
from mxnet import gluon

from .model import HybridBERTModel

__all__ = ['export_model', 'load_exported', 'INPUT_NAMES']

INPUT_NAMES = ('data0', 'data1', 'data2', 'data3')


def export_model(net, prefix, batch_size=1, seq_len=8, num_pred=1):
    """Write `prefix-symbol.json` and `prefix-0000.params`; return both paths.

    The graph is traced anew on a dummy batch of the given sizes, with
    MXNet's own operators only, so the files load without this package.
    The net is left hybridized.
    """
    if not isinstance(net, HybridBERTModel):
        raise ValueError('net must be a bert_gluon.HybridBERTModel, got '
                         f'{type(net).__name__}')
    ctx = net.encoder.token_embedding.weight.list_ctx()[0]
    request = net._request()
    net.backend = 'mxnet'  # drops the graphs traced with native ops
    try:
        net.hybridize(static_alloc=True, static_shape=True)
        tokens = mx.np.zeros((batch_size, seq_len), dtype='int32', ctx=ctx)
        pred_positions = mx.np.zeros((batch_size, num_pred), dtype='int32', ctx=ctx)
        net(tokens, mx.np.zeros_like(tokens), None, pred_positions)
        folder = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(folder, exist_ok=True)
        net.export(prefix)
    finally:
        net.backend = request  # and its graphs are traced anew
    return f'{prefix}-symbol.json', f'{prefix}-0000.params'


def load_exported(prefix, ctx=None):
    """The exported model as a `SymbolBlock`:
    block(tokens, segments, valid_lens, pred_positions) -> 3 outputs."""
    symbol_file, params_file = f'{prefix}-symbol.json', f'{prefix}-0000.params'
    for path in (symbol_file, params_file):
        if not os.path.isfile(path):
            raise ValueError(f'prefix {prefix!r}: no exported file {path}')
    with warnings.catch_warnings():
        # Token ids may be int or float: their type is left open on purpose.
        warnings.filterwarnings('ignore', 'Cannot decide type')
        return gluon.SymbolBlock.imports(symbol_file, list(INPUT_NAMES),
                                         params_file, ctx=ctx or mx.cpu())
