"""Serving engines: one model folder, answered by MXNet (the twin), by
onnxruntime or by OpenVINO, with the same requests, errors and outputs.

    model = load_model('runs/mrpc', engine='openvino', precision='bfloat16')
    model.run(tokens, segments, valid_lens)   # {'logits': ...} or
                                              # {'last_hidden_state': ..., 'sentence_embedding': ...}

The ONNX engines read the folder's standard BERT ONNX (onnx_export.py),
built on first load and cached beside the folder's weights (`onnx/`, or the
package's cache when the folder is read-only), rebuilt when the weights'
SHA-1 changes and refused when the ONNX file's own SHA-1 does not match
its record. Engines other than MXNet are extras:
`pip install 'bert_gluon[onnxruntime]'`, `'bert_gluon[openvino]'`.
"""
import importlib
import os
import warnings
from pathlib import Path

from mxnet import gluon

from ..classifier import is_classifier_folder, load_classifier
from ..data.files import cache_dir, find_dataset, sha1_of
from ..fileio import atomic_write_json, check_writable_folder, read_json
from ..pretrained import PRETRAINED, from_pretrained, minilm_folder, weights_digest
from ..quantization import check_calibration
from ..represent import mean_pool

__all__ = ['ENGINES', 'PRECISIONS', 'ServedModel', 'load_model', 'check_engine']

ENGINES = ('mxnet', 'onnxruntime', 'openvino')
PRECISIONS = ('float32', 'bfloat16', 'int8')


def check_engine(engine, precision):
    """Refuse (naming the argument) an unknown engine or precision, a
    precision the engine cannot run, or an engine whose extra is missing."""
    if engine not in ENGINES:
        raise ValueError(f'engine must be one of {ENGINES}, got {engine!r}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if engine == 'onnxruntime' and precision == 'bfloat16':
        raise ValueError("precision='bfloat16': onnxruntime's CPU provider runs this model in "
                         "float32; use engine='openvino' or 'mxnet' for bf16")
    if engine != 'mxnet':
        for module in ('onnx', engine):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"engine={engine!r} needs {module}: pip install "
                                 f"'bert_gluon[{engine}]'") from exc


class ServedModel(gluon.Block):
    """A loaded model and what serving needs beside it: `kind`
    ('classifier' or 'encoder'), `tokenizer`, `max_len`, `labels`
    (classifiers), `engine` and `precision`, and `plan` (the twin's
    ExecutionPlan as a dict on the mxnet engine, else None). A Gluon Block,
    as SageMaker's MXNet container requires of what model_fn returns; `run`
    answers."""
    def __init__(self, run, kind, tokenizer, max_len, labels, engine, precision, plan=None):
        super().__init__()
        self.run, self.kind, self.tokenizer = run, kind, tokenizer
        self.max_len, self.labels = max_len, labels
        self.engine, self.precision, self.plan = engine, precision, plan

    @property
    def info(self):
        """What answers: the engine, the precision asked for and, on the
        mxnet engine, the plan that runs (implementation, precision, provider)."""
        return {'engine': self.engine, 'precision': self.precision, 'plan': self.plan}


def _folder_of(source):
    """(where the weights are, whether the ONNX may be cached there): a
    registered name's folder belongs to another package or the data cache."""
    if source == 'all-MiniLM-L6-v2':
        return minilm_folder(), False
    if source in PRETRAINED:  # d2l's checkpoints
        return find_dataset(source), False
    return Path(source), True


def _writable(place):
    try:
        check_writable_folder(place, 'the ONNX cache')
    except ValueError:
        return False
    return True


def _cached_onnx(folder, beside, net, int8=False):
    """The folder's ONNX (`int8`: quantized, quantization.py): built from
    `net` on first use, cached beside the weights (`beside`; else, or
    read-only, in the package cache), rebuilt when they change."""
    from .. import __version__
    from ..onnx_export import export_onnx
    source = weights_digest(folder)
    places = ((folder / 'onnx',) if beside else ()) + (cache_dir() / 'onnx' / source,)
    for place in places:
        record, model = place / 'model.json', place / 'model.onnx'
        if not (record.is_file() and model.is_file()):
            continue
        known = read_json(record)
        if not isinstance(known, dict):
            warnings.warn(f'{record} holds {type(known).__name__}, not the record of the '
                          'ONNX built there: building it again')
            continue
        if known.get('source_sha1') == source and known.get('version') == __version__:
            if sha1_of(model) == known.get('onnx_sha1'):
                if not int8:
                    return model
                if _int8_ready(model, known):
                    return model.with_name(INT8_FILE)
                if _writable(place):
                    return _quantize_beside(model, record, known)
                continue  # a read-only folder without its int8: built in the package cache
            if _writable(place):  # the user's to look at: never silently replaced
                raise ValueError(f'{model} is corrupt (its SHA-1 differs from the one in '
                                 f'{record}): delete {place} to rebuild it')
            warnings.warn(f'{model} is corrupt (its SHA-1 differs from the one in {record}) '
                          'and its folder is read-only: building it in the package cache')
    place = next((p for p in places if _writable(p)), None)
    if place is None:
        raise ValueError(f'no writable place for the ONNX of {folder}: '
                         + ' or '.join(map(str, places)))
    _remove_stale_temporaries(place)
    model = Path(export_onnx(net, place / 'model.onnx', overwrite=True))
    known = {'source_sha1': source, 'onnx_sha1': sha1_of(model), 'version': __version__}
    atomic_write_json(place / 'model.json', known)
    return _quantize_beside(model, place / 'model.json', known) if int8 else model


INT8_FILE = 'model-int8.onnx'  # beside model.onnx, quantized from it


