"""Where one MiniLM request's time goes: the twin at batch 1, its p50, MXNet's
per-operator table and the fused encoder blocks' steps (the kernels built
with their step timers: BERT_GLUON_LAYER_TIMERS=1, a build of its own).

    OMP_NUM_THREADS=2 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 HF_HUB_OFFLINE=1 \
        python bench/profile_request.py --length 32 [--dtype bfloat16|int8]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ['BERT_GLUON_LAYER_TIMERS'] = '1'  # read when the kernels build
import harness  # noqa: E402
from bench_minilm import _inputs, _twin  # noqa: E402


def products_gflop(config, length):
    """GFLOP of one sequence's four Dense products per layer, all layers."""
    H, F = config.num_hiddens, config.ffn_num_hiddens
    return 2 * length * (3 * H * H + H * H + 2 * H * F) * config.num_layers / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--length', type=int, default=128)
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'int8'])
    parser.add_argument('--calls', type=int, default=200)
    args = parser.parse_args()
    import mxnet as mx
    import bert_gluon as bg
    from bert_gluon import kernels
    print('\n'.join(harness.header_lines(os.environ.get('OMP_NUM_THREADS', 'default'))))
    run, wait = _twin({'float32': 'twin', 'bfloat16': 'twin-bf16', 'int8': 'twin-int8'}[args.dtype],
                      *_inputs(1, args.length))
    for _ in range(5):
        run()
        wait()
    before = kernels.layer_step_seconds()
    seconds = []
    for _ in range(args.calls):
        start = time.perf_counter()
        run()
        wait()
        seconds.append(time.perf_counter() - start)
    steps = {k: 1e3 * (v - before[k]) / args.calls for k, v in kernels.layer_step_seconds().items()}
    call = 1e3 * statistics.median(seconds)
    config = bg.get_config('all-MiniLM-L6-v2')
    print(f'all-MiniLM-L6-v2, one sequence of {args.length} tokens, {args.dtype}: '
          f'p50 {call:.2f} ms over {args.calls} calls')
    products = steps['qkv'] + steps['wo'] + steps['w1'] + steps['w2']
    print(f'fused blocks, ms per call: {sum(steps.values()):.2f} in all; products {products:.2f} '
          f'({products_gflop(config, args.length) / products * 1e3:.0f} GFLOP/s); ' +
          ', '.join(f'{k} {v:.2f}' for k, v in steps.items()))
    with tempfile.TemporaryDirectory() as folder:  # MXNet's operators, the fused blocks among them
        mx.profiler.set_config(profile_all=True, aggregate_stats=True,
                               filename=os.path.join(folder, 'profile.json'))
        mx.profiler.set_state('run')
        for _ in range(args.calls):
            run()
            wait()
        mx.profiler.set_state('stop')
        table = json.loads(mx.profiler.dumps(reset=True, format='json'))
    print('ms per call, by operator and C API call:')
    for group in ('operator', 'MXNET_C_API'):
        rows = sorted(table['Time'].get(group, {}).items(), key=lambda kv: -kv[1]['Total'])
        for name, row in rows[:8]:
            print(f'  {group:<12} {name[:60]:<60} {row["Total"] / args.calls:8.3f}')


if __name__ == '__main__':
    main()
