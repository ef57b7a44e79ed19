"""Training on several processes and machines, on engines that exist.

kvstore (what `pretrain` and `finetune` take):
  'device', 'local'  one process, any list of contexts (gradients summed
                     across them on a device or the CPU)
  'dist_sync'        a worker of MXNet's parameter-server job (what
                     SageMaker's `parameter_server` distribution starts): the
                     DMLC_* variables come from `bert-gluon launch`
                     (`launch` below) or SageMaker's MXNet container
  'horovod'          a rank of a `horovodrun` job (SageMaker's MPI option)

Every worker builds the same data and draws the same global batch (same
seed), computes the loss of its share of the rows normalized by the global
batch's totals, and the engine sums the gradients: so N workers compute the
step one process computes on the combined batch. Parameters start equal
(the parameter server and Horovod both broadcast rank 0's); only rank 0
writes outputs and checkpoints (resuming needs them where every worker can
read them: a shared folder).

A process holds at most one distributed store: ps-lite hangs on a second.
"""
import os
import shlex
import signal
import socket
import sys
import time

import mxnet as mx
from mxnet import gluon

from .config import check_positive_int
from .processes import free_port, start_process, stop_processes

__all__ = ['KVSTORES', 'Cluster', 'connect', 'launch']

KVSTORES = ('device', 'local', 'dist_sync', 'horovod')
_METRICS_KEY = 999_999  # the parameter store's key for the metrics' sums
_connected = {}  # kind -> Cluster: one distributed store per process


