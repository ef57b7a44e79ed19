"""Training on 1 and 2 workers on loopback, side by side: step time and the
bytes moved per step, for MXNet's parameter server (dist_sync, through
`bert-gluon launch`) and Horovod (horovodrun --gloo), against one process;
then a model of throughput against the number of machines for bert.base.

Workload: d2l's small BERT (bench_step.py's sizes), the global batch split
among the workers, each worker on one thread (two workers fill this
machine's two cores), dropout 0.2 as the book trains. Step time: the
pretraining run's pairs/s over its steps (first --warmup steps excluded
by running them before timing). Bytes: the loopback interface's counters
(/proc/net/dev) over the run, per step, next to what the engine must move:
parameter server, every worker pushes its gradients and pulls their sum
(2 x 4 bytes x parameters); Horovod's ring allreduce, 2 (W - 1) / W x 4
bytes x parameters per rank.

    python bench/bench_distributed.py [--steps 30 --batch-size 128]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WORKER = r'''
import json, os, sys
import mxnet as mx
from bert_gluon.distributed import connect
from bert_gluon.pretraining import pretrain
out, kvstore, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
result = pretrain(num_steps=steps, batch_size=batch, max_len=64, config='d2l.pretrain',
                  out_dir=out, kvstore=kvstore, validate=False, progress=False,
                  checkpoint_every=10 ** 6, overwrite=True)
if connect(kvstore, [mx.cpu()]).is_chief:
    params = sum(p.data().size for p in result['net'].collect_params().values())
    with open(os.path.join(out, 'bench.json'), 'w') as f:
        json.dump({'pairs_per_sec': result['metrics']['pairs_per_sec'], 'params': params}, f)
'''


def loopback_bytes():
    with open('/proc/net/dev', encoding='utf-8') as f:
        for line in f:
            name, _, rest = line.partition(':')
            if name.strip() == 'lo':
                fields = rest.split()
                return int(fields[0]) + int(fields[8])  # received + sent
    return 0


def run(kind, workers, steps, batch, threads, data_env):
    """(pairs/s, loopback bytes per step, parameter count) of one job."""
    out = tempfile.mkdtemp(prefix=f'bench-{kind}-')
    script = Path(out) / 'worker.py'
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **data_env)
    args = [sys.executable, str(script), out]
    if kind == 'single':
        command = args + ['device', str(steps), str(batch)]
    elif kind == 'dist_sync':
        command = [sys.executable, '-m', 'bert_gluon.cli', 'launch', '--workers', str(workers),
                   '--servers', '1', '--'] + args + ['dist_sync', str(steps), str(batch)]
    else:
        command = [str(Path(sys.executable).with_name('horovodrun')), '--gloo', '-np',
                   str(workers), '-H', f'localhost:{workers}'] + args + [
                       'horovod', str(steps), str(batch)]
    before = loopback_bytes()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    moved = loopback_bytes() - before
    if done.returncode:
        raise SystemExit(f'{kind} failed:\n{(done.stdout + done.stderr)[-3000:]}')
    result = json.loads((Path(out) / 'bench.json').read_text())
    return result['pairs_per_sec'], moved / steps, result['params']


def scaling_model(step_seconds, params, gbit, machines):
    """Throughput of N machines relative to one, computed: each machine's
    compute per step stays step_seconds (its share of a global batch that
    grows with N), plus the gradient exchange at `gbit` Gbit/s, not
    overlapped with compute (the conservative case)."""
    grad_bytes = 4 * params
    rate = gbit * 1e9 / 8
    rows = []
    for n in machines:
        ps = 0.0 if n == 1 else 2 * grad_bytes / rate  # push + pull, servers spread over hosts
        ring = 0.0 if n == 1 else 2 * (n - 1) / n * grad_bytes / rate
        rows.append((n, n * step_seconds / (step_seconds + ps), n * step_seconds / (step_seconds + ring)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=128, help='global batch')
    parser.add_argument('--gbit', type=float, default=25.0,
                        help='network bandwidth of the model (Gbit/s per machine)')
    parser.add_argument('--base-step-seconds', type=float, default=None,
                        help="bert.base's step time on one machine for the model "
                             '(default: computed from this run\'s small model, see output)')
    args = parser.parse_args()
    data_env = {k: v for k, v in os.environ.items() if k == 'BERT_GLUON_DATA'}
    print('\n'.join(harness.header_lines('1 per worker (2 for the one-process row)')))
    rows = [('one process, 1 thread', 'single', 1, 1),
            ('one process, 2 threads', 'single', 1, 2),
            ('dist_sync, 2 workers x 1 thread', 'dist_sync', 2, 1),
            ('horovod, 2 ranks x 1 thread', 'horovod', 2, 1)]
    print(f'd2l small BERT, global batch {args.batch_size}, {args.steps} steps, loopback')
    print(f'{"job":<34}{"pairs/s":>9}{"ms/step":>9}{"MB/step lo":>12}{"MB/step needed":>16}')
    results = {}
    for label, kind, workers, threads in rows:
        if kind == 'horovod' and not Path(sys.executable).with_name('horovodrun').exists():
            print(f'{label:<34}  (Horovod not installed: docs/pretraining.md, "Several processes and machines")')
            continue
        rate, moved, params = run(kind, workers, args.steps, args.batch_size, threads, data_env)
        grad_mb = 4 * params / 1e6
        needed = (0 if kind == 'single' else 2 * grad_mb * workers if kind == 'dist_sync'
                  else 2 * (workers - 1) / workers * grad_mb * workers)
        ms = 1000 * args.batch_size / rate
        results[label] = (rate, ms, params)
        print(f'{label:<34}{rate:>9.0f}{ms:>9.1f}{moved / 1e6:>12.1f}{needed:>16.1f}')
    params = next(iter(results.values()))[2]
    print(f'\n{params / 1e6:.2f} M parameters: {4 * params / 1e6:.1f} MB of float32 gradients '
          'per worker per step')
    # bert.base: ~110 M parameters; its step time scales from the small model's
    # measured FLOP rate (bench_step.py's train_flops) unless given
    from bench_step import train_flops
    base_params = 110e6
    if args.base_step_seconds:
        base_step, how = args.base_step_seconds, 'given'
    else:
        small_rate = results['one process, 2 threads'][0]
        gflops = train_flops(args.batch_size) * small_rate / args.batch_size / 1e9
        base_flops = 6 * 85e6 * 32 * 512  # 6 x matmul parameters x tokens, batch 32 x 512
        base_step = base_flops / (gflops * 1e9)
        how = (f'computed: 6 x 85 M matmul parameters x 32 x 512 tokens at the '
               f'{gflops:.0f} GFLOP/s this machine measured')
    print(f'\nModel for bert.base (110 M parameters, batch 32 x 512 tokens per machine), '
          f'{args.gbit:g} Gbit/s per machine, exchange not overlapped with compute; one '
          f'machine\'s step {base_step:.1f} s ({how}):')
    print(f'{"machines":>9}{"speedup PS":>12}{"speedup ring":>14}')
    for n, ps, ring in scaling_model(base_step, base_params, args.gbit, [1, 2, 4, 8, 16]):
        print(f'{n:>9}{ps:>12.2f}{ring:>14.2f}')


if __name__ == '__main__':
    main()
