"""The twin as ONNX: MXNet 1.9's exporter, with converters for the NumPy-
interface ops of the twin's graph (which it lacks) registered only while an
export runs; MXNet's converter registry and `onnx` are left as they were.

    export_onnx(net, 'bert.onnx')   # onnxruntime runs it
"""
import contextlib
import os
import tempfile
import threading

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

from .export import export_model
from .fileio import atomic_write_bytes, check_output_file

__all__ = ['ONNX_OPSET', 'CONVERTERS', 'export_onnx']

ONNX_OPSET = 13  # MXNet 1.9's LayerNorm converter writes ReduceMean(axes=...), invalid from 18


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


def export_onnx(net, path, batch_size=2, seq_len=8, num_pred=1, overwrite=False):
    """The model as ONNX (opset 13), dynamic batch and sequence length:
    inputs tokens, segments (int32), valid_lens (float32), pred_positions
    (int32); outputs encoded_X, mlm_Y_hat, nsp_Y_hat. Traced from the
    symbol export_model writes (MXNet's operators only); onnxruntime runs it.
    An existing file is refused unless `overwrite`. The graph checks no
    input (README, "Export"): its caller feeds it what the twin's checks
    accept, ids in range and 1 <= valid_lens <= length."""

    path = check_output_file(path, 'path', overwrite)
    with tempfile.TemporaryDirectory() as tmp:
        symbol_file, params_file = export_model(net, os.path.join(tmp, 'bert'), batch_size,
                                                seq_len, num_pred)
        shapes = [(batch_size, seq_len), (batch_size, seq_len), (batch_size,),
                  (batch_size, num_pred)]
        types = [onp.int32, onp.int32, onp.float32, onp.int32]
        traced = os.path.join(tmp, 'bert.onnx')
        with _exporter_pinned():
            mx.onnx.export_model(symbol_file, params_file, shapes, types, traced, dynamic=True,
                                 dynamic_input_shapes=[('batch', 'length'), ('batch', 'length'),
                                                       ('batch',), ('batch', 'predictions')])
        model = onnx.load(traced)
    for node in model.graph.node:  # onnxruntime's graph fusions trip over unnamed nodes
        if not node.name:
            node.name = node.output[0]
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return str(path)