class Cluster:
    """This process's place in a job: rank, number of workers, and the
    engine's trainer, gradient sums and metric sums."""
    def __init__(self, kind, rank=0, num_workers=1, kvstore=None):
        self.kind, self.rank, self.num_workers = kind, rank, num_workers
        self.kvstore = kvstore  # an MXNet KVStore, a name, or None (Horovod)
        self._metrics_ready = False

    @property
    def is_chief(self):
        """Rank 0: the worker that writes outputs, checkpoints and progress."""
        return self.rank == 0

    def check_batch_size(self, batch_size):
        """Refuse a global batch the workers cannot split evenly."""
        if batch_size % self.num_workers:
            raise ValueError(f'batch_size {batch_size} must be a multiple of the '
                             f'{self.num_workers} workers')

    def shard(self, batch):
        """This worker's rows of a global batch (host arrays)."""
        if self.num_workers == 1:
            return batch
        size = len(batch[0])
        self.check_batch_size(size)
        rows = slice(self.rank * size // self.num_workers,
                     (self.rank + 1) * size // self.num_workers)
        return [a[rows] for a in batch]

    def trainer(self, params, optimizer, optimizer_params):
        """A Trainer whose step sums the gradients of every worker and
        device (losses are already normalized by the global batch)."""
        if self.kind == 'horovod':
            import horovod.mxnet as hvd
            # DistributedTrainer averages over ranks (it divides by their
            # number): step_scale() makes up for it
            trainer = hvd.DistributedTrainer(params, optimizer, optimizer_params)
            hvd.broadcast_parameters(params, root_rank=0)
            return trainer
        if self.kind != 'dist_sync':
            return gluon.Trainer(params, optimizer, optimizer_params, kvstore=self.kvstore)
        # update_on_kvstore=False: every worker runs the optimizer on the
        # summed gradients, so its states can be saved and resumed
        trainer = gluon.Trainer(params, optimizer, optimizer_params, kvstore=self.kvstore,
                                update_on_kvstore=False)
        # Rank 0's parameters reach every worker now, not inside the first
        # step(): there, a worker's pull of a parameter could be served after
        # the gradients pushed under the same key were summed, and return
        # those instead (seen: about one loopback job in six diverged)
        trainer._init_kvstore()
        trainer._init_params()
        for param in trainer._params:
            for array in param.list_data():
                array.wait_to_read()
        self.barrier()
        return trainer

    def step_scale(self):
        """The batch_size argument of trainer.step() that applies the sum."""
        return 1.0 / self.num_workers if self.kind == 'horovod' else 1

    def sum_metrics(self, values):
        """The sum over workers of a small float32 array (on the CPU)."""
        if self.num_workers == 1:
            return values
        if self.kind == 'horovod':
            import horovod.mxnet as hvd
            return hvd.allreduce(values.as_nd_ndarray(), average=False,
                                 name='bert_gluon_metrics').as_np_ndarray()
        if not self._metrics_ready:
            self.kvstore.init(_METRICS_KEY, mx.nd.zeros(values.shape))
            self._metrics_ready = True
        out = values.as_nd_ndarray().copy()
        self.kvstore.push(_METRICS_KEY, out)  # the servers sum every worker's push
        self.kvstore.pull(_METRICS_KEY, out=out)
        return out.as_np_ndarray()

    def barrier(self):
        if self.kind == 'dist_sync':
            self.kvstore._barrier()
        elif self.kind == 'horovod':
            import horovod.mxnet as hvd
            hvd.allreduce(mx.nd.zeros(1), name='bert_gluon_barrier')


def connect(kvstore, ctx_list):
    """The Cluster for `kvstore` (see the module's docstring)."""
    if kvstore is None:
        if len(ctx_list) > 1:
            raise ValueError('kvstore=None with several contexts would never sum their '
                             "gradients: use 'device' or 'local'")
        return Cluster('device')
    if kvstore not in KVSTORES:  # MXNet would silently make a local store of it
        raise ValueError(f'kvstore must be one of {list(KVSTORES)}, got {kvstore!r}')
    if kvstore in ('device', 'local'):
        return Cluster(kvstore, kvstore=kvstore)
    if kvstore in _connected:
        return _connected[kvstore]
    if _connected:
        raise ValueError(f'kvstore={kvstore!r}: this process already joined a '
                         f'{next(iter(_connected))} job; one distributed store per process')
    if kvstore == 'dist_sync':
        missing = [k for k in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT',
                               'DMLC_NUM_SERVER', 'DMLC_NUM_WORKER') if k not in os.environ]
        if missing or os.environ['DMLC_ROLE'] != 'worker':
            raise ValueError("kvstore='dist_sync' runs as a worker of a parameter-server "
                             f'job: {missing or "DMLC_ROLE is not worker"}; start it with '
                             '`bert-gluon launch` or SageMaker\'s parameter_server distribution')
        store = mx.kv.create('dist_sync')
        cluster = Cluster('dist_sync', store.rank, store.num_workers, store)
    else:
        if len(ctx_list) != 1:
            raise ValueError("kvstore='horovod' runs one context per rank (Horovod sums "
                             f'the first context\'s gradients only), got {ctx_list}')
        try:
            import horovod.mxnet as hvd
        except ImportError as exc:
            raise ValueError("kvstore='horovod' needs Horovod built with MXNet: "
                             "pip install 'bert_gluon[horovod]' (docs/pretraining.md)") from exc
        hvd.init()
        cluster = Cluster('horovod', hvd.rank(), hvd.size())
    _connected[kvstore] = cluster
    return cluster


# ---- the launcher: scheduler, servers and workers, watched ----

def _is_local(host):
    return host in ('localhost', '127.0.0.1', socket.gethostname())


# ssh's exit status when it could not connect or log in (the command's own otherwise)
SSH_FAILED = 255


def _start(role, index, host, command, env, cwd, ssh_timeout):
    """A role's process in its own session (so the whole tree can be killed).
    Another host's over ssh: connecting gives up after `ssh_timeout` seconds,
    and never waits at a password prompt (BatchMode)."""
    if not _is_local(host):
        exports = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items()
                           if k.startswith('DMLC_') or k in ('OMP_NUM_THREADS',
                                                            'BERT_GLUON_DATA'))
        command = ['ssh', '-o', 'StrictHostKeyChecking=no', '-o', 'BatchMode=yes',
                   '-o', f'ConnectTimeout={ssh_timeout}', host,
                   f'cd {shlex.quote(cwd)} && env {exports} {shlex.join(command)}']
        env = dict(os.environ)
    proc = start_process(command, env=env, cwd=cwd)  # ends when the launcher dies
    print(f'bert-gluon launch: {role} {index} on {host}: pid {proc.pid}', file=sys.stderr,
          flush=True)
    return {'role': role, 'index': index, 'host': host, 'proc': proc}


