"""Deployment: the fine-tuned folder reloads; the inference handlers answer
and refuse as documented, alone and inside SageMaker's own MXNet serving
container and model server; the training entry point runs under SageMaker's
own training toolkit."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as onp
import pytest

from bert_gluon.classifier import BERTClassifier, load_classifier
from bert_gluon.finetuning import finetune
from bert_gluon.pretrained import from_pretrained
from bert_gluon.represent import encode_batch
from bert_gluon.serving import inference
from bert_gluon.processes import free_port
from bert_gluon.serving.endpoint import LocalEndpoint
from conftest import assert_close

PAIRS = [['A man plays a guitar.', 'Someone makes music.'],
         ['The cat sleeps.', 'A dog barks loudly at night.']]


REQUESTS = ({'inputs': PAIRS}, {'inputs': 'A single sentence.'},
            {'inputs': ['a crane is flying', 'the bird'], 'pooling': 'cls'})


def _answers(folder, engine, precision='float32'):
    from bert_gluon.serving.engines import load_model
    model = load_model(str(folder), engine, precision)
    answers = []
    for request in REQUESTS:
        data = inference.input_fn(json.dumps(request), 'application/json')
        answers.append(json.loads(inference.output_fn(inference.predict_fn(data, model))))
    return answers


def _same_answers(ours, theirs, atol):
    for a, b in zip(ours, theirs):
        assert set(a) == set(b)
        for key in a:
            if key == 'model':  # who answered: differs between engines
                assert set(a[key]) == {'engine', 'precision', 'plan'}
            elif key in ('labels', 'label_names'):
                assert a[key] == b[key]
            else:
                assert_close(onp.array(a[key]), onp.array(b[key]), atol=atol, rtol=0,
                             err_msg=key)


@pytest.fixture(scope='module')
def classifier_folder(tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp('classifier')
    result = finetune('RTE', tiny_pretrained, num_epochs=1, batch_size=64, max_len=32,
                      lr=1e-3, out_dir=out, progress=False)
    return out, result['net']


def _status(call, *args):
    with pytest.raises(Exception) as info:
        call(*args)
    return getattr(info.value, 'status_code', getattr(info.value, 'status', None)), str(info.value)


@pytest.mark.backend_dependent
def test_finetune_folder_holds_everything_to_reload(classifier_folder):
    folder, trained = classifier_folder
    for name in ('classifier.params', 'classifier.json', 'config.json', 'vocab.json',
                 'metrics.json'):
        assert (folder / name).is_file(), name
    net, vocab, config = load_classifier(folder)
    assert isinstance(net, BERTClassifier)
    with pytest.raises(ValueError, match='holds a fine-tuned classifier.*load_classifier'):
        from_pretrained(str(folder))
    assert net.labels == ('not_entailment', 'entailment') and net.task == 'RTE'
    from bert_gluon.data.pairs import encode_pairs
    arrays = [mx.np.array(a) for a in encode_pairs([tuple(p) for p in PAIRS], vocab, 32)]
    assert_close(net(*arrays), trained(*arrays))


@pytest.mark.backend_dependent
def test_handlers_answer_with_label_names(classifier_folder):
    folder, trained = classifier_folder
    model = inference.model_fn(str(folder))
    data = inference.input_fn(json.dumps({'inputs': PAIRS}), 'application/json')
    answer = json.loads(inference.output_fn(inference.predict_fn(data, model),
                                            'application/json'))
    probs = onp.array(answer['probabilities'])
    assert probs.shape == (2, 2) and onp.allclose(probs.sum(1), 1, atol=1e-5)
    assert answer['labels'] == [model.labels[i] for i in probs.argmax(1)]
    from bert_gluon.data.pairs import encode_pairs
    arrays = [mx.np.array(a) for a in encode_pairs([tuple(p) for p in PAIRS],
                                                   model.tokenizer, 32)]
    expected = mx.npx.softmax(trained(*arrays), axis=-1).asnumpy()
    assert_close(probs, expected, atol=1e-5)
    one = inference.input_fn(b'{"inputs": "A single sentence."}', 'application/json')
    assert len(inference.predict_fn(one, model)['labels']) == 1
    # media types are case-insensitive
    shouted = inference.input_fn(b'{"inputs": "A sentence."}', 'Application/JSON; charset=UTF-8')
    assert shouted['pairs'] == [('A sentence.', None)]
    assert json.loads(inference.output_fn({'labels': []}, 'APPLICATION/json')) == {'labels': []}


@pytest.mark.backend_dependent
def test_handlers_refuse_bad_requests(classifier_folder):
    folder, _ = classifier_folder
    model = inference.model_fn(str(folder))
    for body, content_type, status, message in (
            ('a,b', 'text/csv', 415, 'not supported'),
            ('{"inputs": ', 'application/json', 400, 'not UTF-8 JSON'),
            (b'\xff\xfe', 'application/json', 400, 'not UTF-8 JSON'),
            ('{"text": "a"}', 'application/json', 400, '"inputs"'),
            ('{"inputs": []}', 'application/json', 400, 'non-empty list'),
            ('{"inputs": [["a"]]}', 'application/json', 400, r'"inputs"[0]'),
            ('{"inputs": ["  "]}', 'application/json', 400, r'"inputs"[0]'),
            (json.dumps({'inputs': ['a'] * (inference.MAX_BATCH + 1)}), 'application/json', 400,
             'at most'),
            ('{"inputs": ["a"], "pooling": "max"}', 'application/json', 400, 'pooling'),
            ('[' * 100000 + ']' * 100000, 'application/json', 400, 'nests too deeply')):
        code, text = _status(inference.input_fn, body, content_type)
        assert code == status and message in text, (body, code, text)
    long = inference.input_fn(json.dumps({'inputs': ['word ' * 40]}), 'application/json')
    code, text = _status(inference.predict_fn, long, model)
    assert code == 413 and 'at most 32' in text
    code, text = _status(inference.output_fn, {'labels': []}, 'text/csv')
    assert code == 406
    for accept in ('application/json, text/plain', 'text/plain;q=0.5, application/*',
                   'text/html, */*;q=0.1', 'Application/JSON; charset=utf-8'):
        assert json.loads(inference.output_fn({'labels': []}, accept)) == {'labels': []}, accept


@pytest.mark.backend_dependent
def test_encoder_handler_gives_mean_pooled_embeddings(tiny_pretrained):
    model = inference.model_fn(str(tiny_pretrained))
    data = inference.input_fn(json.dumps({'inputs': ['a crane is flying', 'the bird']}),
                              'application/json')
    answer = json.loads(inference.output_fn(inference.predict_fn(data, model), '*/*'))
    net, vocab, config = from_pretrained(str(tiny_pretrained))
    expected = encode_batch(net, ['a crane is flying', 'the bird'], vocab,
                            max_len=config.max_len, pooling='mean')
    assert_close(onp.array(answer['embeddings']), expected)


@pytest.mark.slow
@pytest.mark.backend_dependent
@pytest.mark.parametrize('engine', ['mxnet', 'onnxruntime', 'openvino'])
def test_model_server_answers_and_refuses_alike_on_every_engine(classifier_folder, engine,
                                                                tmp_path):
    """SageMaker's MXNet serving container (multi-model-server, Java) on
    127.0.0.1, serving the fine-tuned folder through code/inference.py with
    BERT_GLUON_ENGINE set: the in-process handlers' answers, the same
    refusals; stopped as SageMaker stops a container, with no process left."""
    folder, _ = classifier_folder
    expected = _answers(folder, 'mxnet')
    endpoint = LocalEndpoint(folder, threads=1, work_dir=tmp_path, start_timeout=180,
                             engine=engine)
    try:
        answers = [endpoint.predict(request) for request in REQUESTS[:2]]
        assert set(answers[0]['labels']) <= {'not_entailment', 'entailment'}
        _same_answers(answers, expected, 1e-5)
        for payload, content_type, status in (('a,b', 'text/csv', 415),
                                              ('{"inputs": []}', 'application/json', 400),
                                              (json.dumps({'inputs': ['w ' * 40]}),
                                               'application/json', 413)):
            code, body = endpoint.invoke(payload, content_type)
            assert code == status, (payload, code, body[-500:])
        with pytest.raises(RuntimeError, match='a model server already runs'):
            LocalEndpoint(folder, work_dir=tmp_path / 'second')
    finally:
        endpoint.close()
    left = endpoint.processes()
    subprocess.run(['pkill', '-9', '-f', str(endpoint.work_dir)], check=False)
    assert not left, f'model server processes left: {left}'


TOOLKIT_TRAIN = ('from sagemaker_training import environment\n'
                 'from sagemaker_mxnet_container import training\n'
                 'training.train(environment.Environment())\n')


def _toolkit_job(root, host, hosts, hyperparameters):
    """A SageMaker training container's layout under root/host (what
    sagemaker-training reads); the env to run its toolkit with."""
    base = root / host
    for sub in ('input/config', 'input/data', 'model', 'output'):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / 'input' / 'data' / 'training').symlink_to(Path(os.environ['BERT_GLUON_DATA']).resolve())
    src = root / 'src'
    src.mkdir(exist_ok=True)
    (src / 'train.py').write_text('from bert_gluon.serving.train import main\nmain()\n')
    hp = dict(hyperparameters, sagemaker_program='train.py',
              sagemaker_submit_directory=str(src), sagemaker_region='us-east-1')
    (base / 'input/config/hyperparameters.json').write_text(
        json.dumps({k: json.dumps(v) for k, v in hp.items()}))
    (base / 'input/config/resourceconfig.json').write_text(
        json.dumps({'current_host': host, 'hosts': hosts}))
    (base / 'input/config/inputdataconfig.json').write_text(
        json.dumps({'training': {'TrainingInputMode': 'File'}}))
    return dict(os.environ, SAGEMAKER_BASE_DIR=str(base), AWS_DEFAULT_REGION='us-east-1',
                AWS_EC2_METADATA_DISABLED='true', SM_STUDIO_LOCAL_MODE='true',
                OMP_NUM_THREADS='1',
                PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ['PATH']]))


JOB = {'job': 'pretrain', 'steps': 4, 'batch-size': 16, 'max-len': 32}


@pytest.mark.backend_dependent
@pytest.mark.parametrize('engine', ['mxnet', 'onnxruntime', 'openvino'])
def test_handler_service_in_process_equals_the_python_api(classifier_folder, tmp_path,
                                                         monkeypatch, engine):
    """SageMaker's MXNet serving handler service, in this process, loads
    code/inference.py and answers with the Python API's numbers, on every
    engine (BERT_GLUON_ENGINE)."""
    monkeypatch.setenv('BERT_GLUON_ENGINE', engine)
    from mms.context import Context, RequestProcessor
    from sagemaker_mxnet_serving_container.handler_service import HandlerService
    from bert_gluon.serving.train import INFERENCE_ENTRY
    folder, trained = classifier_folder
    model = tmp_path / 'model'
    (model / 'code').mkdir(parents=True)
    for item in folder.iterdir():
        if item.is_file():
            (model / item.name).write_bytes(item.read_bytes())
    (model / 'code' / 'inference.py').write_text(INFERENCE_ENTRY)
    monkeypatch.setenv('SAGEMAKER_PROGRAM', 'inference.py')
    monkeypatch.syspath_prepend(str(model / 'code'))
    monkeypatch.delitem(sys.modules, 'inference', raising=False)
    context = Context('model', str(model), {}, 1, None, '1.1.11')
    service = HandlerService()
    service.initialize(context)
    context.request_processor = [RequestProcessor({'Content-Type': 'application/json',
                                                   'Accept': 'application/json'})]
    out = service.handle([{'body': json.dumps({'inputs': PAIRS}).encode()}], context)
    answer = json.loads(out[0])
    from bert_gluon.data.pairs import encode_pairs
    net, vocab, _ = load_classifier(folder)
    arrays = [mx.np.array(a) for a in encode_pairs([tuple(p) for p in PAIRS], vocab, 32)]
    expected = mx.npx.softmax(trained(*arrays), axis=-1).asnumpy()
    assert_close(onp.array(answer['probabilities']), expected, atol=1e-5)
    context.request_processor = [RequestProcessor({'Content-Type': 'text/csv'})]
    service.handle([{'body': b'a,b'}], context)
    assert context.get_response_status(0)[0] == 415


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_sagemaker_training_toolkit_runs_the_entry_point(tmp_path):
    """SageMaker's MXNet training toolkit runs the entry point offline; the
    model folder it leaves deploys as it is (code/inference.py)."""
    env = _toolkit_job(tmp_path, 'algo-1', ['algo-1'], JOB)
    out = subprocess.run([sys.executable, '-c', TOOLKIT_TRAIN], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    model = tmp_path / 'algo-1' / 'model'
    for name in ('pretrained.params', 'config.json', 'vocab.json', 'code/inference.py'):
        assert (model / name).is_file(), name
    metrics = json.loads((model / 'metrics.json').read_text())
    assert metrics['steps'] == 4 and metrics['kvstore'] == 'device'
    served = inference.model_fn(str(model))
    data = inference.input_fn('{"inputs": ["a crane is flying"]}', 'application/json')
    assert len(inference.predict_fn(data, served)['embeddings'][0]) == 128


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_sagemaker_parameter_server_distribution_on_two_hosts(tmp_path):
    """Two 'hosts' on loopback (127.0.0.1 and 127.0.0.2) under SageMaker's
    own parameter_server launch: the toolkit starts the scheduler and a
    server per host and sets DMLC_*; the entry point trains as one of two
    dist_sync workers; the chief alone writes the model."""
    hosts = ['127.0.0.1', '127.0.0.2']
    port = free_port()
    job = dict(JOB, sagemaker_parameter_server_enabled=True, _ps_port=str(port))
    procs = []
    for host in hosts:
        # ps-lite advertises this address (a SageMaker host has its own; here
        # every role is on the loopback interface)
        env = dict(_toolkit_job(tmp_path, host, hosts, job), DMLC_NODE_HOST='127.0.0.1')
        procs.append(subprocess.Popen([sys.executable, '-c', TOOLKIT_TRAIN], env=env,
                                      cwd=tmp_path / host, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:  # the toolkit's scheduler and servers, if the job failed
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(['pkill', '-f', f'DMLC_PS_ROOT_PORT={port}'], check=False)
    assert all(p.returncode == 0 for p in procs), '\n'.join(o[-2000:] for o in outputs)
    written = [h for h in hosts if (tmp_path / h / 'model' / 'pretrained.params').exists()]
    assert len(written) == 1
    metrics = json.loads((tmp_path / written[0] / 'model' / 'metrics.json').read_text())
    assert metrics['kvstore'] == 'dist_sync' and metrics['workers'] == 2


def test_local_endpoint_refuses_a_folder_that_is_not_there(tmp_path):
    with pytest.raises(ValueError, match='model_dir: .*nothing here is not a folder'):
        LocalEndpoint(tmp_path / 'nothing here')


@pytest.mark.backend_dependent
@pytest.mark.parametrize('engine, precision', [('onnxruntime', 'float32'),
                                               ('openvino', 'float32'),
                                               ('openvino', 'bfloat16'),
                                               ('onnxruntime', 'int8'),
                                               ('openvino', 'int8'),
                                               ('mxnet', 'bfloat16')])
def test_every_engine_answers_the_same_requests_with_the_same_numbers(
        classifier_folder, tiny_pretrained, engine, precision):
    """A classifier folder and an encoder folder, three kinds of request:
    the answers of onnxruntime and OpenVINO equal MXNet's (float32 to 1e-5,
    bf16 and int8 within their tolerances)."""
    from conftest import tolerance
    from bert_gluon.execution import resolve_implementation
    atol = tolerance(precision)
    if (engine, precision) == ('mxnet', 'bfloat16') and \
            resolve_implementation(None, [mx.cpu()]) != 'native':
        # MXNet's operators (BERT_GLUON_NATIVE=0, a GPU) have no bf16 products: refused
        with pytest.raises(ValueError, match="dtype='bfloat16' cannot run here"):
            _answers(tiny_pretrained, engine, precision)
        return
    for folder in (classifier_folder[0], tiny_pretrained):
        _same_answers(_answers(folder, engine, precision), _answers(folder, 'mxnet'), atol)


@pytest.mark.backend_dependent
def test_openvino_asked_for_bf16_where_it_cannot_says_so_and_answers_float32(tiny_pretrained):
    """oneDNN held to AVX2 (a CPU without bf16): OpenVINO's bf16 would not
    even compile there; the engine says once that it runs float32, and its
    answers equal OpenVINO's float32 ones."""
    script = f"""
import warnings
import numpy as np
from bert_gluon.serving.engines import load_model
from bert_gluon.tokenization import load_tokenizer
folder = {str(tiny_pretrained)!r}
f32 = load_model(folder, 'openvino', 'float32')
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter('always')
    bf16 = load_model(folder, 'openvino', 'bfloat16')
    again = load_model(folder, 'openvino', 'bfloat16')
print('NOTICES', len(said), [str(w.message) for w in said])
inputs = f32.tokenizer.encode_pairs([('a crane is flying', None), ('the bird', 'a crane')], 16)
a, b = f32.run(*inputs), bf16.run(*inputs)
print('MAXDIFF', max(float(np.abs(a[k] - b[k]).max()) for k in a))
"""
    from conftest import run_script
    out = run_script(script, ONEDNN_MAX_CPU_ISA='AVX2', MKL_ENABLE_INSTRUCTIONS='AVX2')
    assert out.returncode == 0, out.stderr[-3000:]
    notices = next(line for line in out.stdout.splitlines() if line.startswith('NOTICES'))
    assert notices.startswith('NOTICES 1 '), out.stdout
    assert ("precision='bfloat16' on engine='openvino' runs float32 here: "
            'ONEDNN_MAX_CPU_ISA=AVX2') in notices
    diff = float(next(line for line in out.stdout.splitlines()
                      if line.startswith('MAXDIFF')).split()[1])
    assert diff == 0.0  # the same float32 graph


