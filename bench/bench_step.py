"""Pretraining step, inference and encoding of d2l's small BERT, side by side,
pairs/s: the book's blocks, the hybridized twin (native kernels, float32 and
bf16, and on MXNet's own operators: what a GPU user's graph runs), GluonNLP
0.10's BERT at the same sizes, and the same architecture in PyTorch 2.13
eager, torch.compile and eager under bf16 autocast (bench/torch_bert.py).

Workload (--config d2l, the default): vocab 20256, 128 hidden, 256 FFN, 2
heads, 2 layers, max_len 64, 10 prediction slots (the last 2 padded, weight
0), the book's loss, Adam; --config bert-base: the same architecture at
768 hidden, 3072 FFN, 12 heads, 12 layers, 128 tokens, 20 slots.
train = forward, loss, backward, Adam update; infer = the whole model
forward (encoder, MLM and NSP heads); encode = the encoder forward. The twin
trains through PretrainingObjective, what pretrain() runs.

Every contestant runs in its own process for the whole run, with the thread
count in the header and huge pages for large buffers unless --no-hugepages;
rounds are interleaved (bench/harness.py): each figure is the median of
--rounds rounds, with the min and max. Peak MB is the process's maximum
resident memory. The training step's FLOPs (the book's matrix products,
forward and backward) over its median time give GFLOP/s, printed next to
the machine's peak.

    python bench/bench_step.py                       # batches 128 and 512
    python bench/bench_step.py --batch-sizes 128 --contestants twin twin-bf16 torch-bf16
    python bench/bench_step.py --config bert-base --batch-sizes 16 --rounds 2
    pip install -r bench/requirements.txt            # torch, gluonnlp, onnx(runtime)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CONTESTANTS = {
    # name: (description, threads: 'all' or None for MXNet's default, runner, env)
    'seed-default': ('book blocks, eager, MXNet default threads', None, 'book', {}),
    'seed': ('book blocks, eager', 'all', 'book', {}),
    'twin': ('twin, native kernels, float32', 'all', 'twin', {}),
    'twin-mxnet': ("twin on MXNet's operators (BERT_GLUON_NATIVE=0, a GPU's path)", 'all',
                   'twin', {'BERT_GLUON_NATIVE': '0'}),
    'twin-blas': ("twin, float32 by MKL's sgemm forced (BERT_GLUON_FLOAT32_PROVIDER=blas)",
                  'all', 'twin', {'BERT_GLUON_FLOAT32_PROVIDER': 'blas'}),
    'twin-bf16': ("twin, native kernels, dtype='bfloat16' (bf16 where it beats float32 here)",
                  'all', 'twin-bf16', {}),
    'twin-bf16-mkl': ("twin, dtype='bfloat16', MKL's bf16 forced (BERT_GLUON_BF16_PROVIDER=mkl)",
                      'all', 'twin-bf16', {'BERT_GLUON_BF16_PROVIDER': 'mkl'}),
    'gluonnlp': ('GluonNLP 0.10 BERTModel, same sizes, hybridized', 'all', 'gluonnlp', {}),
    'torch-eager': ('PyTorch 2.13 eager, same architecture', 'all', 'torch', {}),
    'torch-compile': ('PyTorch 2.13 torch.compile', 'all', 'torch-compile', {}),
    'torch-bf16': ('PyTorch 2.13 eager, torch.autocast bfloat16', 'all', 'torch-bf16', {}),
}
DEFAULT = ['seed', 'twin', 'twin-mxnet', 'twin-bf16', 'gluonnlp', 'torch-eager',
           'torch-compile', 'torch-bf16']
KINDS = ('train', 'infer', 'encode')
# --config: the d2l small model (the book's pretraining run), and the book's
# architecture at BERT-base's sizes at 128 tokens, where real users train
SIZE_CONFIGS = {
    'd2l': dict(vocab_size=20256, num_hiddens=128, ffn_num_hiddens=256, num_heads=2,
                num_layers=2, max_len=64, num_pred=10),
    'bert-base': dict(vocab_size=20256, num_hiddens=768, ffn_num_hiddens=3072, num_heads=12,
                      num_layers=12, max_len=128, num_pred=20),
}
SIZES = dict(SIZE_CONFIGS['d2l'])  # the run's sizes: set by main() and by each worker


def train_flops(batch_size, vocab_size=20256, num_hiddens=128, ffn_num_hiddens=256,
                num_heads=2, num_layers=2, max_len=64, num_pred=10):
    """The book's training step's matrix-product FLOPs: forward x 3 (the
    backward computes two products per forward one)."""
    BT, H, F, T = batch_size * max_len, num_hiddens, ffn_num_hiddens, max_len
    layer = 2 * BT * H * (4 * H + 2 * F) + 2 * 2 * batch_size * T * T * H
    heads = 2 * batch_size * num_pred * H * (H + vocab_size) + 2 * batch_size * H * (H + 2)
    return 3 * (num_layers * layer + heads)


def _synthetic_batch(np, batch_size, seed=0):
    """The book's batch layout with random ids, as `np` (mxnet.np or numpy) arrays."""
    import numpy as onp
    vocab_size, max_len, num_pred = SIZES['vocab_size'], SIZES['max_len'], SIZES['num_pred']
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


