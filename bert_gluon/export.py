"""Export the hybridized twin to symbol + params and load it back.

The exported graph is the whole `HybridBERTModel`: inputs
(tokens, segments, valid_lens, pred_positions) named data0..data3, outputs
(encoded_X, mlm_Y_hat, nsp_Y_hat). Beside the two MXNet files,
`prefix-config.json` holds the model's config, so the reloaded model checks
its inputs as the twin does.
"""
import os
import warnings

import mxnet as mx
import numpy as onp
from mxnet import gluon

from .checkpoint import atomic_write_json
from .config import BERTConfig
from .inputs import prepare_encoder_inputs, prepare_pred_positions
from .model import HybridBERTModel

__all__ = ['export_model', 'load_exported', 'ExportedBERT', 'INPUT_NAMES', 'export_onnx',
           'export_huggingface']

INPUT_NAMES = ('data0', 'data1', 'data2', 'data3')


def export_model(net, prefix, batch_size=1, seq_len=8, num_pred=1):
    """Write `prefix-symbol.json`, `prefix-0000.params` and
    `prefix-config.json`; return the first two paths.

    The graph is traced anew on a dummy batch of the given sizes, with
    MXNet's own operators only (the 'mxnet' backend), so the files load
    without this package. The net is left hybridized, on its own backend.
    """
    if not isinstance(net, HybridBERTModel):
        raise ValueError('net must be a bert_gluon.HybridBERTModel, got '
                         f'{type(net).__name__}')
    ctx = net.encoder.token_embedding.weight.list_ctx()[0]
    request = net.backend_request
    net.backend = 'mxnet'  # drops the graphs traced with native ops
    try:
        net.hybridize(static_alloc=True, static_shape=True)
        tokens = mx.np.zeros((batch_size, seq_len), dtype='int32', ctx=ctx)
        pred_positions = mx.np.zeros((batch_size, num_pred), dtype='int32', ctx=ctx)
        net(tokens, mx.np.zeros_like(tokens), None, pred_positions)
        folder = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(folder, exist_ok=True)
        net.export(prefix)
        atomic_write_json(f'{prefix}-config.json', net.config.to_dict())
    finally:
        net.backend = request  # and its graphs are traced anew
    return f'{prefix}-symbol.json', f'{prefix}-0000.params'


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
    from .pretrained import read_json
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


# ---- ONNX ----

ONNX_OPSET = 13  # MXNet 1.9's LayerNorm converter writes ReduceMean(axes=...), invalid from 18


