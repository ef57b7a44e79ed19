"""Fine-tuning BERT on sentence-pair classification (book section "Natural
Language Inference: Fine-Tuning BERT"), through the one training loop.

    result = finetune('MRPC', pretrained='runs/pretrain', num_epochs=3)
"""
from pathlib import Path

import numpy as onp
import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

from .checkpoint import RunFolder, atomic_save_parameters, atomic_write_json
from .data.pairs import TASKS, encode_pairs, read_pairs
from .distributed import connect
from .backend import BackendMixin, run_graph
from .inputs import checked_scope, is_symbolic, prepare_encoder_inputs
from .layers import cls_rows
from .model import HybridBERTModel
from .training import (BatchStream, TrainLoop, check_run_arguments, parse_contexts,
                       save_loss_plot)

__all__ = ['BERTClassifier', 'ClassificationTask', 'evaluate_classifier',
           'finetune']


class BERTClassifier(BackendMixin, nn.HybridBlock):
    """The book's classifier: the pretrained encoder, its '<cls>' hidden layer
    (the NSP head's first Dense, BERT's pooler), and a new output layer.

    forward(tokens, segments, valid_lens=None) -> (B, num_outputs); the
    book's single tuple argument `forward((tokens, segments, valid_lens))`
    works too. The MLM head and the NSP output layer are left out, so their
    parameters are not trained (the book's `ignore_stale_grad` remark).
    Its backend follows its encoder's request.
    """
    def __init__(self, bert, num_outputs=3, labels=None, task=None, max_len=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bert, HybridBERTModel):
            raise ValueError('bert must be a bert_gluon.HybridBERTModel (load a '
                             'book model\'s parameters into one), got '
                             f'{type(bert).__name__}')
        self.config = bert.config
        if labels is not None and len(labels) != num_outputs:
            raise ValueError(f'labels: {num_outputs} names expected, got {labels!r}')
        # what serving needs to answer in words: label names, task, input length
        self.labels = tuple(labels) if labels is not None else tuple(map(str, range(num_outputs)))
        self.task, self.max_len = task, max_len or bert.config.max_len
        with self.name_scope():
            self.encoder = bert.encoder
            self.hidden = bert.nsp.mlp[0]
            self.output = nn.Dense(num_outputs, in_units=bert.config.num_hiddens)
        self._init_backend(source=self.encoder)

    def forward(self, tokens, segments=None, valid_lens=None):
        if segments is None and isinstance(tokens, (list, tuple)):
            tokens, segments, valid_lens = tokens  # the book's calling style
        if is_symbolic(tokens):
            return super().forward(tokens, segments, valid_lens)
        tokens, segments, valid_lens = prepare_encoder_inputs(
            self.config, self.encoder.check_inputs, tokens, segments, valid_lens)
        with checked_scope():
            return run_graph(self, tokens, segments, valid_lens)

    def hybrid_forward(self, F, tokens, segments, valid_lens):
        encoded_X = self.encoder(tokens, segments, valid_lens)
        return self.output(self.hidden(cls_rows(F, encoded_X)))

    def freeze_encoder(self):
        """Train only the hidden and output layers."""
        self.encoder.collect_params().setattr('grad_req', 'null')


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
    predictions = []
    for start in range(0, len(labels), batch_size):
        batch = trim_padding([a[start:start + batch_size]
                              for a in (tokens, segments, valid_lens)])
        batch = [mx.np.array(a, ctx=ctx) for a in batch]
        predictions.append(net(*batch).argmax(axis=1).asnumpy())
    predicted = onp.concatenate(predictions).astype(int)
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
OUTPUTS = ('classifier.params', 'classifier.json', 'config.json', 'vocab.json',
           'vocab.txt', 'metrics.json', 'loss.png')


def save_classifier_folder(folder, net, tokenizer, task, max_len):
    """Everything needed to reload and serve a fine-tuned classifier:
    classifier.json (task, label names, max_len, tokenizer kind),
    config.json, the tokenizer's vocabulary (vocab.json or vocab.txt) and
    classifier.params. `pretrained.from_pretrained(folder)` reads it."""
    import shutil
    from .data.vocab import Vocab
    folder = Path(folder)
    if isinstance(tokenizer, Vocab):
        kind = 'word'
        tokenizer.to_json(folder / 'vocab.json')
    else:  # a WordPieceTokenizer: its vocab.txt
        kind = 'wordpiece'
        shutil.copyfile(tokenizer.vocab_file, folder / 'vocab.txt.tmp')
        (folder / 'vocab.txt.tmp').replace(folder / 'vocab.txt')
    atomic_write_json(folder / 'config.json', net.config.to_dict())
    atomic_write_json(folder / 'classifier.json', {
        'task': task, 'labels': list(net.labels), 'num_outputs': net.output._units,
        'max_len': max_len, 'tokenizer': kind,
        'lowercase': getattr(tokenizer, 'lowercase', True)})
    atomic_save_parameters(net, folder / 'classifier.params')


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
    from .pretrained import from_pretrained
    if task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {task!r}')
    check_run_arguments(lr, num_epochs=num_epochs, batch_size=batch_size,
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
        pairs = list(zip(first, second))
        if hasattr(tokenizer, 'encode_pairs'):
            arrays = tokenizer.encode_pairs(pairs, max_len)
        else:
            arrays = encode_pairs(pairs, tokenizer, max_len)
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
        stream = BatchStream(train, min(batch_size, len(train[0])), seed)
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
        save_classifier_folder(folder.path, net, tokenizer, task, max_len)
        result = {'task': task, 'epochs': epochs, 'lr': lr, 'batch_size': batch_size,
                  'max_len': max_len, 'freeze_encoder': freeze_encoder, 'seed': seed,
                  'pairs_per_sec': loop.examples / max(loop.train_seconds, 1e-9)}
        atomic_write_json(folder.path / 'metrics.json', result)
    return dict(result, net=net)