def torch_workloads(runner, batch_size):
    import contextlib
    import numpy as onp
    import torch
    from torch_bert import BERTModel, pretraining_loss
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', harness.threads_default())))
    torch.manual_seed(0)
    batch = [torch.from_numpy(a) for a in _synthetic_batch(onp, batch_size)]
    tokens, segments, lens, positions, weights, mlm_Y, nsp_y = batch
    mlm_Y, nsp_y = mlm_Y.long(), nsp_y.long()
    net = BERTModel(SIZES['vocab_size'], SIZES['num_hiddens'], SIZES['ffn_num_hiddens'],
                    SIZES['num_heads'], SIZES['num_layers'])
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    autocast = ((lambda: torch.autocast('cpu', dtype=torch.bfloat16))
                if runner == 'torch-bf16' else contextlib.nullcontext)

    def loss_of(tokens, segments, lens, positions, weights, mlm_Y, nsp_y):
        _, mlm_Y_hat, nsp_Y_hat = net(tokens, segments, lens, positions)
        return pretraining_loss(mlm_Y_hat, nsp_Y_hat, mlm_Y, weights, nsp_y)
    forward, encode = net, net.encode
    if runner == 'torch-compile':
        loss_of = torch.compile(loss_of)
        forward, encode = torch.compile(net), torch.compile(net.encode)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of(tokens, segments, lens, positions, weights, mlm_Y, nsp_y)
        loss.backward()
        optimizer.step()

    def inference(fn, *args):
        def run():
            with torch.no_grad(), autocast():
                net.eval()
                fn(*args)
                net.train()
        return run
    none = lambda: None  # noqa: E731  (PyTorch on the CPU is synchronous)
    return {'train': (train_step, none),
            'infer': (inference(forward, tokens, segments, lens, positions), none),
            'encode': (inference(encode, tokens, segments, lens), none)}


