"""Pretraining BERT on WikiText-2, as the book's section "Pretraining BERT"
does it, through the one training loop.

    result = pretrain(num_steps=50, batch_size=512, max_len=64)

prints the book's closing lines (MLM loss, NSP loss averaged over the steps;
sentence pairs/sec on the devices), evaluates MLM loss/accuracy and NSP
accuracy on wiki.valid.tokens, and leaves in `out_dir`: pretrained.params,
vocab.json, config.json, metrics.json, loss.png and checkpoints/.
"""
import numpy as onp
import mxnet as mx

from .checkpoint import RunFolder
from .config import get_config
from .data.wikitext import load_wiki_pretraining
from .distributed import connect
from .fileio import atomic_write_json
from .loss import PretrainingLoss, PretrainingObjective
from .model import HybridBERTModel
from .pretrained import PRETRAINED_FILES, save_pretrained
from .represent import predicting
from .training import (BatchStream, TrainLoop, check_run_arguments, parse_contexts,
                       save_loss_plot)

# What a pretraining run writes into its folder (besides checkpoints/)
OUTPUTS = PRETRAINED_FILES + ('metrics.json', 'loss.png')

__all__ = ['PretrainingTask', 'evaluate_pretraining', 'pretrain']


class PretrainingTask:
    """The book's loss: weighted MLM cross-entropy over the real prediction
    slots of the whole batch + NSP cross-entropy, averaged over the batch.
    Model and loss run as one graph (PretrainingObjective)."""
    def __init__(self, hybridize=True):
        self.hybridize = hybridize
        self._objective = None

    def objective(self, net):
        if self._objective is None or self._objective.net is not net:
            self._objective = PretrainingObjective(net)
            if self.hybridize:
                self._objective.hybridize(static_alloc=True, static_shape=True)
        return self._objective

    @staticmethod
    def batch_totals(batch):
        return {'mlm': max(float(batch[4].sum()), 1e-8),
                'nsp': float(len(batch[0]))}

    def shard_loss(self, net, shard, totals):
        # shard: tokens, segments, valid_lens, positions, weights, mlm_Y, nsp_y
        mlm_sum, nsp_sum = self.objective(net)(*shard)
        loss = mlm_sum / totals['mlm'] + nsp_sum / totals['nsp']
        return loss, {'mlm': mlm_sum, 'nsp': nsp_sum}


def _check_dataset(dataset, config):
    """Check the whole dataset on the host once, so the model's per-call
    checks can be off while training."""
    if dataset.tokens.min() < 0 or dataset.tokens.max() >= config.vocab_size:
        raise ValueError(f'tokens: ids must be in [0, {config.vocab_size})')
    if dataset.max_len > config.max_len:
        raise ValueError(f'max_len {dataset.max_len} exceeds the config\'s '
                         f'max_len {config.max_len}')


def evaluate_pretraining(net, dataset, ctx=None, batch_size=512):
    """Held-out MLM loss and accuracy (over real slots) and NSP accuracy."""
    ctx = ctx or mx.cpu()
    loss = PretrainingLoss(backend=net.backend_request)
    model = predicting(net)
    arrays = dataset.arrays()
    sums = []  # per batch, on the device: one host sync at the end
    for start in range(0, len(dataset), batch_size):
        batch = [mx.np.array(a[start:start + batch_size], ctx=ctx) for a in arrays]
        tokens, segments, valid_lens, positions, weights, mlm_Y, nsp_y = batch
        _, mlm_Y_hat, nsp_Y_hat = model(tokens, segments, valid_lens, positions)
        mlm_l, _ = loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
        hits = (mlm_Y_hat.argmax(axis=-1) == mlm_Y.astype('int64')) * weights
        nsp_hits = (nsp_Y_hat.argmax(axis=-1) == nsp_y.astype('int64')).sum()
        sums.append(mx.np.stack([mlm_l, hits.sum(), nsp_hits.astype('float32')]))
    mlm_sum, mlm_correct, nsp_correct = mx.np.stack(sums).sum(axis=0).asnumpy()
    mlm_count = float(dataset.mlm_weights.sum())  # known on the host
    return {'valid_mlm_loss': float(mlm_sum) / mlm_count,
            'valid_mlm_accuracy': float(mlm_correct) / mlm_count,
            'valid_nsp_accuracy': float(nsp_correct) / len(dataset),
            'valid_pairs': len(dataset)}


