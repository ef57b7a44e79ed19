"""Several workers on loopback: MXNet's parameter server (dist_sync) and
Horovod give the one-process step; the launcher ends a job whose role dies,
leaving no process; a killed job resumes to the uninterrupted parameters."""
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as onp
import pytest

from bert_gluon.distributed import Cluster, connect
from bert_gluon.pretraining import pretrain

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402

pytestmark = pytest.mark.slow  # processes of their own: the fast subset leaves them out

WORKER = str(Path(__file__).with_name('dist_worker.py'))
ENV = dict(os.environ, OMP_NUM_THREADS='1',
           PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                       os.environ.get('PYTHONPATH', '')]))


def _params(path):
    return {k: v.asnumpy() for k, v in mx.npx.load(str(path)).items()}


def _launch(out_dir, *worker_args, servers=1, workers=2, timeout=300):
    """`bert-gluon launch` of dist_worker.py; (exit code, stdout + stderr, seconds)."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'launch', '--workers',
                          str(workers), '--servers', str(servers), '--', sys.executable,
                          WORKER, str(out_dir), 'dist_sync', *worker_args],
                         env=ENV, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - start


def _pids(stderr):
    return [int(p) for p in re.findall(r': pid (\d+)', stderr)]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    """The reference: one process, the combined batch."""
    out = tmp_path_factory.mktemp('single')
    result = pretrain(config=dist_worker.CONFIG, out_dir=out, **dist_worker.RUN)
    return {k: p.data().asnumpy() for k, p in result['net']._collect_params_with_prefix().items()}


@pytest.mark.backend_dependent
@pytest.mark.parametrize('servers', [1, 2])
def test_dist_sync_workers_equal_one_process(tmp_path, one_process, servers):
    code, stderr, _ = _launch(tmp_path, servers=servers)
    assert code == 0, stderr[-3000:]
    w0, w1 = _params(tmp_path / 'worker-0.params'), _params(tmp_path / 'worker-1.params')
    assert w0.keys() == w1.keys() == one_process.keys()
    for name, expected in one_process.items():
        onp.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
        onp.testing.assert_allclose(w0[name], expected, rtol=1e-5,
                                    atol=1e-5 * max(1, abs(expected).max()), err_msg=name)
    assert (tmp_path / 'pretrained.params').is_file()  # written by the chief


@pytest.mark.backend_dependent
@pytest.mark.parametrize('role', ['worker', 'server'])
def test_a_dead_role_ends_the_whole_job(tmp_path, role):
    """ps-lite alone waits forever for a dead worker; the launcher ends the
    job within 30 s, naming the role, and leaves no process of it."""
    args = ['1:3'] if role == 'worker' else []
    proc = subprocess.Popen([sys.executable, '-m', 'bert_gluon.cli', 'launch', '--workers', '2',
                             '--', sys.executable, WORKER, str(tmp_path), 'dist_sync', *args],
                            env=dict(ENV, BERT_GLUON_TEST_SLOW='1'), stderr=subprocess.PIPE,
                            text=True)
    stderr = ''
    if role == 'server':  # kill the server once the workers train
        while 'worker 1' not in stderr:
            stderr += proc.stderr.readline()
        time.sleep(8)
        server = int(re.search(r'server 0 on \S+: pid (\d+)', stderr).group(1))
        os.kill(server, signal.SIGKILL)
        killed_at = time.monotonic()
    else:
        killed_at = time.monotonic()
    _, rest = proc.communicate(timeout=120)
    stderr += rest
    assert proc.returncode != 0
    # (the launcher's worker numbers are its own: ps-lite ranks workers as they connect)
    assert re.search(rf'{role} [01] \(pid \d+, host \S+\) was killed by SIGKILL: ended the '
                     'whole job', stderr), stderr[-3000:]
    assert time.monotonic() - killed_at < 30 + (60 if role == 'worker' else 0)
    pids = _pids(stderr)
    assert len(pids) == 4  # scheduler, server, two workers
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)]


@pytest.mark.backend_dependent
def test_a_killed_job_resumes_to_the_uninterrupted_parameters(tmp_path, one_process):
    code, stderr, _ = _launch(tmp_path, '1:5')  # worker 1 dies at step 5
    assert code != 0 and 'worker 1' in stderr
    assert not (tmp_path / 'pretrained.params').exists()
    assert (tmp_path / 'checkpoints' / 'step-00000004').is_dir()
    code, output, _ = _launch(tmp_path, 'resume')
    assert code == 0, output[-3000:]
    assert 'resumed at step 4' in output, output[-3000:]
    resumed = _params(tmp_path / 'worker-0.params')
    for name, expected in one_process.items():
        onp.testing.assert_allclose(resumed[name], expected, rtol=1e-5,
                                    atol=1e-5 * max(1, abs(expected).max()),
                                    err_msg=f'{name}\n{output[-2000:]}')


def test_unknown_or_unsafe_kvstores_are_refused():
    with pytest.raises(ValueError, match="kvstore must be one of"):
        connect('dist_sync_device_typo', [mx.cpu()])
    with pytest.raises(ValueError, match='kvstore=None with several contexts'):
        connect(None, [mx.cpu(0), mx.cpu(1)])
    with pytest.raises(ValueError, match="kvstore='dist_sync' runs as a worker"):
        connect('dist_sync', [mx.cpu()])  # no DMLC_* variables: it would hang


def test_a_global_batch_the_workers_cannot_split_is_refused():
    two_workers = Cluster('dist_sync', rank=1, num_workers=2)
    with pytest.raises(ValueError, match='batch_size 5 must be a multiple of the 2 workers'):
        two_workers.check_batch_size(5)
    rows = two_workers.shard([onp.arange(6)])
    assert rows[0].tolist() == [3, 4, 5]


@pytest.mark.backend_dependent
def test_launch_needs_a_command():
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'launch'], env=ENV,
                         capture_output=True, text=True)
    assert out.returncode == 2 and 'the training command each worker runs' in out.stderr


@pytest.mark.backend_dependent
@pytest.mark.parametrize('flags, message', [
    (['--hosts', ''], 'argument --hosts: expected comma-separated host names, none empty'),
    (['--hosts', 'a,'], 'argument --hosts: expected comma-separated host names, none empty'),
    (['--port', '99999'], 'argument --port: expected a TCP port, 1 to 65535')])
def test_launch_refuses_bad_hosts_and_ports_before_starting_anything(flags, message):
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'launch', *flags, '--',
                          'true'], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]


@pytest.mark.backend_dependent
def test_a_command_that_cannot_start_ends_what_was_started():
    """`launch -- no-such-command`: the scheduler and server already started
    are stopped, and the error names the command."""
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'launch', '--',
                          'no-such-command', '--flag'], env=ENV, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot start 'no-such-command'" in out.stderr
    pids = _pids(out.stderr)
    assert len(pids) == 2  # the scheduler and the server
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)]


@pytest.mark.backend_dependent
def test_a_host_ssh_cannot_reach_ends_the_job_naming_it():
    """A worker on 192.0.2.1 (TEST-NET-1: routed nowhere): ssh gives up after
    --ssh-timeout, the job ends, the error names the host; what started
    locally is stopped."""
    started = time.monotonic()
    out = subprocess.run([sys.executable, '-m', 'bert_gluon.cli', 'launch', '--workers', '2',
                          '--hosts', '127.0.0.1,192.0.2.1', '--ssh-timeout', '2', '--',
                          sys.executable, '-c', 'import time; time.sleep(60)'],
                         env=ENV, capture_output=True, text=True, timeout=90)
    assert out.returncode == 1, out.stderr[-2000:]
    assert time.monotonic() - started < 45  # not ssh's default connect wait (minutes)
    assert re.search(r'host 192\.0\.2\.1\) exited with code 255: ssh could not reach or log in '
                     r'to 192\.0\.2\.1', out.stderr), out.stderr[-2000:]
    time.sleep(0.5)
    assert not [p for p in _pids(out.stderr) if _alive(p)]


@pytest.mark.backend_dependent
def test_a_launcher_killed_outright_takes_its_job_with_it(tmp_path):
    """SIGKILL gives the launcher no chance to clean up: the kernel ends its
    children (PR_SET_PDEATHSIG), so no role runs on unwatched."""
    proc = subprocess.Popen([sys.executable, '-m', 'bert_gluon.cli', 'launch', '--workers', '2',
                             '--', sys.executable, WORKER, str(tmp_path), 'dist_sync'],
                            env=dict(ENV, BERT_GLUON_TEST_SLOW='1'), stderr=subprocess.PIPE,
                            text=True)
    stderr = ''
    while 'worker 1' not in stderr:
        line = proc.stderr.readline()
        assert line, stderr
        stderr += line
    pids = _pids(stderr)
    assert len(pids) == 4
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [p for p in pids if _alive(p)]:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]


HOROVOD = importlib.util.find_spec('horovod') is not None


@pytest.mark.backend_dependent
@pytest.mark.skipif(not HOROVOD, reason='Horovod is an extra (README: pip install .[horovod])')
def test_horovod_ranks_equal_one_process(tmp_path, one_process):
    horovodrun = Path(sys.executable).with_name('horovodrun')
    out = subprocess.run([str(horovodrun), '--gloo', '-np', '2', '-H', 'localhost:2',
                          sys.executable, WORKER, str(tmp_path), 'horovod'],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    w0, w1 = _params(tmp_path / 'worker-0.params'), _params(tmp_path / 'worker-1.params')
    for name, expected in one_process.items():
        onp.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
        onp.testing.assert_allclose(w0[name], expected, rtol=1e-5,
                                    atol=1e-5 * max(1, abs(expected).max()), err_msg=name)
