"""`bert-gluon` command line: thin subcommands over the package's modules."""
import argparse
import sys

__all__ = ['main']


def _demo(args):
    """The book's cells, through the package: shapes and losses it prints."""
    from mxnet import gluon, np
    from .book import BERTEncoder, MaskLM, NextSentencePred

    vocab_size, num_hiddens, ffn_num_hiddens = 10000, 768, 1024
    num_heads, num_layers, dropout = 4, 2, 0.1
    encoder = BERTEncoder(vocab_size, num_hiddens, ffn_num_hiddens, num_heads,
                          num_layers, dropout)
    encoder.initialize()
    tokens = np.random.randint(0, 10000, (2, 8))
    segments = np.array([[0, 0, 0, 0, 1, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1, 1, 1]])
    encoded_X = encoder(tokens, segments, None)
    print('encoded_X', encoded_X.shape)
    mlm = MaskLM(vocab_size, num_hiddens)
    mlm.initialize()
    mlm_positions = np.array([[0, 2, 1], [6, 5, 7]])
    mlm_Y_hat = mlm(encoded_X, mlm_positions)
    print('mlm_Y_hat', mlm_Y_hat.shape)
    mlm_Y = np.array([[1, 3, 5], [10, 20, 30]])
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    mlm_l = loss(mlm_Y_hat.reshape((-1, vocab_size)), mlm_Y.reshape(-1))
    print('mlm_l', mlm_l.shape)
    nsp = NextSentencePred(num_hiddens)
    nsp.initialize()
    nsp_Y_hat = nsp(encoded_X)
    print('nsp_Y_hat', nsp_Y_hat.shape)
    nsp_l = loss(nsp_Y_hat, np.array([0, 1]))
    print('nsp_l', nsp_l.shape)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog='bert-gluon', description='BERT as d2l teaches it, on MXNet Gluon')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help="run the book's BERT cells and print "
                                       'their shapes')
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