def _register_numpy_converters():
    """Converters for the NumPy-interface ops of the twin's graph, which
    MXNet 1.9's ONNX exporter lacks (the ops MXNet's own legacy names have)."""
    from onnx import helper, numpy_helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import (
        get_input_dtypes, get_inputs)

    registry = MXNetGraph.registry_.setdefault(ONNX_OPSET, {})
    if '_npx_reshape' in registry:
        return

    def register(*names):
        def wrap(func):
            for name in names:
                registry[name] = func
            return func
        return wrap

    def const(kwargs, name, value, dtype):
        kwargs['initializer'].append(numpy_helper.from_array(onp.array(value, dtype), name))
        return name

    def attr(attrs, key, default=None):
        value = attrs.get(key, default)
        return None if value in (None, 'None') else value

    def ints(text):  # '(0, 2, 1)' or '[2]' or '1', as MXNet writes a tuple attribute
        return [int(a) for a in str(text).strip('()[] ').split(',') if a.strip()]

    def binary(onnx_op):
        def convert(node, **kwargs):
            name, inputs, _ = get_inputs(node, kwargs)
            nodes = [helper.make_node(onnx_op, inputs[:2], [name], name=name)]
            return (nodes, (onp.dtype('bool'),)) if onnx_op == 'Less' else nodes
        return convert
    for mx_op, onnx_op in (('_npi_add', 'Add'), ('_npi_subtract', 'Sub'),
                           ('_npi_multiply', 'Mul'), ('_npi_true_divide', 'Div'),
                           ('_npi_less', 'Less')):
        registry[mx_op] = binary(onnx_op)

    def scalar(onnx_op, scalar_first=False):
        def convert(node, **kwargs):
            name, inputs, attrs = get_inputs(node, kwargs)
            value = const(kwargs, name + '_scalar', float(attrs['scalar']), 'float32')
            operands = [value, inputs[0]] if scalar_first else [inputs[0], value]
            return [helper.make_node(onnx_op, operands, [name], name=name)]
        return convert
    for mx_op, onnx_op, first in (('_npi_multiply_scalar', 'Mul', False),
                                  ('_npi_add_scalar', 'Add', False),
                                  ('_npi_subtract_scalar', 'Sub', False),
                                  ('_npi_true_divide_scalar', 'Div', False),
                                  ('_npi_rpower_scalar', 'Pow', True)):
        registry[mx_op] = scalar(onnx_op, first)

    @register('_npi_sin', '_npi_cos')
    def trig(node, **kwargs):
        name, inputs, _ = get_inputs(node, kwargs)
        return [helper.make_node('Sin' if node['op'] == '_npi_sin' else 'Cos', inputs[:1],
                                 [name], name=name)]

    @register('_np_transpose')
    def transpose(node, **kwargs):
        name, inputs, attrs = get_inputs(node, kwargs)
        axes = attr(attrs, 'axes')
        perm = {} if axes is None else {'perm': ints(axes)}
        return [helper.make_node('Transpose', inputs[:1], [name], name=name, **perm)]

    @register('_np_squeeze')
    def squeeze(node, **kwargs):
        name, inputs, attrs = get_inputs(node, kwargs)
        axis = attr(attrs, 'axis')
        if axis is None:
            return [helper.make_node('Squeeze', inputs[:1], [name], name=name)]
        axes = ints(axis)
        return [helper.make_node('Squeeze', [inputs[0], const(kwargs, name + '_axes', axes,
                                                                'int64')], [name], name=name)]

    @register('_npi_arange')
    def arange(node, **kwargs):
        name, _, attrs = get_inputs(node, kwargs)
        dtype = onp.dtype(attr(attrs, 'dtype', 'float32'))
        start, stop = float(attr(attrs, 'start', 0)), attr(attrs, 'stop')
        if stop is None:
            start, stop = 0.0, start
        names = [const(kwargs, f'{name}_{k}', v, dtype)
                 for k, v in (('start', start), ('stop', float(stop)),
                              ('step', float(attr(attrs, 'step', 1))))]
        return [helper.make_node('Range', names, [name], name=name)], (dtype,)

    @register('_npi_full_like')
    def full_like(node, **kwargs):
        name, inputs, attrs = get_inputs(node, kwargs)
        dtype = onp.dtype(attr(attrs, 'dtype') or get_input_dtypes(node, kwargs)[0])
        value = numpy_helper.from_array(onp.array([float(attrs['fill_value'])], dtype))
        return [helper.make_node('Shape', inputs[:1], [name + '_shape'], name=name + '_shape'),
                helper.make_node('ConstantOfShape', [name + '_shape'], [name], name=name,
                                 value=value)], (dtype,)

    @register('_npi_stack')
    def stack(node, **kwargs):
        name, inputs, attrs = get_inputs(node, kwargs)
        axis = const(kwargs, name + '_axis', [int(attr(attrs, 'axis', 0))], 'int64')
        nodes, parts = [], []
        for i, x in enumerate(inputs):
            parts.append(f'{name}_part{i}')
            nodes.append(helper.make_node('Unsqueeze', [x, axis], [parts[-1]], name=parts[-1]))
        return nodes + [helper.make_node('Concat', parts, [name], name=name,
                                         axis=int(attr(attrs, 'axis', 0)))]

    @register('FullyConnected')
    def fully_connected(node, **kwargs):
        """flatten=False as MatMul (+ Add) on the (B, T, K) input itself: the
        legacy converter's Flatten/Gemm/Reshape, followed by a GELU, is
        rewired wrongly by onnxruntime's default fusions for some batches."""
        from mxnet.onnx.mx2onnx._op_translations._op_translations_opset12 import (
            convert_fully_connected)
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

    @register('gather_nd')
    def gather_nd(node, **kwargs):
        """MXNet's indices (2, B, P) (gather_rows) hold an index tuple down
        their first axis; ONNX's GatherND reads it along the last, as int64."""
        from onnx import TensorProto
        name, inputs, _ = get_inputs(node, kwargs)
        return [helper.make_node('Transpose', [inputs[1]], [name + '_last'], name=name + '_last',
                                 perm=[1, 2, 0]),
                helper.make_node('Cast', [name + '_last'], [name + '_int64'],
                                 name=name + '_int64', to=TensorProto.INT64),
                helper.make_node('GatherND', [inputs[0], name + '_int64'], [name], name=name)]

    @register('_npx_reshape')
    def reshape(node, **kwargs):
        """npx.reshape's codes: -1 infer, -2 copy a dim, -5 merge two dims,
        -6 split one into the next two."""
        name, inputs, attrs = get_inputs(node, kwargs)
        codes = ints(attrs['newshape'])
        if -3 in codes or -4 in codes:  # the twin's graphs do not use them
            raise NotImplementedError(f'{name}: npx.reshape codes -3 and -4 have no converter')
        data, nodes, pieces, i, k = inputs[0], [], [], 0, 0
        nodes.append(helper.make_node('Shape', [data], [name + '_in'], name=name + '_in'))

        def dim(j):
            out = f'{name}_d{j}'
            nodes.append(helper.make_node('Gather', [name + '_in', const(
                kwargs, f'{name}_i{j}', [j], 'int64')], [out], name=out, axis=0))
            return out
        while k < len(codes):
            code = codes[k]
            if code >= 0 or code == -1:
                pieces.append(const(kwargs, f'{name}_c{k}', [code], 'int64'))
                i += 1
            elif code == -2:
                pieces.append(dim(i))
                i += 1
            elif code == -5:
                out = f'{name}_m{k}'
                nodes.append(helper.make_node('Mul', [dim(i), dim(i + 1)], [out], name=out))
                pieces.append(out)
                i += 2
            elif code == -6:
                a, b = codes[k + 1], codes[k + 2]
                whole = dim(i)
                for j, (part, other) in enumerate(((a, b), (b, a))):
                    if part != -1:
                        pieces.append(const(kwargs, f'{name}_p{k}_{j}', [part], 'int64'))
                    else:
                        out = f'{name}_q{k}_{j}'
                        nodes.append(helper.make_node('Div', [whole, const(
                            kwargs, f'{name}_o{k}_{j}', [other], 'int64')], [out], name=out))
                        pieces.append(out)
                i += 1
                k += 2
            k += 1
        nodes.append(helper.make_node('Concat', pieces, [name + '_shape'], name=name + '_shape',
                                      axis=0))
        nodes.append(helper.make_node('Reshape', [data, name + '_shape'], [name],
                                      name=name))
        return nodes


