"""Export the hybridized twin to MXNet's symbol + params and load it back
(ONNX: onnx_export.py; the Hugging Face folder: huggingface.py).

The exported graph is the whole `HybridBERTModel`: inputs
(tokens, segments, valid_lens, pred_positions) named data0..data3, outputs
(encoded_X, mlm_Y_hat, nsp_Y_hat). Beside the two MXNet files,
`prefix-config.json` holds the model's config, so the reloaded model checks
its inputs as the twin does.
"""
import os
import warnings

import mxnet as mx
from mxnet import gluon

from .config import BERTConfig
from .fileio import atomic_write_json, check_output_file, read_json
from .inputs import prepare_encoder_inputs, prepare_pred_positions
from .model import HybridBERTModel, check_heads_trained

__all__ = ['export_model', 'load_exported', 'ExportedBERT', 'INPUT_NAMES', 'trace_to_symbol',
           'dummy_batch']

INPUT_NAMES = ('data0', 'data1', 'data2', 'data3')


def trace_to_symbol(twin, block, prefix, inputs):
    """`block` (a twin model or a block around one) traced on `inputs` with
    MXNet's own operators only (`twin`'s backend set to 'mxnet'), written as
    `prefix-symbol.json` and `prefix-0000.params`, which load without this
    package; those two paths. `twin` is left hybridized, on its own backend."""
    request = twin.backend_request
    twin.backend = 'mxnet'  # drops the graphs traced with native ops
    try:
        block.hybridize(static_alloc=True, static_shape=True)
        block(*inputs)
        block.export(prefix)
    finally:
        twin.backend = request  # and its graphs are traced anew
    return f'{prefix}-symbol.json', f'{prefix}-0000.params'


def dummy_batch(net, batch_size=1, seq_len=8, num_pred=1):
    """(tokens, segments, valid_lens, pred_positions) of zeros, on the net's
    first context: what a trace runs on (its values do not matter)."""
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    tokens = mx.np.zeros((batch_size, seq_len), dtype='int32', ctx=ctx)
    return (tokens, mx.np.zeros_like(tokens),
            mx.np.full((batch_size,), seq_len, dtype='float32', ctx=ctx),
            mx.np.zeros((batch_size, num_pred), dtype='int32', ctx=ctx))


def export_model(net, prefix, batch_size=1, seq_len=8, num_pred=1, overwrite=False):
    """Write `prefix-symbol.json`, `prefix-0000.params` and
    `prefix-config.json`; return the first two paths.

    The graph is traced anew on a dummy batch of the given sizes, with
    MXNet's own operators only (the 'mxnet' backend), so the files load
    without this package. The net is left hybridized, on its own backend.
    Existing files of that prefix are refused unless `overwrite`.
    """
    if not isinstance(net, HybridBERTModel):
        raise ValueError('net must be a bert_gluon.HybridBERTModel, got '
                         f'{type(net).__name__}')
    check_heads_trained(net.config, 'export_model (its graph carries the MLM and NSP heads)')
    if not os.path.basename(str(prefix)):
        raise ValueError(f'prefix {prefix!r} names a folder, not a file prefix: give one '
                         "such as 'export/bert' (it writes export/bert-symbol.json, ...)")
    for suffix in ('-symbol.json', '-0000.params', '-config.json'):
        check_output_file(f'{prefix}{suffix}', 'prefix', overwrite)
    paths = trace_to_symbol(net, net, prefix, dummy_batch(net, batch_size, seq_len, num_pred))
    atomic_write_json(f'{prefix}-config.json', net.config.to_dict())
    return paths


class ExportedBERT:
    """An exported model, reloaded: the twin's call and input checks.

    model(tokens, segments, valid_lens=None, pred_positions=None)
      -> (encoded_X (B, T, H), mlm_Y_hat (B, P, V) or None, nsp_Y_hat (B, 2)).
    `block` is the underlying `gluon.SymbolBlock`.
    """
    check_inputs = True

    def __init__(self, block, config, ctx):
        self.block, self.config, self.ctx = block, config, ctx

    def __call__(self, tokens, segments, valid_lens=None, pred_positions=None):
        tokens, segments, valid_lens = prepare_encoder_inputs(
            self.config, self.check_inputs, tokens, segments, valid_lens)
        if pred_positions is None:  # the graph always has an MLM input
            positions = mx.np.zeros((tokens.shape[0], 1), dtype='int32', ctx=tokens.ctx)
        else:
            positions = prepare_pred_positions(pred_positions, tokens, self.check_inputs)
        encoded_X, mlm_Y_hat, nsp_Y_hat = self.block(tokens, segments, valid_lens, positions)
        return encoded_X, None if pred_positions is None else mlm_Y_hat, nsp_Y_hat


def load_exported(prefix, ctx=None):
    """The exported model (`ExportedBERT`), its inputs checked as the twin's."""
    symbol_file, params_file = f'{prefix}-symbol.json', f'{prefix}-0000.params'
    config_file = f'{prefix}-config.json'
    for path in (symbol_file, params_file, config_file):
        if not os.path.isfile(path):
            raise ValueError(f'prefix {prefix!r}: no exported file {path}')
    try:
        config = BERTConfig.from_dict(read_json(config_file))
    except (TypeError, AttributeError) as exc:
        raise ValueError(f'{config_file} is not a bert_gluon config: {exc}') from exc
    ctx = ctx or mx.cpu()
    try:
        symbol = mx.np_symbol.load(symbol_file)
    except Exception as exc:  # MXNet raises its own error types
        raise ValueError(f'{symbol_file} is not an MXNet symbol file: {exc}') from exc
    with warnings.catch_warnings():
        # Token ids may be int or float: their type is left open on purpose.
        warnings.filterwarnings('ignore', 'Cannot decide type')
        block = gluon.SymbolBlock(symbol, [mx.sym.var(n).as_np_ndarray()
                                           for n in INPUT_NAMES])
    try:
        block.collect_params().load(params_file, ctx, cast_dtype=True,
                                    dtype_source='saved')
    except Exception as exc:
        raise ValueError(f'{params_file} is corrupt or does not fit {symbol_file}: '
                         f'{exc}') from exc
    return ExportedBERT(block, config, ctx)