def _describe(p, code):
    how = (f'was killed by {signal.Signals(-code).name}' if code < 0
           else f'exited with code {code}')
    if code == SSH_FAILED and not _is_local(p['host']):
        how += (f": ssh could not reach or log in to {p['host']} (unreachable, refused, "
                'timed out, or no key-based login)')
    return f"{p['role']} {p['index']} (pid {p['proc'].pid}, host {p['host']}) {how}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def launch(command, num_workers=2, num_servers=1, hosts=('127.0.0.1',), port=None,
           poll_seconds=0.2, env=None, ssh_timeout=20):
    """Run `command` (a list) as `num_workers` workers of a dist_sync job,
    with a scheduler and `num_servers` servers, on `hosts` (round robin;
    the scheduler on the first). Watches every process: when one fails, ends
    the whole job and raises RuntimeError naming it; returns 0 when every
    worker succeeded. Ctrl-C, SIGTERM or a command that cannot start (a
    ValueError) end the whole job too; if the launcher is killed outright,
    the kernel ends its children (processes.start_process). ssh_timeout:
    seconds ssh waits to connect to another host before the job ends."""
    if not command:
        raise ValueError('command: the training command each worker runs')
    check_positive_int('num_workers', num_workers)
    check_positive_int('num_servers', num_servers)
    check_positive_int('ssh_timeout', ssh_timeout)
    hosts = list(hosts) or ['127.0.0.1']
    root = hosts[0] if not _is_local(hosts[0]) else '127.0.0.1'
    base = dict(os.environ, **(env or {}))
    base.update(DMLC_PS_ROOT_URI=root, DMLC_PS_ROOT_PORT=str(port or free_port()),
                DMLC_NUM_SERVER=str(num_servers), DMLC_NUM_WORKER=str(num_workers))
    server_command = [sys.executable, '-c', 'import mxnet']  # serves until the job ends
    cwd = os.getcwd()
    processes = []

    def role_env(role, host):
        return dict(base, DMLC_ROLE=role,
                    DMLC_NODE_HOST='127.0.0.1' if _is_local(host) else host)

    def stop():
        stop_processes([p['proc'] for p in processes])
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed launcher ends its job
    try:
        processes.append(_start('scheduler', 0, hosts[0], server_command,
                                role_env('scheduler', hosts[0]), cwd, ssh_timeout))
        for i in range(num_servers):
            host = hosts[i % len(hosts)]
            processes.append(_start('server', i, host, server_command,
                                    role_env('server', host), cwd, ssh_timeout))
        for i in range(num_workers):
            host = hosts[i % len(hosts)]
            processes.append(_start('worker', i, host, list(command),
                                    role_env('worker', host), cwd, ssh_timeout))
        workers = [p for p in processes if p['role'] == 'worker']
        while True:
            for p in processes:
                code = p['proc'].poll()
                # a scheduler or server ends with 0 only once every worker finalized
                if code:
                    raise RuntimeError(f'{_describe(p, code)}: ended the whole job')
            if all(w['proc'].poll() == 0 for w in workers):
                deadline = time.monotonic() + 30
                while (time.monotonic() < deadline
                       and any(p['proc'].poll() is None for p in processes)):
                    time.sleep(poll_seconds)
                return 0
            time.sleep(poll_seconds)
    finally:  # whatever ends the watch (a failed role or start, Ctrl-C, SIGTERM): the job
        stop()
        signal.signal(signal.SIGTERM, previous)

