"""Pretraining step and inference of d2l's small BERT, side by side, pairs/s:
the book's blocks (as a user gets them, and with all cores), the hybridized
twin, GluonNLP 0.10's BERT at the same sizes, and the same architecture in
PyTorch 2.13 eager and torch.compile (bench/torch_bert.py).

Workload: vocab 20256, 128 hidden, 256 FFN, 2 heads, 2 layers, max_len 64,
10 prediction slots (the last 2 padded, weight 0), the book's loss, Adam.
Columns: train (forward, loss, backward, Adam update), infer (the whole model
forward: encoder, MLM and NSP heads), encode (the encoder forward), each with
its ratio to PyTorch eager in the same run. The twin trains through
PretrainingObjective, what pretrain() runs: model and loss in one hybridized
graph with the native CPU kernels.
Every contestant runs in its own process (MXNet reads OMP_NUM_THREADS only at
import), with its thread count in the table, and with huge pages for large
buffers unless --no-hugepages. Peak MB is the process's maximum resident
memory after the training step. Each rate is the best of --repeats rounds.

    python bench/bench_step.py                      # batches 128 and 512
    python bench/bench_step.py --batch-sizes 128 --steps 5 --contestants seed twin
"""
import argparse
import json
import os
import subprocess
import sys
import time

CONTESTANTS = {
    # name: (description, threads or None for MXNet's default, runner)
    'seed-default': ('book blocks, eager, MXNet default threads', None, 'book'),
    'seed': ('book blocks, eager', 'all', 'book'),
    'twin': ('twin, hybridize(static_alloc, static_shape)', 'all', 'twin'),
    'gluonnlp': ('GluonNLP 0.10 BERTModel, same sizes, hybridized', 'all', 'gluonnlp'),
    'torch-eager': ('PyTorch 2.13 eager, same architecture', 'all', 'torch'),
    'torch-compile': ('PyTorch 2.13 torch.compile', 'all', 'torch-compile'),
}

KINDS = ('train', 'infer', 'encode')


def _synthetic_batch(np, batch_size, vocab_size=20256, max_len=64, num_pred=10,
                     seed=0):
    """The book's batch layout with random ids, as `np` (mxnet.np or numpy) arrays."""
    import numpy as onp
    rng = onp.random.RandomState(seed)
    lens = rng.randint(max_len // 2, max_len + 1, batch_size)
    tokens = rng.randint(5, vocab_size, (batch_size, max_len))
    segments = onp.zeros((batch_size, max_len))
    for b, n in enumerate(lens):
        tokens[b, n:] = 0
        segments[b, n // 2:n] = 1
    positions = onp.stack([rng.choice(n, num_pred, replace=False) for n in lens])
    weights = onp.ones((batch_size, num_pred))
    weights[:, -2:] = 0  # the book pads prediction slots with weight 0
    arrays = (tokens, segments, lens, positions, weights,
              rng.randint(5, vocab_size, (batch_size, num_pred)),
              rng.randint(0, 2, batch_size))
    dtypes = ('int32', 'int32', 'float32', 'int32', 'float32', 'int32', 'int32')
    return [np.array(a).astype(d) for a, d in zip(arrays, dtypes)]


def run_torch_worker(runner, batch_size, steps, warmup):
    import numpy as onp
    import torch
    from torch_bert import BERTModel, pretraining_loss
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', os.cpu_count())))
    torch.manual_seed(0)
    batch = [torch.from_numpy(a) for a in _synthetic_batch(onp, batch_size)]
    tokens, segments, lens, positions, weights, mlm_Y, nsp_y = batch
    mlm_Y, nsp_y = mlm_Y.long(), nsp_y.long()
    net = BERTModel(20256)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)

    def loss_of(tokens, segments, lens, positions, weights, mlm_Y, nsp_y):
        _, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, lens, positions)
        return pretraining_loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
    forward, encode = net, net.encode
    if runner == 'torch-compile':
        loss_of = torch.compile(loss_of)
        forward, encode = torch.compile(net), torch.compile(net.encode)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(tokens, segments, lens, positions, weights, mlm_Y, nsp_y).backward()
        optimizer.step()

    def infer():
        with torch.no_grad():
            net.eval()
            forward(tokens, segments, lens, positions)
            net.train()

    def encode_only():
        with torch.no_grad():
            net.eval()
            encode(tokens, segments, lens)
            net.train()

    def timed(fn, n):  # PyTorch on the CPU is synchronous
        return _best_rate(fn, lambda: None, n, warmup, batch_size)
    train = timed(train_step, steps)
    peak = _peak_mb()  # of the training step
    return {'train': train, 'infer': timed(infer, steps * 3),
            'encode': timed(encode_only, steps * 3), 'peak_mb': peak,
            'threads': str(torch.get_num_threads())}


