"""The one training loop: any list of contexts, progress, checkpoints, exact
resume. Pretraining (`pretraining.py`) and fine-tuning (`finetuning.py`) plug
a task into it.

Exactness: the batch order of epoch e is a permutation drawn from (seed, e);
MXNet's RNG (dropout) is re-seeded from (seed, step) before every step; the
trainer's states and the stream's position go into every checkpoint. So a
run killed after a checkpoint and resumed follows the same trajectory as one
that never stopped.
"""
import math
import time
import warnings

import numpy as onp
import mxnet as mx
from mxnet import autograd, gluon

from .config import TRAINING_DTYPES, check_positive_int

__all__ = ['BatchStream', 'TrainLoop', 'parse_contexts', 'check_run_arguments']


def parse_contexts(spec):
    """'cpu' / 'cpu:0,cpu:1' / 'gpu:0,gpu:1' / a list of Contexts -> list,
    each device once, GPUs only where this MXNet build sees them."""
    if spec is None:
        return [mx.cpu()]
    if isinstance(spec, mx.Context):
        contexts = [spec]
    elif isinstance(spec, (list, tuple)) and all(isinstance(c, mx.Context) for c in spec):
        if not spec:
            raise ValueError('ctx: expected at least one context')
        contexts = list(spec)
    else:
        contexts = []
        for part in str(spec).split(','):
            kind, _, index = part.strip().partition(':')
            if kind not in ('cpu', 'gpu') or (index and not index.isdigit()):
                raise ValueError(f"ctx: expected e.g. 'cpu', 'cpu:0,cpu:1' or "
                                 f"'gpu:0,gpu:1', got {spec!r}")
            contexts.append(getattr(mx, kind)(int(index or 0)))
    seen = set()
    for c in contexts:
        if (c.device_type, c.device_id) in seen:
            raise ValueError(f'ctx: {c} is listed twice; list each device once')
        seen.add((c.device_type, c.device_id))
    gpus = [c for c in contexts if c.device_type == 'gpu']
    if gpus:
        visible = mx.context.num_gpus()
        if max(c.device_id for c in gpus) >= visible:
            raise ValueError(
                f'ctx: {", ".join(map(str, gpus))} asked for, but this MXNet build '
                f'sees {visible} GPU(s)' + ('' if visible else
                                            ' (a CPU build: on a GPU machine, '
                                            'pip install mxnet-cu112==1.9.1)'))
    return contexts


def check_run_arguments(lr, dtype=None, **counts):
    """A run's learning rate (finite, > 0), products' precision (one that
    trains, or None: the model's) and counts (positive ints)."""
    if dtype is not None and dtype not in TRAINING_DTYPES:
        raise ValueError(f'dtype must be one of {TRAINING_DTYPES} for training, got {dtype!r}'
                         + (": int8 quantizes a trained model's inference; train in float32 "
                            "or bfloat16, then load it with dtype='int8'"
                            if dtype == 'int8' else ''))
    for name, value in counts.items():
        check_positive_int(name, value)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f'lr must be a finite number > 0, got {lr!r}')


class BatchStream:
    """Batches of a dataset's arrays in a seeded order, epoch after epoch.

    The last partial batch of an epoch is dropped (the book keeps it): every
    step then has the same shape, which static-shape graphs want. The state
    is (epoch, cursor): two ints, all a checkpoint needs.
    """
    def __init__(self, arrays, batch_size, seed=0, on_epoch=None):
        n = len(arrays[0])
        check_positive_int('batch_size', batch_size)
        if batch_size > n:
            raise ValueError(f'batch_size {batch_size} exceeds the dataset '
                             f'size {n}')
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.on_epoch = on_epoch  # called with the epoch before its first batch
        self.epoch, self.cursor = 0, 0
        self._order = None

    @property
    def batches_per_epoch(self):
        return len(self.arrays[0]) // self.batch_size

    def _start_epoch(self):
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        rng = onp.random.default_rng([self.seed, self.epoch])
        self._order = rng.permutation(len(self.arrays[0]))

    def next(self):
        if self.cursor >= self.batches_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = None
        if self._order is None:
            self._start_epoch()
        idx = self._order[self.cursor * self.batch_size:
                          (self.cursor + 1) * self.batch_size]
        self.cursor += 1
        return [a[idx] for a in self.arrays]

    def state(self):
        return {'epoch': self.epoch, 'cursor': self.cursor}

    def load_state(self, state):
        self.epoch, self.cursor = int(state['epoch']), int(state['cursor'])
        self._order = None


