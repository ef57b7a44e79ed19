"""A local endpoint: SageMaker's MXNet serving container (its
multi-model-server, Java) on 127.0.0.1, serving a model folder through this
package's handlers, as a SageMaker endpoint would, before paying for one.

    with LocalEndpoint('runs/mrpc') as endpoint:
        endpoint.predict({'inputs': [['A man plays.', 'Someone plays.']]})

Needs `sagemaker-mxnet-inference` and `multi-model-server` (the README's
set-up installs them) and Java on the PATH.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..processes import free_port, start_process, stop_processes

__all__ = ['LocalEndpoint']

# what a model folder may hold that the endpoint does not serve
_NOT_SERVED = ('checkpoints', 'code', '*.onnx', '*.lock')  # onnx/: the engines' cache goes along


def _model_servers():
    """Command lines of the model-server processes running on this machine."""
    out = subprocess.run(['pgrep', '-af', 'com.amazonaws.ml.mms|mms/model_service_worker'],
                         capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if 'pgrep' not in line]


class LocalEndpoint:
    """SageMaker's serving container for `model_dir` (a `pretrain` or
    `finetune` output, or a Hugging Face BERT folder), started in its own
    session on 127.0.0.1:`port`; `close()` (or leaving the `with`) stops it
    as SageMaker stops a container (SIGTERM) and leaves no process behind.
    One at a time per machine, as SageMaker's serving toolkit allows.

    work_dir holds the container's tree (model/, with code/inference.py,
    and server.log); a temporary folder when not given. threads is the
    worker's OMP_NUM_THREADS (inherited when None). engine and precision:
    what answers (serving/engines.py), as BERT_GLUON_ENGINE and
    BERT_GLUON_PRECISION in the container's environment."""

    def __init__(self, model_dir, port=None, threads=None, workers=1, work_dir=None,
                 start_timeout=300, engine='mxnet', precision='float32'):
        from .engines import check_engine
        from .train import INFERENCE_ENTRY
        check_engine(engine, precision)
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ValueError(f'model_dir: {model_dir} is not a folder (expected a pretrain '
                             'or finetune output, or a Hugging Face BERT folder)')
        if shutil.which('java') is None:
            raise RuntimeError('the model server needs Java (a JRE 11 or newer) on the PATH')
        running = _model_servers()
        if running:  # SageMaker's toolkit shares one config file and finds "the" server by name
            raise RuntimeError('a model server already runs on this machine (SageMaker\'s '
                               'serving toolkit takes one per machine): close it first; '
                               f'running: {running[0][:200]}')
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix='bert-gluon-endpoint-')).resolve()
        model = self.work_dir / 'model'
        if model.exists():
            shutil.rmtree(model)
        shutil.copytree(model_dir, model, ignore=shutil.ignore_patterns(*_NOT_SERVED))
        (model / 'code').mkdir()
        (model / 'code' / 'inference.py').write_text(INFERENCE_ENTRY)
        self.port = port or free_port()
        self.log_path = self.work_dir / 'server.log'
        env = dict(os.environ, SAGEMAKER_BASE_DIR=str(self.work_dir),
                   SAGEMAKER_PROGRAM='inference.py', SAGEMAKER_BIND_TO_PORT=str(self.port),
                   SAGEMAKER_MODEL_SERVER_WORKERS=str(workers),
                   BERT_GLUON_ENGINE=engine, BERT_GLUON_PRECISION=precision,
                   # multi-model-server is a command of this interpreter's environment
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ['PATH']]))
        if threads is not None:
            env['OMP_NUM_THREADS'] = str(threads)
        with open(self.log_path, 'w') as log:
            self._process = start_process(  # ends if this process dies
                [sys.executable, '-c',
                 'from sagemaker_mxnet_serving_container import serving; serving.main()'],
                env=env, cwd=self.work_dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                with urllib.request.urlopen(f'{self.url}/ping', timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        state = ('exited with status %d' % self._process.returncode
                 if self._process.poll() is not None else f'did not answer in {timeout} s')
        raise RuntimeError(f'the model server {state}; the end of {self.log_path}:\n'
                           + self.log_path.read_text()[-3000:])

    @property
    def url(self):
        return f'http://127.0.0.1:{self.port}'

    def invoke(self, body, content_type='application/json', accept=None, timeout=300):
        """POST /invocations as SageMaker's runtime does: (status, text),
        errors included."""
        headers = {'Content-Type': content_type}
        if accept:
            headers['Accept'] = accept
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(f'{self.url}/invocations', data=data, method='POST',
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def predict(self, request, timeout=300):
        """The JSON answer to a JSON request (a dict), or a RuntimeError with
        the endpoint's status and message."""
        status, text = self.invoke(json.dumps(request), timeout=timeout)
        if status != 200:
            raise RuntimeError(f'the endpoint answered {status}: {text}')
        return json.loads(text)

    def processes(self):
        """The model server's processes still alive (its Java frontend and
        Python workers), by their command lines."""
        return [line for line in _model_servers() if str(self.work_dir / 'model') in line]

    def close(self, timeout=60):
        """Stop the container (SIGTERM, which the toolkit passes on to the
        model server) and wait for its processes to end; kill what is left."""
        stop_processes([self._process], grace=timeout)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.processes():
            time.sleep(0.5)
        for line in self.processes():
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