REPEATS = 3


def _best_rate(fn, sync, n, warmup, batch_size):
    """Pairs/s of the fastest of REPEATS rounds of n calls (after warmup):
    the machine is a shared VM, and the best round is the least disturbed."""
    for _ in range(warmup):
        fn()
    sync()
    best = float('inf')
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return batch_size * n / best


def _timed(mx, fn, n, warmup, batch_size):
    return _best_rate(fn, mx.nd.waitall, n, warmup, batch_size)


def _peak_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_gluonnlp_worker(batch_size, steps, warmup):
    """GluonNLP 0.10's BERT (legacy nd API) at d2l's small sizes, ReLU FFN."""
    import mxnet as mx
    from mxnet import autograd, gluon
    import gluonnlp as nlp
    arrays = _synthetic_batch(mx.nd, batch_size)
    tokens, segments, lens, positions, weights, mlm_Y, nsp_y = arrays
    encoder = nlp.model.BERTEncoder(num_layers=2, units=128, hidden_size=256,
                                    max_length=64, num_heads=2, dropout=0.2,
                                    output_attention=False, output_all_encodings=False,
                                    activation='relu', layer_norm_eps=1e-5)
    net = nlp.model.BERTModel(encoder, vocab_size=20256, token_type_vocab_size=2,
                              units=128, embed_size=128, use_pooler=True, use_decoder=True, use_classifier=True)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    ce, nsp_ce = gluon.loss.SoftmaxCELoss(), gluon.loss.SoftmaxCELoss()
    ce.hybridize(static_alloc=True, static_shape=True)
    nsp_ce.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01})
    num_weights = float(weights.sum().asscalar())

    def train_step():
        with autograd.record():
            _, _, nsp_Y_hat, mlm_Y_hat = net(tokens, segments, lens, positions)
            mlm_l = ce(mlm_Y_hat.reshape((-1, 20256)), mlm_Y.reshape(-1),
                       weights.reshape((-1, 1))).sum() / num_weights
            l = mlm_l + nsp_ce(nsp_Y_hat, nsp_y).mean()
        l.backward()
        trainer.step(1)
    train = _timed(mx, train_step, steps, warmup, batch_size)
    peak = _peak_mb()
    infer = _timed(mx, lambda: net(tokens, segments, lens, positions), steps * 3,
                   warmup, batch_size)
    encode = _timed(mx, lambda: net._encode_sequence(tokens, segments, lens)[0],
                    steps * 3, warmup, batch_size)
    return {'train': train, 'infer': infer, 'encode': encode, 'peak_mb': peak,
            'threads': os.environ.get('OMP_NUM_THREADS', 'default')}