class TrainLoop:
    """Runs `task` for `num_steps` steps on `ctx_list`, checkpointing.

    task.shard_loss(net, shard, totals) -> (loss to backward, dict of
    on-device metric sums); `totals` are host-side batch totals from
    task.batch_totals(batch), so shard losses add up to the one-device loss.
    run_args: the arguments that shape the trajectory (batch size, lr, seed,
    ...); a checkpoint made under others is not resumed.
    cluster: this process's place in a multi-worker job (distributed.py):
    every worker draws the global batch and trains on its rows; only the
    chief (rank 0) writes checkpoints and shows progress.
    """
    def __init__(self, net, task, stream, trainer, ctx_list, checkpointer,
                 run_args, checkpoint_every=None, progress=True, log_every=10,
                 ignore_stale_grad=False, cluster=None):
        from .distributed import Cluster
        self.net, self.task, self.stream, self.trainer = net, task, stream, trainer
        self.ctx_list = ctx_list
        self.cluster = cluster or Cluster('device')
        self.checkpointer = checkpointer
        self.run_args = dict(run_args)
        self.seed = int(run_args.get('seed', 0))
        self.checkpoint_every = checkpoint_every
        self.progress, self.log_every = progress, log_every
        self.step = 0
        self.history = {}  # metric name -> per-step values
        self.train_seconds = 0.0
        self.examples = 0
        self.extra = {}  # the task's own JSON state (e.g. dev metrics per epoch)
        self.ignore_stale_grad = ignore_stale_grad
        self.resumed_from = None

    def state(self):
        plan = getattr(self.net, 'plan', None)
        return {'stream': self.stream.state(), 'history': self.history,
                'train_seconds': self.train_seconds, 'examples': self.examples,
                'run': self.run_args, 'extra': self.extra,
                'plan': plan.to_dict() if plan else None}

    def _check_same_plan(self, saved):
        """A resume is exact only where the products run as they did: say
        so when the checkpoint's plan (implementation, precision, provider)
        is not this process's."""
        plan = getattr(self.net, 'plan', None)
        if not saved or plan is None:
            return
        fields = ('implementation', 'precision', 'provider')
        then, now = ([str(p.get(f)) for f in fields] for p in (saved, plan.to_dict()))
        if then != now:
            warnings.warn(f'resuming a run whose products ran as {"/".join(then)} on '
                          f'{"/".join(now)}: the steps from here are not bit-for-bit '
                          'those of an uninterrupted run (BERT_GLUON_FLOAT32_PROVIDER / '
                          'BERT_GLUON_BF16_PROVIDER choose the provider)')

    def save(self):
        """Checkpoint (the chief; other workers hold the same state)."""
        if self.cluster.is_chief:
            self.checkpointer.save(self.step, self.net, self.trainer, self.state())

    def _check_same_run(self, state):
        saved = state.get('run', {'seed': state.get('seed')})
        changed = [f'{k}={self.run_args.get(k)!r} (the checkpoint has {v!r})'
                   for k, v in saved.items() if self.run_args.get(k) != v]
        if changed:
            raise ValueError('resume with the arguments the checkpoint was made '
                             'with: ' + ', '.join(changed) + '; or start a new run '
                             '(another out_dir, or overwrite)')

    def resume(self):
        """Continue from the newest intact checkpoint; False when there is none."""
        if not self.checkpointer.candidates():
            return False
        state = self.checkpointer.load(self.net, self.trainer, self.ctx_list,
                                       check=self._check_same_run,
                                       required=('step', 'stream', 'history', 'train_seconds',
                                                 'examples'))
        self.step = int(state['step'])
        self.stream.load_state(state['stream'])
        self.history = {k: list(v) for k, v in state['history'].items()}
        self.train_seconds = float(state['train_seconds'])
        self.examples = int(state['examples'])
        self.extra = state.get('extra', {})
        self.resumed_from = state['dir']
        self._check_same_plan(state.get('plan'))
        return True

    def _one_step(self, batch):
        # dropout of this step: a function of (seed, step) alone
        mx.random.seed((self.seed * 1000003 + self.step) % (2 ** 31))
        if hasattr(self.task, 'prepare'):
            batch = self.task.prepare(batch)
        totals = self.task.batch_totals(batch)  # of the global batch
        shards = [gluon.utils.split_and_load(onp.asarray(a), self.ctx_list, even_split=False)
                  for a in self.cluster.shard(batch)]
        with autograd.record():
            losses, metrics = [], []
            for shard in zip(*shards):
                loss, sums = self.task.shard_loss(self.net, shard, totals)
                losses.append(loss)
                metrics.append(sums)
        for loss in losses:
            loss.backward()
        # losses are already normalized by the global totals: the step applies
        # the sum of every device's and worker's gradients
        self.trainer.step(self.cluster.step_scale(), ignore_stale_grad=self.ignore_stale_grad)
        names = list(metrics[0])
        sums = mx.np.stack([sum(m[k].as_in_ctx(mx.cpu()) for m in metrics) for k in names])
        sums = self.cluster.sum_metrics(sums)
        return {k: sums[i] / totals[k] for i, k in enumerate(names)}

    def _record(self, pending):
        """Move finished steps' metrics to the history; stop a diverged run."""
        for step, values in pending:
            for k, v in values.items():
                value = float(v)
                if not math.isfinite(value):
                    raise ValueError(
                        f'step {step}: the {k} loss is {value}: training diverged '
                        f'(lr={self.trainer.learning_rate}): try a lower lr. No '
                        'checkpoint holds a diverged step.')
                self.history.setdefault(k, []).append(value)

    def run(self, num_steps):
        """Train until `num_steps` steps are done; the history. The progress
        bar counts steps whose results have been computed (MXNet runs
        asynchronously: a step is queued before its predecessor ends)."""
        from tqdm.auto import tqdm
        bar = tqdm(total=num_steps, initial=self.step, unit='step', dynamic_ncols=True,
                   disable=not (self.progress and self.cluster.is_chief))
        pending = []  # (step, on-device metrics) not yet in the history
        start = time.perf_counter()
        while self.step < num_steps:
            batch = self.stream.next()
            pending.append((self.step + 1, self._one_step(batch)))
            self.examples += len(batch[0])
            self.step += 1
            if len(pending) > 1:  # the step before this one: finished, counted
                for v in pending[-2][1].values():
                    v.wait_to_read()
                bar.update(1)
            checkpoint = (self.checkpoint_every and self.step % self.checkpoint_every == 0)
            if len(pending) >= self.log_every or checkpoint or self.step == num_steps:
                self._record(pending)  # the host sync: every log_every steps
                bar.update(1)
                pending = []
                self.train_seconds += time.perf_counter() - start
                bar.set_postfix({k: f'{v[-1]:.3f}' for k, v in self.history.items()})
                if checkpoint:
                    self.save()
                start = time.perf_counter()
        bar.close()
        return self.history


def save_loss_plot(history, path, title):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in history.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
