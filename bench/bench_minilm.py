"""all-MiniLM-L6-v2 encoding: the twin's `for_inference()` (its encoder one
fused native op), in float32 and dtype='bfloat16', against Hugging Face
`transformers` on PyTorch eager (float32, bf16 autocast), onnxruntime (the
model exported from PyTorch with dynamic batch and length; plain, and
through its transformer optimizer) and OpenVINO (the same ONNX, float32 and
bf16) and the same ONNX in int8 on both (bert_gluon.quantization). Every
contestant in its own process, rounds interleaved
(bench/harness.py).

Throughput (default): sentence pairs/s at each batch size and length,
medians with min and max. Latency (--latency): one sequence per request,
each call timed alone; p50 and p99 in ms over every call of every round.

    HF_HUB_OFFLINE=1 python bench/bench_minilm.py                  # batches 32, 128; length 128
    HF_HUB_OFFLINE=1 python bench/bench_minilm.py --latency --lengths 32 128
    HF_HUB_OFFLINE=1 python bench/bench_minilm.py --batch-sizes 32 --rounds 3
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CONTESTANTS = {
    'twin': 'bert_gluon twin, native kernels, float32',
    'twin-blas': "bert_gluon twin, float32 by MKL's sgemm forced",
    'twin-bf16': "bert_gluon twin, dtype='bfloat16' (bf16 where it beats float32 here)",
    'twin-bf16-mkl': "bert_gluon twin, dtype='bfloat16', MKL's bf16 forced",
    'twin-int8': "bert_gluon twin, dtype='int8' (oneDNN's u8 x s8 products forced)",
    'hf-eager': 'transformers BertModel, PyTorch eager, no_grad',
    'hf-bf16': 'transformers BertModel, PyTorch eager, autocast bfloat16',
    'onnxruntime': 'onnxruntime CPU, the model exported from PyTorch (opset 17)',
    'onnxruntime-opt': 'onnxruntime CPU, the same ONNX through its transformer optimizer',
    'openvino': 'OpenVINO CPU, the same ONNX, INFERENCE_PRECISION_HINT f32',
    'openvino-bf16': 'OpenVINO CPU, the same ONNX, INFERENCE_PRECISION_HINT bf16',
    'onnxruntime-int8': "onnxruntime CPU, the same ONNX in int8 (bert_gluon.quantization: "
                        "onnxruntime's dynamic quantizer, weights per channel)",
    'openvino-int8': 'OpenVINO CPU, the same int8 ONNX',
}
HEADS, HIDDEN = 12, 384  # all-MiniLM-L6-v2, for onnxruntime's optimizer


def _pairs(n):
    import random
    rng = random.Random(0)
    words = ('the quick brown fox jumps over a lazy dog while seven wizards quietly '
             'judge boxing matches near an old stone bridge in the rain').split()
    # long enough that every pair fills 128 tokens
    return [(' '.join(rng.choice(words) for _ in range(70)),
             ' '.join(rng.choice(words) for _ in range(70))) for _ in range(n)]


def _inputs(batch_size, length):
    from bert_gluon.pretrained import minilm_folder
    from bert_gluon.tokenization import WordPieceTokenizer
    tokenizer = WordPieceTokenizer(minilm_folder() / 'vocab.txt')
    tokens, segments, lens = tokenizer.encode_pairs(_pairs(batch_size), length)
    assert (lens == length).all()
    return tokens, segments, lens


def _twin(name, tokens, segments, lens):
    import mxnet as mx
    from bert_gluon.pretrained import from_pretrained
    if name == 'twin-bf16-mkl':
        os.environ['BERT_GLUON_BF16_PROVIDER'] = 'mkl'  # read when the model resolves
    if name == 'twin-blas':
        os.environ['BERT_GLUON_FLOAT32_PROVIDER'] = 'blas'
    if name == 'twin-int8':  # measured as int8 even where 'auto' would fall back
        os.environ['BERT_GLUON_INT8_PROVIDER'] = 'onednn'
    dtype = {'twin': 'float32', 'twin-blas': 'float32', 'twin-int8': 'int8'}.get(name,
                                                                                 'bfloat16')
    net, _, _ = from_pretrained('all-MiniLM-L6-v2', dtype=dtype)
    net.check_inputs = False
    encoder = net.for_inference(static_shape=True).encoder
    args = [mx.np.array(a) for a in (tokens, segments, lens)]
    return lambda: encoder(*args), mx.nd.waitall


def _hugging_face(name, tokens, segments, threads):
    import contextlib
    import torch
    from transformers import BertModel
    from bert_gluon.pretrained import minilm_folder
    torch.set_num_threads(threads)
    model = BertModel.from_pretrained(str(minilm_folder())).eval()
    feed = {'input_ids': torch.from_numpy(tokens.astype('int64')),
            'token_type_ids': torch.from_numpy(segments.astype('int64')),
            'attention_mask': torch.ones(tokens.shape, dtype=torch.int64)}
    autocast = ((lambda: torch.autocast('cpu', dtype=torch.bfloat16))
                if name == 'hf-bf16' else contextlib.nullcontext)

    def run():
        with torch.no_grad(), autocast():
            model(**feed)
    return run, lambda: None


def _feed(tokens, segments):
    import numpy as onp
    return {'input_ids': tokens.astype('int64'), 'token_type_ids': segments.astype('int64'),
            'attention_mask': onp.ones(tokens.shape, dtype='int64')}


def _onnxruntime(name, tokens, segments, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    path = {'onnxruntime-opt': optimized_onnx, 'onnxruntime-int8': int8_onnx}.get(
        name, export_onnx)()
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = _feed(tokens, segments)
    return lambda: session.run(None, feed), lambda: None


def _openvino(name, tokens, segments, threads):
    import openvino as ov
    precision = 'bf16' if name == 'openvino-bf16' else 'f32'
    path = int8_onnx() if name == 'openvino-int8' else export_onnx()
    compiled = ov.Core().compile_model(path, 'CPU', {
        'INFERENCE_PRECISION_HINT': precision, 'INFERENCE_NUM_THREADS': threads,
        'PERFORMANCE_HINT': 'LATENCY'})
    granted = compiled.get_property('INFERENCE_PRECISION_HINT')
    if granted != getattr(ov.Type, precision):  # said, not hidden: the label would be wrong
        raise RuntimeError(f'OpenVINO runs {granted} here, not {precision}')
    request = compiled.create_infer_request()
    feed = _feed(tokens, segments)
    return lambda: request.infer(feed), lambda: None


def workloads(name, batch_size, length):
    tokens, segments, lens = _inputs(batch_size, length)
    threads = int(os.environ['OMP_NUM_THREADS'])
    if name.startswith('twin'):
        return _twin(name, tokens, segments, lens)
    if name.startswith('hf'):
        return _hugging_face(name, tokens, segments, threads)
    if name.startswith('onnxruntime'):
        return _onnxruntime(name, tokens, segments, threads)
    return _openvino(name, tokens, segments, threads)


def export_onnx():
    """The Hugging Face model as ONNX, dynamic batch and length (cached in
    the temp folder)."""
    path = os.path.join(tempfile.gettempdir(), 'bert_gluon_minilm_dynamic.onnx')
    if not os.path.exists(path):
        import torch
        from transformers import BertModel
        from bert_gluon.pretrained import minilm_folder
        model = BertModel.from_pretrained(str(minilm_folder())).eval()
        model.requires_grad_(False)

        class Encoder(torch.nn.Module):  # named inputs, hidden states out
            def forward(self, input_ids, attention_mask, token_type_ids):
                return model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state
        ids = torch.ones((2, 16), dtype=torch.int64)
        names = ['input_ids', 'attention_mask', 'token_type_ids']
        torch.onnx.export(Encoder(), (ids, ids, ids), path + '.tmp', dynamo=False,
                          input_names=names, output_names=['last_hidden_state'],
                          dynamic_axes={k: {0: 'batch', 1: 'length'} for k in
                                        names + ['last_hidden_state']},
                          opset_version=17)
        os.replace(path + '.tmp', path)
    return path


def int8_onnx():
    """export_onnx() quantized as the package's ONNX engines quantize (cached)."""
    path = export_onnx().replace('.onnx', '_int8.onnx')
    if not os.path.exists(path):
        from bert_gluon.quantization import quantize_onnx
        quantize_onnx(export_onnx(), path)
    return path


