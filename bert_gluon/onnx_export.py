"""The twin as ONNX: MXNet 1.9's exporter, with converters for the NumPy-
interface ops of the twin's graph (which it lacks) registered only while an
export runs; MXNet's converter registry and `onnx` are left as they were.

    export_onnx(net, 'bert.onnx')   # onnxruntime runs it
"""
import contextlib
import os
import tempfile
import threading
import warnings

import mxnet as mx
import numpy as onp

try:
    import onnx
    import onnx.checker
    import onnx.defs
    from onnx import TensorProto, helper, numpy_helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import (
        convert_fully_connected, get_input_dtypes, get_inputs)
except ImportError as error:
    raise ImportError('ONNX export needs onnx: pip install onnx==1.16.2') from error

from mxnet.gluon import nn

from .classifier import BERTClassifier
from .export import dummy_batch, trace_to_symbol
from .fileio import atomic_write_bytes, check_output_file
from .layers import cls_rows
from .model import HybridBERTModel, check_heads_trained

__all__ = ['ONNX_OPSET', 'CONVERTERS', 'OUTPUTS', 'export_onnx', 'standard_interface',
           'onnx_inputs']

# 17, as Hugging Face's exports: LayerNormalization's opset (MXNet 1.9's
# LayerNorm converter writes ReduceMean(axes=...), invalid from 18)
ONNX_OPSET = 17


def _const(kwargs, name, value, dtype):
    kwargs['initializer'].append(numpy_helper.from_array(onp.array(value, dtype), name))
    return name


def _attr(attrs, key, default=None):
    value = attrs.get(key, default)
    return None if value in (None, 'None') else value


def _ints(text):
    """'(0, 2, 1)', '[2]' or '1', as MXNet writes a tuple attribute."""
    return [int(a) for a in str(text).strip('()[] ').split(',') if a.strip()]


def _binary(onnx_op):
    def convert(node, **kwargs):
        name, inputs, _ = get_inputs(node, kwargs)
        nodes = [helper.make_node(onnx_op, inputs[:2], [name], name=name)]
        return (nodes, (onp.dtype('bool'),)) if onnx_op == 'Less' else nodes
    return convert


def _with_scalar(onnx_op, scalar_first=False):
    def convert(node, **kwargs):
        name, inputs, attrs = get_inputs(node, kwargs)
        value = _const(kwargs, name + '_scalar', float(attrs['scalar']), 'float32')
        operands = [value, inputs[0]] if scalar_first else [inputs[0], value]
        return [helper.make_node(onnx_op, operands, [name], name=name)]
    return convert


def _unary(onnx_op):
    def convert(node, **kwargs):
        name, inputs, _ = get_inputs(node, kwargs)
        return [helper.make_node(onnx_op, inputs[:1], [name], name=name)]
    return convert


