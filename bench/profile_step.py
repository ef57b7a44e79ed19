"""Where the twin's pretraining step spends its time: mx.profiler's aggregate
table (milliseconds per step, per operator) for the bench_step.py workload.

    OMP_NUM_THREADS=2 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
        python bench/profile_step.py --batch-size 128 [--infer]
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
# Unbulked, so the table has one row per operator (bulking groups them)
os.environ.setdefault('MXNET_EXEC_BULK_EXEC_TRAIN', '0')
os.environ.setdefault('MXNET_EXEC_BULK_EXEC_INFERENCE', '0')
import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon, np  # noqa: E402

import bert_gluon as bg  # noqa: E402
from bench_step import _synthetic_batch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--infer', action='store_true', help='profile inference')
    parser.add_argument('--encode', action='store_true',
                        help='profile the encoder forward alone')
    parser.add_argument('--top', type=int, default=25)
    args = parser.parse_args()
    config = bg.get_config('d2l.pretrain')
    batch = _synthetic_batch(np, args.batch_size)
    tokens, segments, lens, positions, weights, mlm_Y, nsp_y = batch
    net = bg.HybridBERTModel(config)
    net.check_inputs = False
    objective = bg.loss.PretrainingObjective(net)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    objective.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01})
    num_weights = float(weights.sum())

    def step():
        if args.encode:
            return net.encoder(tokens, segments, lens)
        if args.infer:
            return net(tokens, segments, lens, positions)
        with autograd.record():
            mlm_sum, nsp_sum = objective(*batch)
            l = mlm_sum / num_weights + nsp_sum / args.batch_size
        l.backward()
        trainer.step(1)
    for _ in range(2):
        step()
    mx.nd.waitall()
    out = os.path.join(tempfile.mkdtemp(), 'profile.json')
    mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=out)
    mx.profiler.set_state('run')
    for _ in range(args.steps):
        step()
    mx.nd.waitall()
    mx.profiler.set_state('stop')
    stats = json.loads(mx.profiler.dumps(format='json'))
    rows = []
    for domain, ops in stats.get('Time', {}).items():
        for name, s in ops.items():
            rows.append((s['Total'] / args.steps, s['Count'] / args.steps, domain, name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows if r[2] == 'operator')
    print(f'batch {args.batch_size}, threads {os.environ.get("OMP_NUM_THREADS")}, '
          f'{"encoder" if args.encode else "inference" if args.infer else "train step"}: operators {total:.1f} ms/step')
    for ms, count, domain, name in rows[:args.top]:
        print(f'{ms:9.2f} ms {count:6.0f}x  {domain:<10} {name}')


if __name__ == '__main__':
    main()
