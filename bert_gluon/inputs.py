"""The input protocol every forward of the twin follows: check, cast, fill.

A user's batch is checked once per call (a bad batch fails here with a
`ValueError` that names the argument, not as a shape error deep inside
MXNet), cast to the graph's dtypes (int32 ids, float32 lengths and weights)
and a missing valid_lens filled; inside `checked_scope()` the blocks a parent
calls on inputs it already prepared do not check again. Traced calls
(`is_symbolic`) are never checked: their inputs are placeholders.

Shape checks are free; value checks copy the (small, integer) inputs to the
host once. Training loops that build batches themselves check them on the
host and switch the model's checks off (`net.check_inputs = False`).
"""
import contextlib
import contextvars

import numpy as onp
import mxnet as mx

__all__ = ['check_encoder_inputs', 'check_pred_positions', 'check_encoded',
           'check_pretraining_targets', 'is_symbolic', 'checked_scope',
           'inputs_checked', 'as_dtype', 'prepare_encoder_inputs',
           'prepare_pred_positions', 'prepare_pretraining_targets']


def is_symbolic(x):
    """True for a placeholder being traced into a graph, False for data."""
    return isinstance(x, mx.sym.Symbol)


# True while a parent block runs its children on inputs it already checked,
# so an eager call checks (and copies to the host) once, not once per block.
_inputs_checked = contextvars.ContextVar('bert_gluon_inputs_checked', default=False)


@contextlib.contextmanager
def checked_scope():
    """Blocks called inside take their inputs as checked."""
    token = _inputs_checked.set(True)
    try:
        yield
    finally:
        _inputs_checked.reset(token)


def inputs_checked():
    """True inside `checked_scope()`."""
    return _inputs_checked.get()


def as_dtype(array, dtype):
    """`array` in `dtype` (None stays None; no copy when it already is)."""
    return array if array is None or array.dtype == dtype else array.astype(dtype)


def prepare_encoder_inputs(config, check_values, tokens, segments, valid_lens):
    """Check a user's batch (unless inside `checked_scope()`), give it the
    graph's dtypes (int32 ids, float32 lengths: NumPy's int64/float64
    defaults are converted once their values are checked) and fill a missing
    valid_lens: no valid_lens means every token is valid, so one graph
    serves both. Returns (tokens, segments, valid_lens)."""
    if not inputs_checked():
        check_encoder_inputs(tokens, segments, valid_lens, config.vocab_size,
                             config.max_len, config.num_segments, check_values)
    if valid_lens is None:
        valid_lens = mx.np.full((tokens.shape[0],), tokens.shape[1],
                                dtype='float32', ctx=tokens.ctx)
    return as_dtype(tokens, 'int32'), as_dtype(segments, 'int32'), as_dtype(valid_lens, 'float32')


def prepare_pred_positions(pred_positions, tokens, check_values):
    """pred_positions checked against the prepared `tokens` (B, T), as int32."""
    if not inputs_checked():
        check_pred_positions(pred_positions, *tokens.shape, check_values=check_values)
    return as_dtype(pred_positions, 'int32')


def prepare_pretraining_targets(config, check_values, pred_positions, mlm_weights,
                                mlm_Y, nsp_y):
    """The pretraining loss's targets checked against `pred_positions` (B, P)
    and cast: (mlm_weights float32, mlm_Y int32, nsp_y int32)."""
    if not inputs_checked():
        check_pretraining_targets(mlm_weights, mlm_Y, nsp_y, pred_positions.shape,
                                  config.vocab_size, check_values)
    return as_dtype(mlm_weights, 'float32'), as_dtype(mlm_Y, 'int32'), as_dtype(nsp_y, 'int32')


def _host(name, array):
    """`array` (already shape-checked) as a host NumPy array."""
    array = array.asnumpy()
    if array.dtype.kind not in 'iuf':
        raise ValueError(f'{name} must hold integer ids (an int or float '
                         f'dtype with whole values), got dtype {array.dtype}')
    if array.dtype.kind == 'f':
        if not onp.all(onp.isfinite(array)) or onp.any(array != onp.round(array)):
            raise ValueError(f'{name} must hold whole numbers, got '
                             'non-integer values')
    return array


def _check_range(name, array, low, high, what):
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f'{name} must be in [{low}, {high}] ({what}), got '
                         f'values in [{array.min():g}, {array.max():g}]')


def _shape(name, array):
    if not isinstance(array, mx.np.ndarray):
        hint = (' (a classic NDArray: convert it with .as_np_ndarray())'
                if isinstance(array, mx.nd.NDArray) else
                ' (convert it with mxnet.np.array(...))')
        raise ValueError(f'{name} must be an mxnet.np.ndarray, got '
                         f'{type(array).__module__}.{type(array).__name__}{hint}')
    return tuple(array.shape)


