"""Encoding throughput of all-MiniLM-L6-v2 on sentence pairs (length 128):
the twin, hybridized, against Hugging Face `transformers` on PyTorch eager
and onnxruntime (the same model exported from PyTorch), in one run, every
contestant in its own process with the thread count stated.

    HF_HUB_OFFLINE=1 python bench/bench_minilm.py                # batches 32 and 128
    HF_HUB_OFFLINE=1 python bench/bench_minilm.py --batch-sizes 32 --repeats 3
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONTESTANTS = {
    'twin': 'bert_gluon twin, hybridize(static_alloc, static_shape)',
    'torch-eager': 'transformers BertModel, PyTorch 2.13 eager, no_grad',
    'onnxruntime': 'onnxruntime CPU, model exported from PyTorch',
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
    from bert_gluon.pretrained import WordPieceTokenizer, _installed_minilm
    tokenizer = WordPieceTokenizer(_installed_minilm() / 'vocab.txt')
    return tokenizer.encode_pairs(_pairs(batch_size), max_len)


def run_worker(name, batch_size, repeats):
    import numpy as onp
    tokens, segments, lens = _inputs(batch_size)
    assert (lens == 128).all()
    if name == 'twin':
        import mxnet as mx
        from bert_gluon.pretrained import from_pretrained
        net, _, _ = from_pretrained('all-MiniLM-L6-v2')
        net.check_inputs = False
        net.encoder.hybridize(static_alloc=True, static_shape=True)
        args = [mx.np.array(a) for a in (tokens, segments, lens)]

        def run():
            net.encoder(*args).wait_to_read()
        threads = os.environ.get('OMP_NUM_THREADS', 'default')
    elif name == 'torch-eager':
        import torch
        from transformers import BertModel
        from bert_gluon.pretrained import _installed_minilm
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
        model = BertModel.from_pretrained(str(_installed_minilm())).eval()
        feed = {'input_ids': torch.from_numpy(tokens.astype('int64')),
                'token_type_ids': torch.from_numpy(segments.astype('int64')),
                'attention_mask': torch.ones(tokens.shape, dtype=torch.int64)}

        def run():
            with torch.no_grad():
                model(**feed)
        threads = str(torch.get_num_threads())
    else:
        import onnxruntime as ort
        path = export_onnx()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ['OMP_NUM_THREADS'])
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        feed = {'input_ids': tokens.astype('int64'), 'token_type_ids': segments.astype('int64'),
                'attention_mask': onp.ones(tokens.shape, dtype='int64')}

        def run():
            session.run(None, feed)
        threads = str(options.intra_op_num_threads)
    for _ in range(2):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return {'pairs_per_sec': batch_size * repeats / (time.perf_counter() - start),
            'threads': threads}


def export_onnx():
    """The Hugging Face model as ONNX (cached in the temp folder)."""
    path = os.path.join(tempfile.gettempdir(), 'bert_gluon_minilm.onnx')
    if not os.path.exists(path):
        import torch
        from transformers import BertModel
        from bert_gluon.pretrained import _installed_minilm
        model = BertModel.from_pretrained(str(_installed_minilm())).eval()
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
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, batch_size = args.worker.split(':')
        print(json.dumps(run_worker(name, int(batch_size), args.repeats)))
        return
    cores = str(os.cpu_count())
    env = dict(os.environ, OMP_NUM_THREADS=cores, HF_HUB_OFFLINE='1',
               GLIBC_TUNABLES='glibc.malloc.hugetlb=1')
    results = {}
    for batch_size in args.batch_sizes:
        for name in CONTESTANTS:
            out = subprocess.run([sys.executable, __file__, '--worker', f'{name}:{batch_size}',
                                  '--repeats', str(args.repeats)], env=env,
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f'{name} failed:\n{out.stderr[-3000:]}')
            results[name, batch_size] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f'all-MiniLM-L6-v2 encoder, sentence pairs of 128 tokens, {cores} cores, '
          'huge pages on for every contestant')
    print(f'{"contestant":<13}{"threads":>8}{"batch":>7}{"pairs/s":>10}{"x torch":>9}  what')
    for batch_size in args.batch_sizes:
        base = results['torch-eager', batch_size]['pairs_per_sec']
        for name, what in CONTESTANTS.items():
            r = results[name, batch_size]
            print(f'{name:<13}{r["threads"]:>8}{batch_size:>7}{r["pairs_per_sec"]:>10.1f}'
                  f'{r["pairs_per_sec"] / base:>9.2f}  {what}')


if __name__ == '__main__':
    main()