def test_engines_refuse_unknown_names_and_missing_extras(tiny_pretrained, monkeypatch):
    import importlib
    from bert_gluon.serving.engines import check_engine, load_model
    with pytest.raises(ValueError, match=r"engine must be one of \('mxnet', 'onnxruntime', "
                                         r"'openvino'\), got 'tensorrt'"):
        load_model(str(tiny_pretrained), 'tensorrt')
    with pytest.raises(ValueError, match="precision must be one of"):
        check_engine('mxnet', 'float16')
    with pytest.raises(ValueError, match="onnxruntime's CPU provider runs this model in float32"):
        check_engine('onnxruntime', 'bfloat16')
    real = importlib.import_module

    def without_openvino(name, *args, **kwargs):
        if name == 'openvino':
            raise ImportError('No module named openvino')
        return real(name, *args, **kwargs)
    monkeypatch.setattr(importlib, 'import_module', without_openvino)
    with pytest.raises(ValueError, match=r"engine='openvino' needs openvino: pip install "
                                         r"'bert_gluon\[openvino\]'"):
        load_model(str(tiny_pretrained), 'openvino')
    with pytest.raises(ValueError, match='engine must be one of'):
        LocalEndpoint(tiny_pretrained, engine='tensorrt')


@pytest.mark.slow
@pytest.mark.backend_dependent
def test_the_onnx_engines_cache_their_model_beside_the_weights(tiny_pretrained, tmp_path,
                                                               monkeypatch):
    """Built on the first load, read on the next; rebuilt when the weights
    change; a cached file that does not match its SHA-1 is refused."""
    import shutil
    import bert_gluon.onnx_export as onnx_export
    from bert_gluon.serving.engines import load_model
    folder = tmp_path / 'model'
    shutil.copytree(tiny_pretrained, folder)
    load_model(str(folder), 'onnxruntime')
    cached = folder / 'onnx' / 'model.onnx'
    assert cached.is_file() and (folder / 'onnx' / 'model.json').is_file()
    built = cached.stat().st_mtime_ns
    monkeypatch.setattr(onnx_export, 'export_onnx', lambda *a, **k: pytest.fail('rebuilt'))
    load_model(str(folder), 'openvino')  # the same file, for the other engine too
    monkeypatch.undo()
    net, _, _ = from_pretrained(str(folder))
    net.encoder.token_embedding.weight.set_data(net.encoder.token_embedding.weight.data() + 1)
    net.save_parameters(str(folder / 'pretrained.params'))
    load_model(str(folder), 'onnxruntime')
    assert cached.stat().st_mtime_ns != built
    cached.write_bytes(cached.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r'model.onnx is corrupt .*delete .*onnx to rebuild'):
        load_model(str(folder), 'onnxruntime')
    # a registered checkpoint's folder belongs to its package: the ONNX goes to the cache
    from bert_gluon.pretrained import minilm_folder
    monkeypatch.setenv('BERT_GLUON_CACHE', str(tmp_path / 'cache'))
    load_model('all-MiniLM-L6-v2', 'onnxruntime')
    assert not (minilm_folder() / 'onnx').exists()
    assert list((tmp_path / 'cache').glob('onnx/*/model.onnx'))