def convert_transpose(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    axes = _attr(attrs, 'axes')
    perm = {} if axes is None else {'perm': _ints(axes)}
    return [helper.make_node('Transpose', inputs[:1], [name], name=name, **perm)]


def convert_squeeze(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    axis = _attr(attrs, 'axis')
    if axis is None:
        return [helper.make_node('Squeeze', inputs[:1], [name], name=name)]
    axes = _const(kwargs, name + '_axes', _ints(axis), 'int64')
    return [helper.make_node('Squeeze', [inputs[0], axes], [name], name=name)]


def convert_arange(node, **kwargs):
    name, _, attrs = get_inputs(node, kwargs)
    dtype = onp.dtype(_attr(attrs, 'dtype', 'float32'))
    start, stop = float(_attr(attrs, 'start', 0)), _attr(attrs, 'stop')
    if stop is None:
        start, stop = 0.0, start
    names = [_const(kwargs, f'{name}_{k}', v, dtype)
             for k, v in (('start', start), ('stop', float(stop)),
                          ('step', float(_attr(attrs, 'step', 1))))]
    return [helper.make_node('Range', names, [name], name=name)], (dtype,)


def convert_full_like(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    dtype = onp.dtype(_attr(attrs, 'dtype') or get_input_dtypes(node, kwargs)[0])
    value = numpy_helper.from_array(onp.array([float(attrs['fill_value'])], dtype))
    return [helper.make_node('Shape', inputs[:1], [name + '_shape'], name=name + '_shape'),
            helper.make_node('ConstantOfShape', [name + '_shape'], [name], name=name,
                             value=value)], (dtype,)


def convert_stack(node, **kwargs):
    name, inputs, attrs = get_inputs(node, kwargs)
    axis = int(_attr(attrs, 'axis', 0))
    axes = _const(kwargs, name + '_axis', [axis], 'int64')
    nodes, parts = [], []
    for i, x in enumerate(inputs):
        parts.append(f'{name}_part{i}')
        nodes.append(helper.make_node('Unsqueeze', [x, axes], [parts[-1]], name=parts[-1]))
    return nodes + [helper.make_node('Concat', parts, [name], name=name, axis=axis)]


def convert_dense(node, **kwargs):
    """flatten=False as MatMul (+ Add) on the (B, T, K) input itself: the
    legacy converter's Flatten/Gemm/Reshape, followed by a GELU, is rewired
    wrongly by onnxruntime's default fusions for some batches."""
    name, inputs, attrs = get_inputs(node, kwargs)
    if attrs.get('flatten', 'True') in ('True', '1', 'true'):
        return convert_fully_connected(node, **kwargs)
    no_bias = attrs.get('no_bias', 'False') in ('True', '1', 'true')
    product = name if no_bias else name + '_product'
    nodes = [helper.make_node('Transpose', [inputs[1]], [name + '_wt'], name=name + '_wt',
                              perm=[1, 0]),
             helper.make_node('MatMul', [inputs[0], name + '_wt'], [product], name=product)]
    if not no_bias:
        nodes.append(helper.make_node('Add', [product, inputs[2]], [name], name=name))
    return nodes


def convert_gather_nd(node, **kwargs):
    """MXNet's indices (2, B, P) (layers.gather_rows) hold an index tuple
    down their first axis; ONNX's GatherND reads it along the last, as int64."""
    name, inputs, _ = get_inputs(node, kwargs)
    return [helper.make_node('Transpose', [inputs[1]], [name + '_last'], name=name + '_last',
                             perm=[1, 2, 0]),
            helper.make_node('Cast', [name + '_last'], [name + '_int64'],
                             name=name + '_int64', to=TensorProto.INT64),
            helper.make_node('GatherND', [inputs[0], name + '_int64'], [name], name=name)]


def convert_npx_reshape(node, **kwargs):
    """npx.reshape's codes: -1 infer, -2 copy a dim, -5 merge two dims,
    -6 split one into the next two; the shape computed from the input's."""
    name, inputs, attrs = get_inputs(node, kwargs)
    codes = _ints(attrs['newshape'])
    if -3 in codes or -4 in codes:  # the twin's graphs do not use them
        raise NotImplementedError(f'{name}: npx.reshape codes -3 and -4 have no converter')
    nodes = [helper.make_node('Shape', [inputs[0]], [name + '_in'], name=name + '_in')]

    def dim(j):  # the input's dimension j, as a (1,) tensor
        out = f'{name}_d{j}'
        nodes.append(helper.make_node('Gather', [name + '_in', _const(
            kwargs, f'{name}_i{j}', [j], 'int64')], [out], name=out, axis=0))
        return out

    pieces, i, k = [], 0, 0  # i: the input's axis, k: the code
    while k < len(codes):
        code = codes[k]
        if code >= 0 or code == -1:
            pieces.append(_const(kwargs, f'{name}_c{k}', [code], 'int64'))
            i += 1
        elif code == -2:
            pieces.append(dim(i))
            i += 1
        elif code == -5:
            out = f'{name}_m{k}'
            nodes.append(helper.make_node('Mul', [dim(i), dim(i + 1)], [out], name=out))
            pieces.append(out)
            i += 2
        elif code == -6:  # the next two codes split dim i; one may be -1
            whole = dim(i)
            for j, (part, other) in enumerate(((codes[k + 1], codes[k + 2]),
                                               (codes[k + 2], codes[k + 1]))):
                if part != -1:
                    pieces.append(_const(kwargs, f'{name}_p{k}_{j}', [part], 'int64'))
                    continue
                out = f'{name}_q{k}_{j}'
                nodes.append(helper.make_node('Div', [whole, _const(
                    kwargs, f'{name}_o{k}_{j}', [other], 'int64')], [out], name=out))
                pieces.append(out)
            i += 1
            k += 2
        k += 1
    nodes.append(helper.make_node('Concat', pieces, [name + '_shape'], name=name + '_shape',
                                  axis=0))
    nodes.append(helper.make_node('Reshape', [inputs[0], name + '_shape'], [name], name=name))
    return nodes


# MXNet op name -> converter, for ONNX_OPSET: only while export_onnx runs
CONVERTERS = {
    '_npi_add': _binary('Add'), '_npi_subtract': _binary('Sub'),
    '_npi_multiply': _binary('Mul'), '_npi_true_divide': _binary('Div'),
    '_npi_less': _binary('Less'),
    '_npi_multiply_scalar': _with_scalar('Mul'), '_npi_add_scalar': _with_scalar('Add'),
    '_npi_subtract_scalar': _with_scalar('Sub'),
    '_npi_true_divide_scalar': _with_scalar('Div'),
    '_npi_rpower_scalar': _with_scalar('Pow', scalar_first=True),
    '_npi_sin': _unary('Sin'), '_npi_cos': _unary('Cos'),
    '_np_transpose': convert_transpose, '_np_squeeze': convert_squeeze,
    '_npi_arange': convert_arange, '_npi_full_like': convert_full_like,
    '_npi_stack': convert_stack, 'FullyConnected': convert_dense,
    'gather_nd': convert_gather_nd, '_npx_reshape': convert_npx_reshape,
}

_export_lock = threading.Lock()  # the registry and onnx's functions are process-wide


@contextlib.contextmanager
def _exporter_pinned():
    """CONVERTERS registered and MXNet's exporter pinned to ONNX_OPSET (it
    targets, and checks its graph against, onnx's newest opset) while the
    block runs; everything restored after, one export at a time."""
    with _export_lock:
        created = ONNX_OPSET not in MXNetGraph.registry_
        registry = MXNetGraph.registry_.setdefault(ONNX_OPSET, {})
        before = {name: registry.get(name) for name in CONVERTERS}
        saved = onnx.defs.onnx_opset_version, onnx.checker.check_graph
        registry.update(CONVERTERS)
        onnx.defs.onnx_opset_version = lambda: ONNX_OPSET
        onnx.checker.check_graph = lambda *args, **kwargs: None  # the whole model is checked after
        try:
            yield
        finally:
            onnx.defs.onnx_opset_version, onnx.checker.check_graph = saved
            for name, converter in before.items():
                if converter is None:
                    del registry[name]
                else:
                    registry[name] = converter
            if created:
                del MXNetGraph.registry_[ONNX_OPSET]


class _Encoder(nn.HybridBlock):
    """The encoder's outputs as Hugging Face's BertModel names them:
    (last_hidden_state (B, T, H), pooler_output (B, H): the '<cls>' row
    through BERT's pooler, the book's NSP hidden layer)."""
    def __init__(self, net):
        super().__init__(prefix=net.prefix)
        self.net = net

    def hybrid_forward(self, F, tokens, segments, valid_lens):
        X = self.net.encoder(tokens, segments, valid_lens)
        return X, self.net.nsp.mlp[0](cls_rows(F, X))


# what each kind of model's graph takes (the twin's tokens, segments, valid_lens,
# pred_positions: data0..data3 of the traced graph) and gives
_INPUTS = ('input_ids', 'token_type_ids', 'attention_mask', 'masked_positions')
OUTPUTS = {'encoder': ('last_hidden_state', 'pooler_output', 'sentence_embedding'),
           'pretraining': ('last_hidden_state', 'mlm_logits', 'nsp_logits'),
           'classifier': ('logits',)}


def onnx_inputs(tokens, segments, valid_lens, pred_positions=None):
    """The exported graph's inputs from the twin's host arrays: int64 ids, a
    right-padded attention mask of valid_lens ones (and masked_positions)."""
    T = tokens.shape[1]
    feed = {'input_ids': tokens.astype('int64'), 'token_type_ids': segments.astype('int64'),
            'attention_mask': (onp.arange(T)[None] < valid_lens[:, None]).astype('int64')}
    if pred_positions is not None:
        feed['masked_positions'] = pred_positions.astype('int64')
    return feed


def _traced(net, heads):
    """(kind, the block to trace, its twin model, number of inputs)."""
    if isinstance(net, BERTClassifier):
        return 'classifier', net, net, 3
    if not isinstance(net, HybridBERTModel):
        raise ValueError('net must be a bert_gluon HybridBERTModel or BERTClassifier, got '
                         f'{type(net).__name__}')
    if heads:
        check_heads_trained(net.config, 'heads=True')
        return 'pretraining', net, net, 4
    return 'encoder', _Encoder(net), net, 3


def _node(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def _output_shapes(kind, net):
    H, V = net.config.num_hiddens, net.config.vocab_size
    return {'encoder': (['batch', 'sequence', H], ['batch', H], ['batch', H]),
            'pretraining': (['batch', 'sequence', H], ['batch', 'predictions', V],
                            ['batch', 2]),
            'classifier': (['batch', len(getattr(net, 'labels', ()))],)}[kind]


def _interface(kind, graph, shapes, max_len):
    """(inputs, nodes before the traced graph, nodes after it, outputs,
    constants). The traced graph takes the twin's right-padded rows and
    their valid lengths; attention_mask is Hugging Face's key mask, any
    padding side, holes allowed (nonzero: a token). So each row's tokens are
    moved to its front in their order (a stable sort on the mask: `order`),
    valid_lens counted, masked_positions mapped along; after, the states go
    back to the tokens' own places, the outputs are renamed and, for the
    encoder, the mean over the mask is added (sentence-transformers'
    embedding). A token's position is its index among the row's tokens, as
    when the row is right-padded; a right-padded mask keeps every row as it is.
    A sequence longer than `max_len` cannot be honoured and ONNX cannot
    raise: the ids go through a Reshape whose shape is invalid then, so the
    engine fails naming that node, 'sequence_longer_than_max_len_<max_len>'."""
    count = 4 if kind == 'pretraining' else 3
    checked_ids = f'sequence_longer_than_max_len_{max_len}'  # the name an engine's error gives
    inputs = [helper.make_tensor_value_info(
        name, TensorProto.INT64, ['batch', 'predictions' if name == 'masked_positions'
                                  else 'sequence']) for name in _INPUTS[:count]]
    front = [
        _node('Cast', ['attention_mask'], 'mask_bool', to=TensorProto.BOOL),
        _node('Cast', ['mask_bool'], 'mask_float', to=TensorProto.FLOAT),
        _node('Shape', ['input_ids'], 'ids_shape'),
        _node('Gather', ['ids_shape', 'axis_1'], 'length'),             # (1,) T
        _node('LessOrEqual', ['length', 'max_len'], 'fits'),
        _node('Where', ['fits', 'ids_shape', 'invalid_shape'], 'checked_shape'),
        _node('Reshape', ['input_ids', 'checked_shape'], checked_ids),
        _node('Squeeze', ['length'], 'length_scalar'),
        _node('Range', ['zero_int64', 'length_scalar', 'one_int64'], 'positions'),
        _node('Cast', ['positions'], 'positions_float', to=TensorProto.FLOAT),
        _node('Cast', ['length'], 'length_float', to=TensorProto.FLOAT),
        # key = mask * T + (T - 1 - j): tokens first, each group in index order
        _node('Mul', ['mask_float', 'length_float'], 'mask_rank'),
        _node('Sub', ['length_float', 'positions_float'], 'after_j'),
        _node('Sub', ['after_j', 'one_float'], 'index_rank'),
        _node('Add', ['mask_rank', 'index_rank'], 'sort_key'),
        helper.make_node('TopK', ['sort_key', 'length'], ['sorted_keys', 'order'],
                         name='order', axis=1, largest=1, sorted=1),
        _node('GatherElements', [checked_ids, 'order'], 'ids_in_order', axis=1),
        _node('GatherElements', ['token_type_ids', 'order'], 'types_in_order', axis=1),
        _node('Cast', ['ids_in_order'], 'data0', to=TensorProto.INT32),
        _node('Cast', ['types_in_order'], 'data1', to=TensorProto.INT32),
        _node('ReduceSum', ['mask_float', 'axis_1'], 'data2', keepdims=0)]
    if kind == 'pretraining':  # where each original index went: inverse[order[j]] = j
        front += [_node('Shape', ['order'], 'order_shape'),
                  _node('Expand', ['positions', 'order_shape'], 'every_j'),
                  _node('ScatterElements', ['order', 'order', 'every_j'], 'inverse', axis=1),
                  _node('GatherElements', ['inverse', 'masked_positions'], 'moved_positions',
                        axis=1),
                  _node('Cast', ['moved_positions'], 'data3', to=TensorProto.INT32)]
    renamed = [('hidden_in_order' if name == 'last_hidden_state' else name)
               for name in OUTPUTS[kind]]
    back = [_node('Identity', [traced.name], name)
            for name, traced in zip(renamed, graph.output)]
    if 'last_hidden_state' in OUTPUTS[kind]:  # every row back at its token's index
        back += [_node('Unsqueeze', ['order', 'axis_2'], 'order_3d'),
                 _node('Shape', ['hidden_in_order'], 'hidden_shape'),
                 _node('Expand', ['order_3d', 'hidden_shape'], 'order_expanded'),
                 _node('ScatterElements', ['hidden_in_order', 'order_expanded',
                                           'hidden_in_order'], 'last_hidden_state', axis=1)]
    if kind == 'encoder':  # sum(mask * X) / max(sum(mask), 1e-9)
        back += [_node('Unsqueeze', ['mask_float', 'axis_2'], 'mask_3d'),
                 _node('Mul', ['last_hidden_state', 'mask_3d'], 'masked_states'),
                 _node('ReduceSum', ['masked_states', 'axis_1'], 'summed_states', keepdims=0),
                 _node('ReduceSum', ['mask_float', 'axis_1'], 'token_counts', keepdims=1),
                 _node('Max', ['token_counts', 'tiny'], 'safe_counts'),
                 _node('Div', ['summed_states', 'safe_counts'], 'sentence_embedding')]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in zip(OUTPUTS[kind], shapes)]
    constants = [numpy_helper.from_array(onp.array([1], 'int64'), 'axis_1'),
                 numpy_helper.from_array(onp.array([2], 'int64'), 'axis_2'),
                 numpy_helper.from_array(onp.array([max_len], 'int64'), 'max_len'),
                 numpy_helper.from_array(onp.array([-2, -2], 'int64'), 'invalid_shape'),
                 numpy_helper.from_array(onp.array(0, 'int64'), 'zero_int64'),
                 numpy_helper.from_array(onp.array(1, 'int64'), 'one_int64'),
                 numpy_helper.from_array(onp.array(1, 'float32'), 'one_float'),
                 numpy_helper.from_array(onp.array(1e-9, 'float32'), 'tiny')]
    return inputs, front, back, outputs, constants


def standard_interface(kind, model, shapes, max_len):
    """MXNet's traced ONNX (inputs data0..3 beside every weight, outputs
    named after internal blocks) given the Hugging Face interface: int64
    input_ids, token_type_ids, attention_mask (and masked_positions), the
    OUTPUTS[kind] names and `shapes`, weights as initializers only (none
    unused); sequences up to `max_len`."""
    graph = model.graph
    inputs, front, back, outputs, constants = _interface(kind, graph, shapes, max_len)
    body = list(graph.node)
    for field, values in ((graph.node, front + body + back), (graph.input, inputs),
                          (graph.output, outputs)):
        del field[:]
        field.extend(values)
    used = {name for node in graph.node for name in node.input}
    weights = [t for t in list(graph.initializer) + constants if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    return model


def export_onnx(net, path, heads=False, overwrite=False):
    """A twin model as a standard BERT ONNX (opset ONNX_OPSET, dynamic
    batch and sequence length), what onnxruntime, OpenVINO and tools written
    for Hugging Face exports take:
      inputs   input_ids, token_type_ids, attention_mask: int64 (batch, sequence)
               (+ masked_positions (batch, predictions) with heads=True)
      outputs  a HybridBERTModel: last_hidden_state, pooler_output,
               sentence_embedding (the mean over the mask);
               with heads=True: last_hidden_state, mlm_logits, nsp_logits;
               a BERTClassifier: logits.
    attention_mask is Hugging Face's key mask, any padding side, holes
    allowed; a token's position is its index among its row's tokens (as
    when right-padded). The graph checks no value, only that the sequence
    fits max_len (docs/representations.md). Traced from the twin on MXNet's
    operators. An existing file
    is refused unless `overwrite`. Returns the path."""
    kind, block, twin, count = _traced(net, heads)
    path = check_output_file(path, 'path', overwrite)
    inputs = dummy_batch(twin, batch_size=2)[:count]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the encoder's graph leaves the pretraining heads out on purpose
        warnings.filterwarnings('ignore', '.*is not used by any computation')
        symbol_file, params_file = trace_to_symbol(twin, block, os.path.join(tmp, 'bert'),
                                                   inputs)
        traced = os.path.join(tmp, 'bert.onnx')
        dynamic = [('batch', 'sequence'), ('batch', 'sequence'), ('batch',),
                   ('batch', 'predictions')][:count]
        with _exporter_pinned():
            mx.onnx.export_model(symbol_file, params_file, [a.shape for a in inputs],
                                 [a.dtype for a in inputs], traced, dynamic=True,
                                 dynamic_input_shapes=dynamic)
        model = onnx.load(traced)
    for node in model.graph.node:  # onnxruntime's graph fusions trip over unnamed nodes
        if not node.name:
            node.name = node.output[0]
    model = standard_interface(kind, model, _output_shapes(kind, twin if kind != 'classifier'
                                                           else net), twin.config.max_len)
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())
    return str(path)