def gluonnlp_workloads(batch_size):
    """GluonNLP 0.10's BERT (legacy nd API) at d2l's small sizes, ReLU FFN."""
    import mxnet as mx
    from mxnet import autograd, gluon
    import gluonnlp as nlp
    arrays = _synthetic_batch(mx.nd, batch_size)
    tokens, segments, lens, positions, weights, mlm_Y, nsp_y = arrays
    encoder = nlp.model.BERTEncoder(num_layers=SIZES['num_layers'], units=SIZES['num_hiddens'],
                                    hidden_size=SIZES['ffn_num_hiddens'],
                                    max_length=SIZES['max_len'], num_heads=SIZES['num_heads'],
                                    dropout=0.2,
                                    output_attention=False, output_all_encodings=False,
                                    activation='relu', layer_norm_eps=1e-5)
    net = nlp.model.BERTModel(encoder, vocab_size=SIZES['vocab_size'], token_type_vocab_size=2,
                              units=SIZES['num_hiddens'], embed_size=SIZES['num_hiddens'],
                              use_pooler=True, use_decoder=True,
                              use_classifier=True)
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
            mlm_l = ce(mlm_Y_hat.reshape((-1, SIZES['vocab_size'])), mlm_Y.reshape(-1),
                       weights.reshape((-1, 1))).sum() / num_weights
            l = mlm_l + nsp_ce(nsp_Y_hat, nsp_y).mean()
        l.backward()
        trainer.step(1)
    sync = mx.nd.waitall
    return {'train': (train_step, sync),
            'infer': (lambda: net(tokens, segments, lens, positions), sync),
            'encode': (lambda: net._encode_sequence(tokens, segments, lens)[0], sync)}


def mxnet_workloads(runner, batch_size):
    import mxnet as mx
    from mxnet import autograd, gluon, np
    import bert_gluon as bg

    config = bg.get_config('d2l.pretrain', vocab_size=SIZES['vocab_size'],
                           num_hiddens=SIZES['num_hiddens'],
                           ffn_num_hiddens=SIZES['ffn_num_hiddens'],
                           num_heads=SIZES['num_heads'], num_layers=SIZES['num_layers'],
                           dtype='bfloat16' if runner == 'twin-bf16' else 'float32')
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
    sync = mx.nd.waitall
    predict = net.for_inference(static_shape=True) if hasattr(net, 'for_inference') else net
    return {'train': (train_step, sync),
            'infer': (lambda: predict(tokens, segments, lens, positions), sync),
            'encode': (lambda: predict.encoder(tokens, segments, lens), sync)}


def run_worker(runner, batch_size):
    if runner.startswith('torch'):
        workloads = torch_workloads(runner, batch_size)
    elif runner == 'gluonnlp':  # before bert_gluon switches MXNet to numpy mode
        workloads = gluonnlp_workloads(batch_size)
    else:
        workloads = mxnet_workloads(runner, batch_size)
    harness.serve(workloads, batch_size)