def pretrain(num_steps=50, batch_size=512, max_len=64, lr=0.01,
             config='d2l.pretrain', ctx=None, out_dir='runs/pretrain',
             checkpoint_every=None, resume=False, overwrite=False, seed=0,
             data_dir=None, dynamic_masking=False, validate=True, hybridize=True,
             progress=True, backend=None, dtype=None, kvstore='device'):
    """Pretrain on WikiText-2; returns a dict with the model, vocab and figures.

    ctx: a Context, a list of them, or 'cpu:0,cpu:1' / 'gpu:0,gpu:1'.
    config: a config name or BERTConfig; vocab_size comes from the data.
    checkpoint_every: steps between checkpoints (default: num_steps // 5).
    resume: continue from out_dir's newest intact checkpoint; the arguments
      that shape the trajectory (batch_size, max_len, lr, config, seed,
      dynamic_masking) must be the checkpoint's. num_steps may grow.
    overwrite: replace a previous run's outputs in out_dir (without it, a
      fresh run refuses a used folder).
    dynamic_masking: draw fresh MLM masks every epoch (the book masks once).
    backend: 'auto' (None), 'native' or 'mxnet' (bert_gluon/execution.py).
    dtype: the products' precision, 'float32' or 'bfloat16' (default: the
      config's); parameters and optimizer states stay float32.
    kvstore: 'device' / 'local' (this process's contexts), 'dist_sync' or
      'horovod' (a worker of a multi-process job; batch_size is the global
      batch, split among the workers): bert_gluon/distributed.py.
    """
    check_run_arguments(lr, dtype, num_steps=num_steps, batch_size=batch_size,
                        max_len=max_len)
    ctx_list = parse_contexts(ctx)
    cluster = connect(kvstore, ctx_list)
    cluster.check_batch_size(batch_size)
    with RunFolder(out_dir, OUTPUTS, resume, overwrite, writer=cluster.is_chief) as folder:
        out_dir = folder.path
        train_set = load_wiki_pretraining(max_len, data_dir, 'train', seed=seed)
        config = get_config(config, vocab_size=len(train_set.vocab),
                            **({'dtype': dtype} if dtype else {}))
        _check_dataset(train_set, config)

        mx.random.seed(seed)
        net = HybridBERTModel(config, backend=backend)
        net.initialize(mx.init.Xavier(), ctx=ctx_list)
        net.check_inputs = False  # the dataset was checked whole above
        if hybridize:
            net.hybridize(static_alloc=True, static_shape=True)
        trainer = cluster.trainer(net.collect_params(), 'adam', {'learning_rate': lr})

        def remask(epoch):
            if dynamic_masking and epoch > 0:
                train_set.mask(onp.random.default_rng([seed, epoch, 1]))
        # mask() rewrites the arrays in place, so the stream sees new masks
        stream = BatchStream(train_set.arrays(), batch_size, seed, on_epoch=remask)
        run_args = {'batch_size': batch_size, 'max_len': max_len, 'lr': lr, 'seed': seed,
                    'config': config.to_dict(), 'dynamic_masking': dynamic_masking}
        loop = TrainLoop(net, PretrainingTask(hybridize), stream, trainer, ctx_list,
                         folder.checkpoints, run_args,
                         checkpoint_every or max(1, num_steps // 5), progress,
                         cluster=cluster)
        say = print if cluster.is_chief else (lambda *a: None)
        if resume and loop.resume():
            say(f'resumed at step {loop.step} from {loop.resumed_from}')
        elif resume:
            say(f'no checkpoint in {folder.checkpoints.folder}: starting at step 0')
        history = loop.run(num_steps)
        if loop.step % loop.checkpoint_every:  # the last step, unless just saved
            loop.save()

        mlm_l, nsp_l = onp.mean(history['mlm']), onp.mean(history['nsp'])
        pairs_per_sec = loop.examples / max(loop.train_seconds, 1e-9)
        where = ctx_list if cluster.num_workers == 1 else (
            f'{cluster.num_workers} {kvstore} workers x {ctx_list}')
        say(f'MLM loss {mlm_l:.3f}, NSP loss {nsp_l:.3f}')
        say(f'{pairs_per_sec:.1f} sentence pairs/sec on {where}')
        metrics = {'steps': loop.step, 'mlm_loss': mlm_l, 'nsp_loss': nsp_l,
                   'final_mlm_loss': history['mlm'][-1],
                   'final_nsp_loss': history['nsp'][-1],
                   'pairs_per_sec': pairs_per_sec, 'batch_size': batch_size,
                   'max_len': max_len, 'lr': lr, 'seed': seed,
                   'dynamic_masking': dynamic_masking, 'plan': net.plan.to_dict(),
                   'contexts': [str(c) for c in ctx_list], 'kvstore': kvstore,
                   'workers': cluster.num_workers}
        if not folder.writer:  # the chief evaluates and writes the outputs
            return {'net': net, 'vocab': train_set.vocab, 'config': config,
                    'history': history, 'metrics': metrics}
        if validate:
            valid_set = load_wiki_pretraining(max_len, data_dir, 'valid',
                                              vocab=train_set.vocab, seed=seed)
            metrics.update(evaluate_pretraining(net, valid_set, ctx_list[0]))
            print('valid: MLM loss {valid_mlm_loss:.3f}, MLM accuracy '
                  '{valid_mlm_accuracy:.3f}, NSP accuracy {valid_nsp_accuracy:.3f} '
                  '({valid_pairs} pairs)'.format(**metrics))
        save_loss_plot(history, out_dir / 'loss.png',
                       f'pretraining, batch {batch_size}, max_len {max_len}')
        save_pretrained(net, out_dir, train_set.vocab)
        atomic_write_json(out_dir / 'metrics.json', metrics)
        return {'net': net, 'vocab': train_set.vocab, 'config': config,
                'history': history, 'metrics': metrics}
