"""Encoding throughput of all-MiniLM-L6-v2 on sentence pairs (length 128):
the twin, hybridized (its inference graph: fused encoder blocks), in float32
and dtype='bfloat16', against Hugging Face `transformers` on PyTorch eager
in float32 and under bf16 autocast, and onnxruntime (the same model exported
from PyTorch). Every contestant in its own process, rounds interleaved
(bench/harness.py): medians with min and max.

    HF_HUB_OFFLINE=1 python bench/bench_minilm.py                # batches 32 and 128
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
    'twin-bf16': "bert_gluon twin, native kernels, dtype='bfloat16'",
    'hf-eager': 'transformers BertModel, PyTorch 2.13 eager, no_grad',
    'hf-bf16': 'transformers BertModel, PyTorch 2.13 eager, autocast bfloat16',
    'onnxruntime': 'onnxruntime 1.18 CPU, the model exported from PyTorch (opset 17)',
}


def _pairs(n):
    import random
    rng = random.Random(0)
    words = ('the quick brown fox jumps over a lazy dog while seven wizards quietly '
             'judge boxing matches near an old stone bridge in the rain').split()
    # long enough that every pair fills the 128 tokens
    return [(' '.join(rng.choice(words) for _ in range(70)),
             ' '.join(rng.choice(words) for _ in range(70))) for _ in range(n)]


def _inputs(batch_size, max_len=128):
    from bert_gluon.pretrained import minilm_folder
    from bert_gluon.tokenization import WordPieceTokenizer
    tokenizer = WordPieceTokenizer(minilm_folder() / 'vocab.txt')
    return tokenizer.encode_pairs(_pairs(batch_size), max_len)


def workloads(name, batch_size):
    import numpy as onp
    tokens, segments, lens = _inputs(batch_size)
    assert (lens == 128).all()
    threads = int(os.environ['OMP_NUM_THREADS'])
    if name.startswith('twin'):
        import mxnet as mx
        from bert_gluon.pretrained import from_pretrained
        dtype = 'bfloat16' if name == 'twin-bf16' else 'float32'
        net, _, _ = from_pretrained('all-MiniLM-L6-v2', dtype=dtype)
        net.check_inputs = False
        net.encoder.hybridize(static_alloc=True, static_shape=True)
        args = [mx.np.array(a) for a in (tokens, segments, lens)]
        return lambda: net.encoder(*args), mx.nd.waitall
    if name.startswith('hf'):
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
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(export_onnx(), options, providers=['CPUExecutionProvider'])
    feed = {'input_ids': tokens.astype('int64'), 'token_type_ids': segments.astype('int64'),
            'attention_mask': onp.ones(tokens.shape, dtype='int64')}
    return lambda: session.run(None, feed), lambda: None


def export_onnx():
    """The Hugging Face model as ONNX (cached in the temp folder)."""
    path = os.path.join(tempfile.gettempdir(), 'bert_gluon_minilm.onnx')
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
        ids = torch.ones((2, 128), dtype=torch.int64)
        torch.onnx.export(Encoder(), (ids, ids, ids), path + '.tmp', dynamo=False,
                          input_names=['input_ids', 'attention_mask', 'token_type_ids'],
                          output_names=['last_hidden_state'],
                          dynamic_axes={k: {0: 'batch'} for k in
                                        ('input_ids', 'attention_mask', 'token_type_ids')},
                          opset_version=17)
        os.replace(path + '.tmp', path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[32, 128])
    parser.add_argument('--calls', type=int, default=3, help='encoder calls per round')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=harness.threads_default())
    parser.add_argument('--contestants', nargs='+', default=list(CONTESTANTS),
                        choices=list(CONTESTANTS))
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, batch_size = args.worker.split(':')
        harness.serve({'encode': workloads(name, int(batch_size))}, int(batch_size))
        return
    if 'onnxruntime' in args.contestants:
        export_onnx()  # once, before the timed workers start
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE='1',
               GLIBC_TUNABLES='glibc.malloc.hugetlb=1')
    print('\n'.join(harness.header_lines(args.threads, 'huge pages on')))
    print('all-MiniLM-L6-v2 encoder, sentence pairs of 128 tokens; median (min-max) '
          f'pairs/s of {args.rounds} interleaved rounds of {args.calls} calls; '
          'x = ratio to hf-eager')
    for batch_size in args.batch_sizes:
        workers = [harness.Worker(name, [sys.executable, __file__, '--worker',
                                         f'{name}:{batch_size}'], env)
                   for name in args.contestants]
        rates, _ = harness.interleaved(workers, ['encode'], args.rounds,
                                       {'encode': args.calls})
        for w in workers:
            w.close()
        stats = {name: harness.summary(rates[name]['encode']) for name in rates}
        base = stats.get('hf-eager')
        print(f'\nbatch {batch_size}')
        for w in workers:
            st = stats[w.name]
            if st is None:
                print(f'{w.name:<12} failed: {(w.failed or "").strip().splitlines()[-1:]}')
                continue
            ratio = f'{st[0] / base[0]:.2f}' if base else '-'
            print(f'{w.name:<12}{st[0]:>8.1f} ({st[1]:.1f}-{st[2]:.1f}) x{ratio:<6} '
                  f'{CONTESTANTS[w.name]}')
        for ours, theirs in (('twin', 'hf-eager'), ('twin', 'onnxruntime'),
                             ('twin-bf16', 'hf-bf16')):
            if stats.get(ours) and stats.get(theirs):
                print(f'{ours} / {theirs}: {stats[ours][0] / stats[theirs][0]:.2f}x')


if __name__ == '__main__':
    main()