def _id_dtype(name, array):
    """Ids and lengths: any int or float dtype (converted by the caller)."""
    if array is not None and onp.dtype(array.dtype).kind not in 'iuf':
        raise ValueError(f'{name} must have an integer or float dtype, got '
                         f'{onp.dtype(array.dtype).name}')


def check_encoder_inputs(tokens, segments, valid_lens, vocab_size, max_len,
                         num_segments=2, check_values=True):
    """Check a batch for the encoder.

    tokens: (batch size, sequence length) ids in [0, vocab_size).
    segments: same shape as tokens, ids in [0, num_segments).
    valid_lens: None or (batch size,), each in [1, sequence length].
    """
    tokens_shape = _shape('tokens', tokens)
    if len(tokens_shape) != 2 or 0 in tokens_shape:
        raise ValueError('tokens must have shape (batch size, sequence '
                         f'length) with both > 0, got {tokens_shape}')
    batch_size, seq_len = tokens_shape
    if _shape('segments', segments) != tokens_shape:
        raise ValueError(f'segments must have the shape of tokens '
                         f'{tokens_shape}, got {_shape("segments", segments)}')
    if seq_len > max_len:
        raise ValueError(f'tokens has sequence length {seq_len}, beyond '
                         f'max_len={max_len} of the position embedding')
    if valid_lens is not None and _shape('valid_lens', valid_lens) != (batch_size,):
        raise ValueError(f'valid_lens must be None or have shape '
                         f'(batch size,) = ({batch_size},), got '
                         f'{_shape("valid_lens", valid_lens)}')
    for name, array in (('tokens', tokens), ('segments', segments),
                        ('valid_lens', valid_lens)):
        _id_dtype(name, array)
    if not check_values:
        return
    _check_range('tokens', _host('tokens', tokens), 0, vocab_size - 1,
                 f'vocab_size={vocab_size}')
    _check_range('segments', _host('segments', segments), 0,
                 num_segments - 1, 'segment ids')
    if valid_lens is not None:
        _check_range('valid_lens', _host('valid_lens', valid_lens), 1,
                     seq_len, 'at least 1 token, at most the sequence length')


def check_pred_positions(pred_positions, batch_size, seq_len,
                         check_values=True):
    """pred_positions: (batch size, num predictions) in [0, seq_len)."""
    shape = _shape('pred_positions', pred_positions)
    if len(shape) != 2 or shape[0] != batch_size or shape[1] < 1:
        raise ValueError('pred_positions must have shape (batch size, '
                         f'number of predictions >= 1) with batch size '
                         f'{batch_size}, got {shape} (no prediction: pass None)')
    _id_dtype('pred_positions', pred_positions)
    if check_values:
        _check_range('pred_positions', _host('pred_positions', pred_positions),
                     0, seq_len - 1, 'positions inside the sequence')


def check_encoded(name, X, num_hiddens=None):
    """X: (batch size, sequence length, num_hiddens) from the encoder."""
    shape = _shape(name, X)
    if len(shape) != 3 or num_hiddens not in (None, shape[2]):
        width = 'num_hiddens' if num_hiddens is None else num_hiddens
        raise ValueError(f'{name} must have shape (batch size, sequence '
                         f'length, {width}), got {shape}')
    return shape


def check_pretraining_targets(mlm_weights, mlm_Y, nsp_y, pred_shape, vocab_size,
                              check_values=True):
    """mlm_weights, mlm_Y: pred_positions' shape (batch size, P); nsp_y:
    (batch size,); labels of weighted slots in [0, vocab_size), nsp_y 0 or 1."""
    for name, array in (('mlm_weights', mlm_weights), ('mlm_Y', mlm_Y)):
        if _shape(name, array) != tuple(pred_shape):
            raise ValueError(f'{name} must have the shape of pred_positions '
                             f'{tuple(pred_shape)}, got {_shape(name, array)}')
    if _shape('nsp_y', nsp_y) != (pred_shape[0],):
        raise ValueError(f'nsp_y must have shape (batch size,) = '
                         f'({pred_shape[0]},), got {_shape("nsp_y", nsp_y)}')
    if check_values:
        weighted = _host('mlm_Y', mlm_Y)[mlm_weights.asnumpy() != 0]
        _check_range('mlm_Y', weighted, 0, vocab_size - 1,
                     f'vocab_size={vocab_size} (slots of nonzero weight)')
        _check_range('nsp_y', _host('nsp_y', nsp_y), 0, 1, 'labels 0 or 1')
