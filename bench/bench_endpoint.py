"""A local SageMaker endpoint serving MiniLM embeddings on each engine:
requests per second and p50 / p99 latency at batch 1 and 32 through
SageMaker's own MXNet serving container and multi-model-server on 127.0.0.1,
with BERT_GLUON_ENGINE / BERT_GLUON_PRECISION set to each of mxnet (the
twin) float32 and bf16, onnxruntime float32, OpenVINO float32 and bf16
(serving/engines.py). One endpoint at a time (SageMaker's toolkit runs one
model server per machine), the same sequential requests for each.

    HF_HUB_OFFLINE=1 python bench/bench_endpoint.py [--requests 50]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SENTENCES = ['A man is playing a guitar on a stage tonight.',
             'The stock market fell sharply after the announcement.',
             'Two dogs run across a green field in the morning.',
             'She reads a long book about the history of science.']
ENGINES = (('mxnet', 'float32'), ('mxnet', 'bfloat16'), ('onnxruntime', 'float32'),
           ('openvino', 'float32'), ('openvino', 'bfloat16'))


def _batch(n):
    return [SENTENCES[i % len(SENTENCES)] for i in range(n)]


def _serve(endpoint, n, requests):
    """(requests/s, p50 ms, p99 ms) of `requests` sequential requests of n texts."""
    texts = _batch(n)
    for _ in range(3):
        endpoint.predict({'inputs': texts})  # warm up
    latencies = []
    start = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        answer = endpoint.predict({'inputs': texts})
        latencies.append(1000 * (time.perf_counter() - t))
    assert len(answer['embeddings']) == n
    return (requests / (time.perf_counter() - start), harness.percentile(latencies, 50),
            harness.percentile(latencies, 99))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requests', type=int, default=50)
    parser.add_argument('--threads', type=int, default=harness.threads_default())
    parser.add_argument('--engines', nargs='+', default=[f'{e}:{p}' for e, p in ENGINES],
                        help='engine:precision pairs')
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print('\n'.join(harness.header_lines(args.threads, 'one model-server worker')))
    print(harness.providers_line(env)[1])
    from bert_gluon.pretrained import minilm_folder
    from bert_gluon.serving.endpoint import LocalEndpoint
    print('local endpoint (SageMaker MXNet serving container, multi-model-server), MiniLM '
          f'embeddings of short sentences, {args.requests} sequential requests per cell')
    rows = {}
    for pair in args.engines:
        engine, precision = pair.split(':')
        base = Path(tempfile.mkdtemp(prefix=f'bench-endpoint-{engine}-'))
        with LocalEndpoint(minilm_folder(), threads=args.threads, work_dir=base,
                           engine=engine, precision=precision) as endpoint:
            rows[pair] = {n: _serve(endpoint, n, args.requests) for n in (1, 32)}
        cells = '  '.join(f'batch {n:>2}: {rps:6.1f} req/s ({n * rps:7.1f} sentences/s), '
                          f'p50 {p50:6.1f} ms, p99 {p99:6.1f} ms'
                          for n, (rps, p50, p99) in rows[pair].items())
        print(f'{pair:<22} {cells}', flush=True)
    base = rows.get('mxnet:float32')
    for pair, cells in rows.items():
        if base and pair != 'mxnet:float32':
            print(f'{pair} / mxnet:float32 requests/s: ' + ', '.join(
                f'batch {n} {cells[n][0] / base[n][0]:.2f}x' for n in cells))


if __name__ == '__main__':
    main()
