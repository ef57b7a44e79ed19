"""Fine-tuning BERT on sentence-pair classification (book section "Natural
Language Inference: Fine-Tuning BERT"), through the one training loop.

    result = finetune('MRPC', pretrained='runs/pretrain', num_epochs=3)
"""
from pathlib import Path

import numpy as onp
import mxnet as mx
from mxnet import gluon

from .checkpoint import RunFolder
from .classifier import CLASSIFIER_FILES, BERTClassifier, save_classifier
from .data.pairs import TASKS, read_pairs
from .distributed import connect
from .fileio import atomic_write_json
from .pretrained import from_pretrained
from .represent import predicting
from .training import (BatchStream, TrainLoop, check_run_arguments, parse_contexts,
                       save_loss_plot)

__all__ = ['ClassificationTask', 'evaluate_classifier', 'classification_metrics', 'finetune']


def trim_padding(batch, multiple=16):
    """Cut the columns past the batch's longest pair (rounded up to
    `multiple`, so few shapes recur): padding never changes the outputs at
    valid positions, and sentence pairs are mostly far shorter than max_len."""
    tokens, segments, valid_lens = batch[:3]
    width = min(tokens.shape[1], -(-int(valid_lens.max()) // multiple) * multiple)
    return [tokens[:, :width], segments[:, :width], *batch[2:]]


class ClassificationTask:
    """Softmax cross-entropy averaged over the batch."""
    def __init__(self):
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    prepare = staticmethod(trim_padding)

    @staticmethod
    def batch_totals(batch):
        return {'loss': float(len(batch[0]))}

    def shard_loss(self, net, shard, totals):
        tokens, segments, valid_lens, labels = shard
        l_sum = self.loss(net(tokens, segments, valid_lens), labels).sum()
        return l_sum / totals['loss'], {'loss': l_sum}


def evaluate_classifier(net, arrays, ctx=None, batch_size=256):
    """Accuracy, and precision/recall/F1 of class 1 (GLUE's MRPC F1)."""
    ctx = ctx or mx.cpu()
    tokens, segments, valid_lens, labels = arrays
    model = predicting(net)
    predictions = []
    for start in range(0, len(labels), batch_size):
        batch = trim_padding([a[start:start + batch_size]
                              for a in (tokens, segments, valid_lens)])
        batch = [mx.np.array(a, ctx=ctx) for a in batch]
        predictions.append(model(*batch).argmax(axis=1).asnumpy())
    return classification_metrics(onp.concatenate(predictions), labels)


def classification_metrics(predicted, labels):
    """Accuracy, precision/recall/F1 of class 1 (GLUE's MRPC F1) and the
    majority class's accuracy, of predicted labels against true ones."""
    predicted = onp.asarray(predicted).astype(int)
    labels = onp.asarray(labels).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    precision = tp / max(int((predicted == 1).sum()), 1)
    recall = tp / max(int((labels == 1).sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    majority = max(onp.mean(labels == k) for k in onp.unique(labels))
    return {'accuracy': float(onp.mean(predicted == labels)), 'f1': f1,
            'precision': precision, 'recall': recall,
            'majority_baseline': float(majority), 'examples': len(labels)}


# What a fine-tuning run writes into its folder (besides checkpoints/)
OUTPUTS = CLASSIFIER_FILES + ('metrics.json', 'loss.png')


def finetune(task, pretrained, num_epochs=3, batch_size=32, max_len=128,
             lr=1e-4, freeze_encoder=False, ctx=None, out_dir='runs/finetune',
             checkpoint_every=None, resume=False, overwrite=False, seed=0,
             data_dir=None, hybridize=True, progress=True, dtype=None,
             kvstore='device'):
    """Fine-tune on `task` ('MRPC', 'RTE', 'SNLI'), reporting dev metrics
    after every epoch. `pretrained`: a folder from `pretrain` (or any
    `from_pretrained` name), or a (net, tokenizer) pair. resume / overwrite
    as in `pretrain`: a resumed run keeps task, pretrained, batch_size,
    max_len, lr, freeze_encoder, seed and dtype; num_epochs may grow.
    dtype: the products' precision, 'float32' or 'bfloat16' (default: the
    checkpoint config's). kvstore: as in `pretrain` (the chief, rank 0,
    evaluates and writes)."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {task!r}')
    check_run_arguments(lr, dtype, num_epochs=num_epochs, batch_size=batch_size,
                        max_len=max_len)
    ctx_list = parse_contexts(ctx)
    cluster = connect(kvstore, ctx_list)
    cluster.check_batch_size(batch_size)
    if isinstance(pretrained, (str, Path)):
        bert, tokenizer, _ = from_pretrained(pretrained, ctx=ctx_list,
                                             **({'dtype': dtype} if dtype else {}))
        source = str(pretrained)
    else:
        bert, tokenizer = pretrained
        source = 'a model passed in'
        if dtype and dtype != bert.config.dtype:
            raise ValueError(f'dtype={dtype!r}: the model passed in was built with '
                             f'dtype={bert.config.dtype!r}')
    if max_len > bert.config.max_len:
        raise ValueError(f'max_len {max_len} exceeds the model\'s max_len '
                         f'{bert.config.max_len}')

    def encode(split):
        first, second, labels = read_pairs(task, split, data_dir)
        arrays = tokenizer.encode_pairs(list(zip(first, second)), max_len)
        return list(arrays) + [onp.array(labels, dtype=onp.int32)]
    train, dev = encode('train'), encode('dev')

    with RunFolder(out_dir, OUTPUTS, resume, overwrite, writer=cluster.is_chief) as folder:
        mx.random.seed(seed)
        net = BERTClassifier(bert, num_outputs=len(TASKS[task][5]), labels=TASKS[task][5],
                             task=task, max_len=max_len)
        net.output.initialize(mx.init.Xavier(), ctx=ctx_list)
        if freeze_encoder:
            net.freeze_encoder()
        bert.check_inputs = False  # encode_pairs builds valid batches
        if hybridize:
            net.hybridize(static_alloc=True, static_shape=True)
        trainable = {k: p for k, p in net.collect_params().items() if p.grad_req != 'null'}
        trainer = cluster.trainer(trainable, 'adam', {'learning_rate': lr})
        stream = BatchStream(train, batch_size, seed)
        steps_per_epoch = stream.batches_per_epoch
        run_args = {'task': task, 'pretrained': source, 'batch_size': batch_size,
                    'max_len': max_len, 'lr': lr, 'freeze_encoder': freeze_encoder,
                    'seed': seed, 'dtype': bert.config.dtype}
        loop = TrainLoop(net, ClassificationTask(), stream, trainer, ctx_list,
                         folder.checkpoints, run_args, checkpoint_every or steps_per_epoch,
                         progress, ignore_stale_grad=True, cluster=cluster)
        if resume and loop.resume() and cluster.is_chief:
            print(f'resumed at step {loop.step} from {loop.resumed_from}')
        epochs = loop.extra.setdefault('epochs', [])
        for epoch in range(len(epochs), num_epochs):
            loop.run((epoch + 1) * steps_per_epoch)
            if not cluster.is_chief:  # the chief evaluates; the count stays in step
                epochs.append({'epoch': epoch + 1})
                continue
            metrics = evaluate_classifier(net, dev, ctx_list[0])
            metrics['epoch'] = epoch + 1
            metrics['train_loss'] = float(onp.mean(loop.history['loss'][-steps_per_epoch:]))
            epochs.append(metrics)
            print(f'{task} epoch {epoch + 1}: train loss {metrics["train_loss"]:.3f}, '
                  f'dev accuracy {metrics["accuracy"]:.3f}, F1 {metrics["f1"]:.3f} '
                  f'(majority class {metrics["majority_baseline"]:.3f}, '
                  f'{metrics["examples"]} pairs)')
            loop.save()  # the epoch's dev metrics go into the checkpoint too
        if not folder.writer:
            return {'task': task, 'epochs': epochs, 'net': net}
        save_loss_plot(loop.history, folder.path / 'loss.png', f'fine-tuning on {task}')
        save_classifier(net, folder.path, tokenizer)
        result = {'task': task, 'epochs': epochs, 'lr': lr, 'batch_size': batch_size,
                  'max_len': max_len, 'freeze_encoder': freeze_encoder, 'seed': seed,
                  'pairs_per_sec': loop.examples / max(loop.train_seconds, 1e-9)}
        atomic_write_json(folder.path / 'metrics.json', result)
    return dict(result, net=net)