def run_worker(runner, batch_size, steps, warmup):
    if runner.startswith('torch'):
        return run_torch_worker(runner, batch_size, steps, warmup)
    if runner == 'gluonnlp':  # before bert_gluon switches MXNet to numpy mode
        return run_gluonnlp_worker(batch_size, steps, warmup)
    import mxnet as mx
    from mxnet import autograd, gluon, np
    import bert_gluon as bg

    config = bg.get_config('d2l.pretrain')
    batch = _synthetic_batch(np, batch_size)
    tokens, segments, lens, positions, weights, mlm_Y, nsp_y = batch
    mx.random.seed(0)
    if runner == 'book':
        net = bg.BERTModel.from_config(config)
        loss = gluon.loss.SoftmaxCrossEntropyLoss()

        def train_step():  # the book's _get_batch_loss_bert on one device
            with autograd.record():
                _, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, lens, positions)
                mlm_l = loss(mlm_Y_hat.reshape((-1, config.vocab_size)),
                             mlm_Y.reshape(-1), weights.reshape((-1, 1)))
                mlm_l = mlm_l.sum() / (weights.sum() + 1e-8)
                nsp_l = loss(nsp_Y_hat, nsp_y).mean()
                l = mlm_l + nsp_l
            l.backward()
            trainer.step(1)
    else:
        net = bg.HybridBERTModel(config)
        net.check_inputs = False  # synthetic batch, checked by construction
        objective = bg.loss.PretrainingObjective(net)  # what pretrain() runs
        net.hybridize(static_alloc=True, static_shape=True)
        objective.hybridize(static_alloc=True, static_shape=True)
        num_weights, = weights.sum().asnumpy().reshape(1)

        def train_step():
            with autograd.record():
                mlm_sum, nsp_sum = objective(*batch)
                l = mlm_sum / float(num_weights) + nsp_sum / batch_size
            l.backward()
            trainer.step(1)
    net.initialize(mx.init.Xavier())
    net(tokens, segments, lens, positions)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01})

    train = _timed(mx, train_step, steps, warmup, batch_size)
    peak = _peak_mb()
    infer = _timed(mx, lambda: net(tokens, segments, lens, positions), steps * 3,
                   warmup, batch_size)
    encode = _timed(mx, lambda: net.encoder(tokens, segments, lens), steps * 3,
                    warmup, batch_size)
    return {'train': train, 'infer': infer, 'encode': encode, 'peak_mb': peak,
            'threads': os.environ.get('OMP_NUM_THREADS', 'default')}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[128, 512])
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3,
                        help='rounds of --steps calls; the fastest is reported')
    parser.add_argument('--contestants', nargs='+', default=list(CONTESTANTS),
                        choices=list(CONTESTANTS))
    parser.add_argument('--no-hugepages', action='store_true',
                        help='do not set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 '
                             '(by default every contestant runs with it)')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats
    if args.worker:
        runner, batch_size = args.worker.split(':')
        print(json.dumps(run_worker(runner, int(batch_size), args.steps, args.warmup)))
        return
    cores = os.cpu_count()
    results = {}
    for batch_size in args.batch_sizes:
        for name in args.contestants:
            _, threads, runner = CONTESTANTS[name]
            env = dict(os.environ)
            env.pop('OMP_NUM_THREADS', None)
            if not args.no_hugepages:  # fresh large buffers page-fault less
                env['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=1'
            if threads == 'all':
                env['OMP_NUM_THREADS'] = str(cores)
            out = subprocess.run(
                [sys.executable, __file__, '--worker', f'{runner}:{batch_size}',
                 '--steps', str(args.steps), '--warmup', str(args.warmup),
                 '--repeats', str(args.repeats)],
                env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f'{name} failed:\n{out.stderr}')
            results[name, batch_size] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f'  measured {name} batch {batch_size}', file=sys.stderr)
    print(f'd2l small BERT (20256/128/256/2 heads/2 layers, max_len 64, 10 preds), '
          f'{cores} cores, MXNet default threads = half the cores, '
          f'huge pages {"off" if args.no_hugepages else "on"} for every contestant, '
          f'best of {args.repeats} rounds of {args.steps} calls (x3 for infer/encode)')
    print('train: forward, loss, backward, Adam update; infer: the whole model '
          'forward (encoder, MLM and NSP heads); encode: the encoder forward. '
          'Pairs/s, and x eager = ratio to PyTorch eager in this run. '
          'Peak MB: the training step\'s peak resident memory.')
    header = (f'{"contestant":<14}{"threads":>8}{"batch":>6}'
              + ''.join(f'{k + " p/s":>12}{"x eager":>8}' for k in KINDS)
              + f'{"peak MB":>9}  what')
    print(header)
    for batch_size in args.batch_sizes:
        base = results.get(('torch-eager', batch_size))
        for name in args.contestants:
            r = results[name, batch_size]
            cells = ''.join(f'{r[k]:>12.1f}'
                            + (f'{r[k] / base[k]:>8.2f}' if base else f'{"-":>8}')
                            for k in KINDS)
            print(f'{name:<14}{r["threads"]:>8}{batch_size:>6}{cells}'
                  f'{r["peak_mb"]:>9.0f}  {CONTESTANTS[name][0]}')


if __name__ == '__main__':
    main()