@pytest.mark.backend_dependent
def test_a_broken_onnx_cache_is_named_and_built_again(tiny_pretrained, tmp_path, monkeypatch):
    """A model.json of another shape is named and rebuilt; temporary files of
    a killed build are removed by the next build (a fresh one, perhaps
    another process's, is kept); a corrupt ONNX in a read-only folder is
    built again in the package cache instead of asking for a deletion that
    cannot be done there."""
    import os
    import shutil
    import time
    from bert_gluon.serving import engines
    folder = tmp_path / 'model'
    shutil.copytree(tiny_pretrained, folder)
    engines.load_model(str(folder), 'onnxruntime')
    onnx_dir = folder / 'onnx'
    (onnx_dir / 'model.json').write_text('[1, 2]')
    stale, fresh = onnx_dir / '.model.onnx.killed.tmp', onnx_dir / '.model.onnx.running.tmp'
    for path in (stale, fresh):
        path.write_bytes(b'half an ONNX')
    os.utime(stale, (time.time() - 7200,) * 2)
    with pytest.warns(UserWarning, match=r'model.json holds list, not the record'):
        engines.load_model(str(folder), 'onnxruntime')
    assert isinstance(json.loads((onnx_dir / 'model.json').read_text()), dict)
    assert not stale.exists() and fresh.exists()
    model = onnx_dir / 'model.onnx'
    model.write_bytes(model.read_bytes()[:-10])
    monkeypatch.setenv('BERT_GLUON_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(engines, '_writable', lambda place: place != onnx_dir)  # read-only
    with pytest.warns(UserWarning, match='read-only: building it in the package cache'):
        served = engines.load_model(str(folder), 'onnxruntime')
    assert list((tmp_path / 'cache').glob('onnx/*/model.onnx'))
    tokens = onp.array([[2, 5, 3]], dtype='int32')
    answer = served.run(tokens, onp.zeros_like(tokens), onp.array([3.0], dtype='float32'))
    assert answer['last_hidden_state'].shape[:2] == (1, 3)