def optimized_onnx():
    """export_onnx() through onnxruntime's transformer optimizer (BERT fusions)."""
    path = export_onnx().replace('.onnx', '_optimized.onnx')
    if not os.path.exists(path):
        from onnxruntime.transformers import optimizer
        model = optimizer.optimize_model(export_onnx(), model_type='bert', num_heads=HEADS,
                                         hidden_size=HIDDEN)
        model.save_model_to_file(path + '.tmp')
        os.replace(path + '.tmp', path)
        print('onnxruntime optimizer fused: ' + ', '.join(
            f'{k} {v}' for k, v in model.get_fused_operator_statistics().items() if v),
            file=sys.stderr)
    return path


def _table(args, workers, rates, seconds, batch_size, length):
    stats = {name: harness.summary(rates[name]['encode']) for name in rates}
    print(f'\nbatch {batch_size}, length {length}')
    for w in workers:
        if stats[w.name] is None:
            print(f'{w.name:<16} failed: {(w.failed or "").strip().splitlines()[-1:]}')
            continue
        if args.latency:
            times = [1e3 * t for t in seconds[w.name]['encode']]
            print(f'{w.name:<16} p50 {harness.percentile(times, 50):7.2f} ms  '
                  f'p99 {harness.percentile(times, 99):7.2f} ms  {CONTESTANTS[w.name]}')
        else:
            st = stats[w.name]
            print(f'{w.name:<16}{st[0]:>8.1f} ({st[1]:.1f}-{st[2]:.1f})  {CONTESTANTS[w.name]}')
    # side by side: the twin against each peer (a time ratio in latency mode: > 1 is the twin ahead)
    key = ((lambda n: harness.percentile(seconds[n]['encode'], 50)) if args.latency
           else (lambda n: 1 / stats[n][0]))
    for ours in ('twin', 'twin-blas', 'twin-bf16', 'twin-bf16-mkl', 'twin-int8'):
        for theirs in [n for n in CONTESTANTS if not n.startswith('twin')] + ['twin']:
            if ours != theirs and stats.get(ours) and stats.get(theirs):
                print(f'{ours} vs {theirs}: {key(theirs) / key(ours):.2f}x')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[32, 128])
    parser.add_argument('--lengths', type=int, nargs='+', default=[128],
                        help='tokens per sequence (pairs cut to it)')
    parser.add_argument('--latency', action='store_true',
                        help='batch 1, each call timed alone: p50 and p99 in ms')
    parser.add_argument('--calls', type=int, default=None,
                        help='calls per round (default 3; 20 with --latency)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=harness.threads_default())
    parser.add_argument('--contestants', nargs='+', default=list(CONTESTANTS),
                        choices=list(CONTESTANTS))
    parser.add_argument('--json', metavar='PATH',
                        help='also write the figures as JSON (bench/plot.py draws them)')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, batch_size, length = args.worker.split(':')
        harness.serve({'encode': workloads(name, int(batch_size), int(length))},
                      int(batch_size))
        return
    if any(n.startswith(('onnxruntime', 'openvino')) for n in args.contestants):
        optimized_onnx()  # once, before the timed workers start
        int8_onnx()
    calls = args.calls or (20 if args.latency else 3)
    batch_sizes = [1] if args.latency else args.batch_sizes
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE='1',
               GLIBC_TUNABLES='glibc.malloc.hugetlb=1')
    print('\n'.join(harness.header_lines(args.threads, 'huge pages on')))
    chosen, line = harness.providers_line(env)
    print(line)
    results = harness.Results('bench_minilm', args.threads, latency=args.latency,
                              rounds=args.rounds, calls=calls, providers=chosen)
    print('all-MiniLM-L6-v2 encoder, sentence pairs cut to the length; ' +
          (f'latency of one sequence, {args.rounds} interleaved rounds of {calls} calls'
           if args.latency else f'median (min-max) pairs/s of {args.rounds} interleaved '
                                f'rounds of {calls} calls'))
    for length in args.lengths:
        for batch_size in batch_sizes:
            workers = [harness.Worker(name, [sys.executable, __file__, '--worker',
                                             f'{name}:{batch_size}:{length}'], env)
                       for name in args.contestants]
            seconds = {}
            rates, _ = harness.interleaved(workers, ['encode'], args.rounds,
                                           {'encode': calls}, seconds=seconds)
            for w in workers:
                w.close()
            _table(args, workers, rates, seconds, batch_size, length)
            for w in workers:
                if args.latency:
                    results.add(w.name, CONTESTANTS[w.name], 'ms',
                                [1e3 * t for t in seconds[w.name]['encode']],
                                batch=batch_size, length=length)
                else:
                    results.add(w.name, CONTESTANTS[w.name], 'pairs/s', rates[w.name]['encode'],
                                batch=batch_size, length=length)
    if args.json:
        results.write(args.json)


if __name__ == '__main__':
    main()