def export_onnx(net, path, batch_size=2, seq_len=8, num_pred=1):
    """The model as ONNX (opset 13), dynamic batch and sequence length:
    inputs tokens, segments (int32), valid_lens (float32), pred_positions
    (int32); outputs encoded_X, mlm_Y_hat, nsp_Y_hat. Traced from the
    symbol export_model writes (MXNet's operators only); onnxruntime runs it."""
    import tempfile
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ValueError('export_onnx needs onnx (pip install onnx==1.16.2)') from exc
    _register_numpy_converters()
    with tempfile.TemporaryDirectory() as tmp:
        symbol_file, params_file = export_model(net, os.path.join(tmp, 'bert'), batch_size,
                                                seq_len, num_pred)
        shapes = [(batch_size, seq_len), (batch_size, seq_len), (batch_size,),
                  (batch_size, num_pred)]
        types = [onp.int32, onp.int32, onp.float32, onp.int32]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        import onnx.checker
        import onnx.defs
        # MXNet's exporter targets, and checks its graph against, the newest
        # opset: pin both to ONNX_OPSET; the whole model is checked below
        saved = onnx.defs.onnx_opset_version, onnx.checker.check_graph
        onnx.defs.onnx_opset_version = lambda: ONNX_OPSET
        onnx.checker.check_graph = lambda *args, **kwargs: None
        try:
            mx.onnx.export_model(symbol_file, params_file, shapes, types, path, dynamic=True,
                                 dynamic_input_shapes=[('batch', 'length'), ('batch', 'length'),
                                                       ('batch',), ('batch', 'predictions')])
        finally:
            onnx.defs.onnx_opset_version, onnx.checker.check_graph = saved
    model = onnx.load(path)
    for node in model.graph.node:  # onnxruntime's graph fusions trip over unnamed nodes
        if not node.name:
            node.name = node.output[0]
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# ---- Hugging Face format ----