def _cell(stats, base):
    if stats is None:
        return f'{"failed":>26}'
    med, low, high = stats
    ratio = f'{med / base[0]:.2f}' if base else '-'
    digits = 1 if med < 100 else 0  # BERT-base trains a few pairs/s
    return f'{med:>8.{digits}f} ({low:>5.{digits}f}-{high:<5.{digits}f}) {ratio:>5}'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', choices=list(SIZE_CONFIGS), default='d2l',
                        help='model sizes (default: d2l small; bert-base: 768 x 12 at 128 '
                             'tokens, use --batch-sizes 16)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[128, 512])
    parser.add_argument('--steps', type=int, default=4, help='training steps per round '
                        '(inference and encoding: 3x as many calls)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=harness.threads_default())
    parser.add_argument('--contestants', nargs='+', default=DEFAULT, choices=list(CONTESTANTS))
    parser.add_argument('--no-hugepages', action='store_true',
                        help='do not set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 '
                             '(by default every contestant runs with it)')
    parser.add_argument('--json', metavar='PATH',
                        help='also write the figures as JSON (bench/plot.py draws them)')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        runner, batch_size, config = args.worker.split(':')
        SIZES.update(SIZE_CONFIGS[config])
        run_worker(runner, int(batch_size))
        return
    print('\n'.join(harness.header_lines(
        args.threads, f'huge pages {"off" if args.no_hugepages else "on"}')))
    chosen, line = harness.providers_line(dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    print(line)
    SIZES.update(SIZE_CONFIGS[args.config])
    print(f'{args.config}: the book\'s BERT at vocab {SIZES["vocab_size"]}, '
          f'{SIZES["num_hiddens"]} hidden, {SIZES["ffn_num_hiddens"]} FFN, '
          f'{SIZES["num_heads"]} heads, {SIZES["num_layers"]} layers, {SIZES["max_len"]} '
          f'tokens, {SIZES["num_pred"]} preds; median (min-max) pairs/s of {args.rounds} interleaved rounds of '
          f'{args.steps} steps (x3 calls for infer and encode); x = ratio to torch-eager')
    info = harness.machine()
    results = harness.Results('bench_step', args.threads, config=args.config, sizes=dict(SIZES),
                              rounds=args.rounds, steps=args.steps, providers=chosen,
                              hugepages=not args.no_hugepages)
    for batch_size in args.batch_sizes:
        workers = []
        for name in args.contestants:
            _, threads, runner, extra = CONTESTANTS[name]
            env = dict(os.environ, **extra)
            env.pop('OMP_NUM_THREADS', None)
            if not args.no_hugepages:  # fresh large buffers page-fault less
                env['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=1'
            if threads == 'all':
                env['OMP_NUM_THREADS'] = str(args.threads)
            workers.append(harness.Worker(name, [sys.executable, __file__, '--worker',
                                                 f'{runner}:{batch_size}:{args.config}'], env))
        calls = {'train': args.steps, 'infer': 3 * args.steps, 'encode': 3 * args.steps}
        rates, peaks = harness.interleaved(workers, KINDS, args.rounds, calls)
        for w in workers:
            w.close()
        stats = {name: {k: harness.summary(rates[name][k]) for k in KINDS} for name in rates}
        for w in workers:
            for k in KINDS:
                results.add(w.name, CONTESTANTS[w.name][0], 'pairs/s', rates[w.name][k],
                            kind=k, batch=batch_size, peak_mb=peaks.get(w.name))
        base = stats.get('torch-eager', {})
        print(f'\nbatch {batch_size}')
        print(f'{"contestant":<14}' + ''.join(f'{k + " p/s (min-max)  x":>28}' for k in KINDS)
              + f'{"peak MB":>9}  what')
        for w in workers:
            cells = ''.join(_cell(stats[w.name][k], base.get(k)) for k in KINDS)
            peak = f'{peaks[w.name]:>9.0f}' if w.name in peaks else f'{"-":>9}'
            print(f'{w.name:<14}{cells}{peak}  {CONTESTANTS[w.name][0]}')
            if w.failed:
                print(f'    {w.name} failed: {w.failed.strip().splitlines()[-1]}')
        for ours, theirs in (('twin', 'torch-eager'), ('twin', 'torch-compile'),
                             ('twin-bf16', 'torch-bf16'), ('twin-bf16', 'twin'),
                             ('twin-bf16-mkl', 'twin')):
            a, b = stats.get(ours), stats.get(theirs)
            if a and b:
                print(f'{ours} / {theirs}: ' + ', '.join(
                    f'{k} {a[k][0] / b[k][0]:.2f}x' for k in KINDS if a[k] and b[k]))
        flops = train_flops(batch_size, **SIZES)
        for name, bf16 in (('twin', False), ('twin-bf16', chosen.get('bfloat16', 'float32') != 'float32'),
                           ('twin-bf16-mkl', True)):
            if stats.get(name, {}).get('train'):
                achieved = flops * stats[name]['train'][0] / batch_size
                peak, how = harness.peak_flops(info, bf16)
                print(f'{name} training step: {flops / 1e9:.1f} GFLOP of matrix products '
                      f'(forward + backward, the book\'s), {achieved / 1e9:.0f} GFLOP/s = '
                      f'{100 * achieved / peak:.0f}% of peak {peak / 1e9:.0f} GFLOP/s ({how})')
    if args.json:
        results.write(args.json)


if __name__ == '__main__':
    main()
