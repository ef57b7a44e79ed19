"""What int8 costs in accuracy, side by side: a fine-tuned classifier's dev
metrics (MRPC's F1) on every engine and precision it runs in, and
all-MiniLM-L6-v2's sentence embeddings of real text (WikiText-2's
validation lines) against float32's: cosine, mean and minimum.

    bert-gluon finetune --task MRPC --from all-MiniLM-L6-v2 --lr 5e-5 --epochs 2 --out runs/mrpc
    BERT_GLUON_DATA=../shared/data HF_HUB_OFFLINE=1 python bench/accuracy_int8.py --from runs/mrpc
"""
import argparse
import json
import os
import sys

import numpy as onp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

RUNS = (('mxnet', 'float32'), ('onnxruntime', 'float32'), ('mxnet', 'int8'),
        ('onnxruntime', 'int8'), ('openvino', 'int8'), ('mxnet', 'bfloat16'),
        ('openvino', 'bfloat16'))


def predictions(model, pairs, batch_size=64):
    out = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        out.append(model.run(*model.tokenizer.encode_pairs(batch, model.max_len))['logits']
                   .argmax(axis=1))
    return onp.concatenate(out)


def embeddings(model, texts, batch_size=32, length=128):
    return onp.concatenate([
        model.run(*model.tokenizer.encode_pairs([(t, None) for t in texts[i:i + batch_size]],
                                                length))['sentence_embedding']
        for i in range(0, len(texts), batch_size)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--from', dest='folder', required=True,
                        help='a fine-tuned classifier folder (bert-gluon finetune --out)')
    parser.add_argument('--sentences', type=int, default=512,
                        help='WikiText-2 validation lines for the embeddings')
    parser.add_argument('--json', metavar='PATH', help='also write the figures as JSON')
    args = parser.parse_args()
    from bert_gluon.data import find_dataset
    from bert_gluon.data.pairs import read_pairs
    from bert_gluon.finetuning import classification_metrics
    from bert_gluon.serving.engines import load_model
    print('\n'.join(harness.header_lines(harness.threads_default())))
    with open(os.path.join(args.folder, 'classifier.json'), encoding='utf-8') as f:
        task = json.load(f)['task']
    first, second, labels = read_pairs(task, 'dev')
    pairs = list(zip(first, second))
    table = {'task': task, 'examples': len(pairs), 'classifier': {}, 'embeddings': {}}
    print(f'\n{task} dev, {len(pairs)} pairs, {args.folder}')
    print(f'{"engine":<12}{"precision":<10}{"accuracy":>9}{"F1":>8}{"agrees with float32":>21}')
    reference = None
    for engine, precision in RUNS:
        try:
            model = load_model(args.folder, engine, precision)
        except ValueError as exc:  # e.g. bf16 on a CPU without it
            print(f'{engine:<12}{precision:<10} cannot run: {exc}')
            continue
        predicted = predictions(model, pairs)
        reference = predicted if reference is None else reference
        metrics = classification_metrics(predicted, labels)
        agree = float(onp.mean(predicted == reference))
        table['classifier'][f'{engine}-{precision}'] = dict(metrics, agrees_with_float32=agree)
        print(f'{engine:<12}{precision:<10}{metrics["accuracy"]:>9.4f}{metrics["f1"]:>8.4f}'
              f'{agree:>21.4f}')
    with open(find_dataset('wikitext-2') / 'wiki.valid.tokens', encoding='utf-8') as f:
        texts = [line.strip() for line in f if len(line.split()) > 8][:args.sentences]
    print(f'\nall-MiniLM-L6-v2 sentence embeddings of {len(texts)} WikiText-2 validation '
          'lines, cosine to float32 (onnxruntime)')
    base = embeddings(load_model('all-MiniLM-L6-v2', 'onnxruntime', 'float32'), texts)
    for engine, precision in (('mxnet', 'int8'), ('onnxruntime', 'int8'), ('openvino', 'int8'),
                              ('mxnet', 'bfloat16')):
        vectors = embeddings(load_model('all-MiniLM-L6-v2', engine, precision), texts)
        cosine = (vectors * base).sum(1) / (onp.linalg.norm(vectors, axis=1)
                                            * onp.linalg.norm(base, axis=1))
        table['embeddings'][f'{engine}-{precision}'] = {'mean': float(cosine.mean()),
                                                        'min': float(cosine.min())}
        print(f'{engine:<12}{precision:<10} mean {cosine.mean():.4f}  min {cosine.min():.4f}')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(dict(table, machine=harness.machine()), f, indent=1)


if __name__ == '__main__':
    main()
