"""A local SageMaker endpoint serving MiniLM embeddings: requests per second
and p50 / p99 latency at batch 1 and 32 through SageMaker's own MXNet
serving container and multi-model-server on 127.0.0.1; and, on the same
inputs, onnxruntime (the twin exported with export_onnx) against the twin.

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


def _batch(n):
    return [SENTENCES[i % len(SENTENCES)] for i in range(n)]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requests', type=int, default=50)
    parser.add_argument('--threads', type=int, default=harness.threads_default())
    args = parser.parse_args()
    print('\n'.join(harness.header_lines(args.threads, 'one model-server worker')))
    os.environ['OMP_NUM_THREADS'] = str(args.threads)  # read once, at MXNet's import
    from bert_gluon.pretrained import minilm_folder
    from bert_gluon.serving.endpoint import LocalEndpoint
    base = Path(tempfile.mkdtemp(prefix='bench-endpoint-'))
    with LocalEndpoint(minilm_folder(), threads=args.threads, work_dir=base) as endpoint:
        print('local endpoint (SageMaker MXNet serving container, multi-model-server), '
              f'MiniLM embeddings, {args.requests} sequential requests each')
        for n in (1, 32):
            texts = _batch(n)
            for _ in range(3):
                endpoint.predict({'inputs': texts})  # warm up
            latencies = []
            start = time.perf_counter()
            for _ in range(args.requests):
                t = time.perf_counter()
                answer = endpoint.predict({'inputs': texts})
                latencies.append(1000 * (time.perf_counter() - t))
            seconds = time.perf_counter() - start
            assert len(answer['embeddings']) == n
            print(f'batch {n:>2}: {args.requests / seconds:7.1f} requests/s '
                  f'({n * args.requests / seconds:7.1f} sentences/s), p50 '
                  f'{percentile(latencies, 50):7.1f} ms, p99 {percentile(latencies, 99):7.1f} ms')
    # onnxruntime against the twin, same inputs, in this process
    import mxnet as mx
    import onnxruntime as ort
    from bert_gluon.onnx_export import export_onnx
    from bert_gluon.pretrained import from_pretrained
    net, tokenizer, _ = from_pretrained('all-MiniLM-L6-v2')
    net.check_inputs = False
    net.hybridize(static_alloc=True, static_shape=True)
    path = export_onnx(net, str(base / 'minilm.onnx'))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    print('the encoder (what the ONNX graph holds: last_hidden_state, pooler_output, '
          'sentence_embedding) on the same tokenized inputs, padded to 32 tokens; median of '
          '7 rounds of 10 calls, sentences/s')
    import numpy as onp
    for n in (1, 32):
        tokens, segments, lens = tokenizer.encode_pairs([(t, None) for t in _batch(n)], 32)
        feed = {'input_ids': tokens.astype('int64'), 'token_type_ids': segments.astype('int64'),
                'attention_mask': (onp.arange(32)[None] < lens[:, None]).astype('int64')}
        twin_inputs = [mx.np.array(a) for a in (tokens, segments, lens)]

        def rate(fn, sync):
            fn(), sync()
            rounds = []
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(10):
                    fn()
                sync()
                rounds.append(10 * n / (time.perf_counter() - t))
            return sorted(rounds)[3]
        twin = rate(lambda: net.encoder(*twin_inputs), mx.nd.waitall)
        onnx = rate(lambda: session.run(None, feed), lambda: None)
        print(f'batch {n:>2}: twin {twin:8.1f}, onnxruntime (the twin exported) {onnx:8.1f}, '
              f'twin / onnxruntime {twin / onnx:.2f}x')


if __name__ == '__main__':
    main()