def _int8_ready(model, known):
    """Whether the int8 file beside `model` is the one its record says was
    quantized from it."""
    int8 = model.with_name(INT8_FILE)
    return (int8.is_file() and known.get('int8_from') == known['onnx_sha1']
            and sha1_of(int8) == known.get('int8_sha1'))


def _quantize_beside(model, record, known):
    """Quantize `model` into the int8 file beside it (not ready: see
    _int8_ready) and record its SHA-1 and that of the float32 file it came from."""
    from ..quantization import quantize_onnx
    int8 = model.with_name(INT8_FILE)
    if int8.is_file() and known.get('int8_from') == known['onnx_sha1']:
        warnings.warn(f'{int8} is corrupt (its SHA-1 differs from the one in {record}): '
                      'quantizing it again')
    quantize_onnx(model, int8, overwrite=True)
    atomic_write_json(record, dict(known, int8_from=known['onnx_sha1'], int8_sha1=sha1_of(int8)))
    return int8


def _remove_stale_temporaries(place, older_than=3600):
    """Temporary files of builds killed in `place` (an hour old: a build
    takes seconds, and one running now keeps its own)."""
    import time
    for stale in place.glob('.model.*.tmp'):
        try:
            if time.time() - stale.stat().st_mtime > older_than:
                stale.unlink()
        except OSError:  # another process removed it first
            pass


def _threads():
    return int(os.environ.get('OMP_NUM_THREADS') or len(os.sched_getaffinity(0)))


def _onnxruntime_run(path):
    import onnxruntime as ort
    from ..onnx_export import onnx_inputs
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    return lambda *arrays: dict(zip(names, session.run(None, onnx_inputs(*arrays))))


def _openvino_bf16_obstacle(core):
    """None where OpenVINO's CPU plugin runs bf16 here, else why not. It
    reports BF16 by cpuid, but runs on oneDNN, which ONEDNN_MAX_CPU_ISA caps
    (below AVX512_CORE_BF16 its bf16 graph cannot even compile)."""
    if 'BF16' not in core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'):
        return 'OpenVINO finds neither AVX512_BF16 nor AMX on this CPU'
    cap = os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper()
    if cap and cap not in ('ALL', 'DEFAULT') and not any(
            mark in cap for mark in ('BF16', 'AMX', 'FP16', 'AVX10')):
        return f'ONEDNN_MAX_CPU_ISA={cap} holds its oneDNN below bf16'
    return None


_said_openvino_f32 = []  # the notice below, once per process


def _openvino_run(path, precision):
    import openvino as ov
    from ..onnx_export import OUTPUTS, onnx_inputs
    core = ov.Core()
    obstacle = _openvino_bf16_obstacle(core) if precision == 'bfloat16' else None
    if obstacle and not _said_openvino_f32:
        _said_openvino_f32.append(True)
        warnings.warn(f"precision='bfloat16' on engine='openvino' runs float32 here: {obstacle}",
                      stacklevel=3)
    compiled = core.compile_model(str(path), 'CPU', {
        'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bfloat16' and not obstacle else 'f32',
        'INFERENCE_NUM_THREADS': _threads(), 'PERFORMANCE_HINT': 'LATENCY'})
    request = compiled.create_infer_request()  # one request at a time: a model-server worker
    known = {name for names in OUTPUTS.values() for name in names}
    # a tensor has several names in OpenVINO: the graph output's is the one to answer by
    names = [next(iter(set(output.names) & known)) for output in compiled.outputs]

    def run(*arrays):
        results = request.infer(onnx_inputs(*arrays))
        return {name: results[output] for name, output in zip(names, compiled.outputs)}
    return run


def _mxnet_run(net, kind):
    import mxnet as mx
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    net = net.for_inference()

    def run(*arrays):
        tokens, segments, valid_lens = (mx.np.array(a, ctx=ctx) for a in arrays)
        if kind == 'classifier':
            return {'logits': net(tokens, segments, valid_lens).asnumpy()}
        X = net.encoder(tokens, segments, valid_lens)
        return {'last_hidden_state': X.asnumpy(),
                'sentence_embedding': mean_pool(X, valid_lens).asnumpy()}
    return run


def load_model(source, engine='mxnet', precision='float32'):
    """A ServedModel for `source` (a classifier folder, a pretrained folder,
    a Hugging Face folder, or a registered name) on `engine` in `precision`.
    run(tokens, segments, valid_lens) (host int32 / float32 arrays) returns
    {'logits'} for a classifier, {'last_hidden_state', 'sentence_embedding',
    ...} for an encoder, as host float32 arrays."""
    check_engine(engine, precision)
    if not (source in PRETRAINED or Path(source).is_dir()):
        raise ValueError(f'source: {source} is neither a model folder nor one of '
                         f'{sorted(PRETRAINED)}')
    if precision == 'int8' and Path(source).is_dir():
        check_calibration(source)  # a record for other weights is refused
    dtype = {'dtype': precision} if engine == 'mxnet' else {}
    if is_classifier_folder(source):
        net, tokenizer, config = load_classifier(source, **dtype)
        kind, labels, max_len = 'classifier', net.labels, net.max_len
    else:
        net, tokenizer, config = from_pretrained(str(source), **dtype)
        kind, labels, max_len = 'encoder', None, config.max_len
    plan = None
    if engine == 'mxnet':
        run = _mxnet_run(net, kind)
        plan = net.for_inference().plan.to_dict()
    else:
        path = _cached_onnx(*_folder_of(source), net, precision == 'int8')
        run = _onnxruntime_run(path) if engine == 'onnxruntime' else _openvino_run(path,
                                                                                    precision)
    return ServedModel(run, kind, tokenizer, max_len, labels, engine, precision, plan)
