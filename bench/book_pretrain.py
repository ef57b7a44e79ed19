"""The book's own pretraining run ("Pretraining BERT"), as its notebook does
it: d2l 0.16.7's `_read_wiki` + `_WikiTextDataset` + DataLoader(shuffle),
`_get_batch_loss_bert`, Adam lr 0.01, Xavier init, dropout 0.2. The reference
our `bert-gluon pretrain` is compared with.

    --model d2l   d2l 0.16.7's BERTModel (learned positions, biases, hidden layer)
    --model seed  the seed section's BERTModel (bert_gluon.book)

    BERT_GLUON_DATA=../shared/data OMP_NUM_THREADS=2 python bench/book_pretrain.py --steps 50
"""
import argparse
import random
import time

import mxnet as mx
from d2l import mxnet as d2l
from mxnet import autograd, gluon, init, npx

npx.set_np()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=50)
    parser.add_argument('--batch-size', type=int, default=512)
    parser.add_argument('--max-len', type=int, default=64)
    parser.add_argument('--model', choices=['d2l', 'seed'], default='d2l')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    import bert_gluon as bg
    from bert_gluon.data import find_dataset

    random.seed(args.seed)
    mx.random.seed(args.seed)
    paragraphs = d2l._read_wiki(str(find_dataset('wikitext-2')))
    train_set = d2l._WikiTextDataset(paragraphs, args.max_len)
    train_iter = gluon.data.DataLoader(train_set, args.batch_size, shuffle=True)
    vocab = train_set.vocab
    if args.model == 'd2l':
        net = d2l.BERTModel(len(vocab), num_hiddens=128, ffn_num_hiddens=256,
                            num_heads=2, num_layers=2, dropout=0.2)
    else:
        net = bg.BERTModel(len(vocab), num_hiddens=128, ffn_num_hiddens=256,
                           num_heads=2, num_layers=2, dropout=0.2)
    devices = [mx.cpu()]
    net.initialize(init.Xavier(), ctx=devices)
    loss = gluon.loss.SoftmaxCELoss()
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01})
    step, seconds = 0, 0.0
    metric = [0.0, 0.0, 0, 0]
    while step < args.steps:
        for batch in train_iter:
            shards = [gluon.utils.split_and_load(elem, devices, even_split=False)
                      for elem in batch]
            start = time.perf_counter()
            with autograd.record():
                mlm_ls, nsp_ls, ls = d2l._get_batch_loss_bert(
                    net, loss, len(vocab), *shards)
            for l in ls:
                l.backward()
            trainer.step(1)
            mlm_l = sum(float(l) for l in mlm_ls) / len(mlm_ls)
            nsp_l = sum(float(l) for l in nsp_ls) / len(nsp_ls)
            metric = [metric[0] + mlm_l, metric[1] + nsp_l,
                      metric[2] + batch[0].shape[0], metric[3] + 1]
            seconds += time.perf_counter() - start
            step += 1
            if step % 10 == 0:
                print(f'step {step}: mlm {mlm_l:.3f} nsp {nsp_l:.3f}', flush=True)
            if step == args.steps:
                break
    print(f'MLM loss {metric[0] / metric[3]:.3f}, NSP loss {metric[1] / metric[3]:.3f}')
    print(f'{metric[2] / seconds:.1f} sentence pairs/sec on {devices}')


if __name__ == '__main__':
    main()