def _hf_name(twin_name):
    """The Hugging Face BertModel name of a twin parameter (the inverse of
    pretrained.HF_TO_TWIN), and the array change; (None, None) when it has none."""
    import re
    from .pretrained import HF_TO_TWIN
    for pattern, target, change in HF_TO_TWIN:
        groups = re.findall(r'\([^()]*\)', pattern)  # the pattern's groups, in order
        regex = re.escape(target)
        for k, group in enumerate(groups, start=1):
            regex = regex.replace(re.escape(f'\\{k}'), group)
        match = re.fullmatch(regex, twin_name)
        if match:
            name = pattern
            for group, value in zip(groups, match.groups()):
                name = name.replace(group, value, 1)
            return name.replace('\\.', '.'), change
    return None, None


def export_huggingface(net, folder, tokenizer=None):
    """A real-BERT twin (learned positions, embedding LayerNorm, biased
    attention) as a Hugging Face BERT folder: config.json, model.safetensors
    (BertModel's names: pretrained.HF_TO_TWIN read backwards) and, given a
    WordPiece tokenizer, vocab.txt. transformers.BertModel loads it with equal
    outputs. The pretraining heads, which BertModel has not, stay out."""
    import json
    import shutil
    from pathlib import Path
    from safetensors.numpy import save_file
    if not isinstance(net, HybridBERTModel):
        raise ValueError(f'net must be a bert_gluon.HybridBERTModel, got {type(net).__name__}')
    config = net.config
    if not (config.position_embedding == 'learned' and config.embedding_layer_norm
            and config.use_bias):
        raise ValueError('the Hugging Face format holds real-BERT configs (learned positions, '
                         'embedding LayerNorm, biased attention); this config has '
                         f'{config.position_embedding} positions, embedding_layer_norm='
                         f'{config.embedding_layer_norm}, use_bias={config.use_bias}')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for twin_name, param in net._collect_params_with_prefix().items():
        hf_name, change = _hf_name(twin_name)
        if hf_name is None:
            continue  # the MLM and NSP output layers: not in BertModel
        array = param.data().asnumpy()
        tensors[hf_name] = onp.ascontiguousarray(array[0] if change == 'add_batch_axis'
                                                 else array)
    save_file(tensors, str(folder / 'model.safetensors'))
    hf_config = {
        'architectures': ['BertModel'], 'model_type': 'bert',
        'vocab_size': config.vocab_size, 'hidden_size': config.num_hiddens,
        'num_hidden_layers': config.num_layers, 'num_attention_heads': config.num_heads,
        'intermediate_size': config.ffn_num_hiddens, 'hidden_act': config.activation,
        'hidden_dropout_prob': config.dropout, 'attention_probs_dropout_prob': config.dropout,
        'max_position_embeddings': config.max_len, 'type_vocab_size': config.num_segments,
        'layer_norm_eps': config.layer_norm_eps, 'initializer_range': 0.02,
        'pad_token_id': 0, 'position_embedding_type': 'absolute'}
    atomic_write_json(folder / 'config.json', hf_config)
    if tokenizer is not None:
        if not hasattr(tokenizer, 'vocab_file'):
            raise ValueError('tokenizer: the Hugging Face format takes a WordPiece vocab.txt; '
                             'a word-level Vocab has none')
        shutil.copyfile(tokenizer.vocab_file, folder / 'vocab.txt')
    return folder
