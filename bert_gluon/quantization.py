"""int8: the ONNX engines' quantized graph, and the check of a model's int8
on the user's own text.

    quantize_onnx('bert.onnx', 'bert-int8.onnx')
    check_calibration('runs/mrpc')   # before serving a folder in int8

The twin's int8 (dtype='int8', kernels/blas.h) quantizes each activation row
at run time with its own scale and zero point and each weight row once: no
scales are fitted, so no calibration set is needed to run it. What a set of
the user's sentences gives is evidence: `bert-gluon quantize`
(serving/calibration.py) runs them through
the model in float32 and in int8, records the agreement in the folder
(CALIBRATION_FILE, with the digest of the weights it was measured on), and
says whether it meets the bar; serving the folder in int8 afterwards refuses
weights changed since (the record no longer speaks for them) and warns of a
record that missed the bar.

The ONNX engines' graph is onnxruntime's:

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
import warnings
from pathlib import Path

from .fileio import atomic_copy, check_output_file, read_json

__all__ = ['quantize_onnx', 'INT8_OPS', 'CALIBRATION_FILE', 'check_calibration']

# in the model folder: serving/calibration.py's record of int8 on the user's text
CALIBRATION_FILE = 'int8.json'

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


def check_calibration(folder):
    """Before serving `folder` in int8: its CALIBRATION_FILE, if any, must
    be for the weights it holds now (else ValueError: they changed after
    calibration); one that missed its bar is said. Returns the record or
    None."""
    from .pretrained import weights_digest
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or 'weights_sha1' not in record:
        raise ValueError(f'{path} is not a calibration record (bert-gluon quantize writes it)')
    if record['weights_sha1'] != weights_digest(folder):
        raise ValueError(f'{path} was measured on other weights: the model changed after '
                         f'calibration. Run `bert-gluon quantize --from {folder} --calibrate '
                         f'{record.get("texts_file", "FILE")}` again, or delete {path.name}')
    if not record.get('passed', False):
        measured = (f"agreement {record.get('agreement')}" if record.get('kind') == 'classifier'
                    else f"minimum cosine {record.get('cosine_min')}")
        warnings.warn(f'{path}: int8 missed its bar on the calibration text ({measured}); '
                      'serving it anyway', stacklevel=3)
    return record
