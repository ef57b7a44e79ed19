"""int8 for the ONNX engines: a float32 BERT ONNX quantized by onnxruntime's
own quantizer, which onnxruntime and OpenVINO both run.

    quantize_onnx('bert.onnx', 'bert-int8.onnx')

Dynamic quantization: each weight product's weights int8 once, per output
channel (per tensor, MiniLM's sentence embeddings drift far from
float32's), activations quantized per tensor at run time,
so no calibration set is needed. Weights keep 7 bits (`reduce_range`): CPUs
with plain AVX2 multiply u8 x s8 with `vpmaddubsw`, whose 16-bit sums of two
products saturate with 8-bit weights, so the answers would depend on the
CPU; with 7 bits no sum can overflow. Products of two activations (attention
scores) stay float32.
"""
import os
import tempfile
from pathlib import Path

from .fileio import atomic_copy, check_output_file

__all__ = ['quantize_onnx', 'INT8_OPS']

# What an int8 graph holds that a float32 one does not
INT8_OPS = ('DynamicQuantizeLinear', 'MatMulInteger')


def quantize_onnx(source, path, overwrite=False):
    """The float32 ONNX at `source` with its weight products in int8 (the
    module's docstring says how), written atomically to `path`; an existing
    file is refused unless `overwrite`. Returns the path."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ValueError("int8 needs onnxruntime's quantizer: pip install "
                         "'bert_gluon[onnxruntime]'") from exc
    source = Path(source)
    if not source.is_file():
        raise ValueError(f'source: {source} is not an ONNX file')
    path = check_output_file(path, 'path', overwrite)
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # noqa: BLE001  (onnx raises its own DecodeError)
        raise ValueError(f'source: {source} is not an ONNX model: {exc}') from exc
    if any(node.op_type in INT8_OPS for node in model.graph.node):
        raise ValueError(f'source: {source} is quantized already (it holds {INT8_OPS})')
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, 'prepared.onnx')
        quantized = os.path.join(tmp, 'int8.onnx')
        # constant folding first: the quantizer takes a product's weights only as
        # an initializer, not as the Transpose of one the exporter writes
        quant_pre_process(str(source), prepared, skip_symbolic_shape=True)
        quantize_dynamic(prepared, quantized, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)
        atomic_copy(quantized, path)
    return str(path)
