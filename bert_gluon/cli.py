"""`bert-gluon` command line: thin subcommands over the package's modules.

MXNet reads OMP_NUM_THREADS only when it is imported and, unset, uses half
the cores; glibc gives large fresh buffers huge pages only when asked
(GLIBC_TUNABLES=glibc.malloc.hugetlb=1; fresh large outputs page-fault
without them). The command sets whichever of the two is unset (and says so) by
starting itself again before MXNet is imported.
"""
import argparse
import inspect
import math
import os
import sys

__all__ = ['main']


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 31:
        raise argparse.ArgumentTypeError(f'expected an integer in [0, 2**31), got {text!r}')
    return value


def _port(text):
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f'expected a TCP port, 1 to 65535, got {text!r}')
    return value


def _hosts(text):
    hosts = text.split(',')
    if not all(host.strip() for host in hosts):
        raise argparse.ArgumentTypeError(f'expected comma-separated host names, none empty, '
                                         f'got {text!r}')
    return [host.strip() for host in hosts]


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f'expected a finite positive number, got {text!r}')
    return value


def _demo(args):
    """The book's cells, through the package: the shapes it prints."""
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


def _contexts(text):
    from .training import parse_contexts
    try:
        return parse_contexts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(': ', 1)[-1])


def _pretrain(args):
    from .pretraining import pretrain
    pretrain(num_steps=args.steps, batch_size=args.batch_size,
             max_len=args.max_len, lr=args.lr, config=args.config, ctx=args.ctx,
             out_dir=args.out, checkpoint_every=args.checkpoint_every,
             resume=args.resume, overwrite=args.overwrite, seed=args.seed,
             data_dir=args.data_dir, dynamic_masking=args.dynamic_masking,
             validate=not args.no_valid, progress=not args.no_progress,
             backend=args.backend, dtype=args.dtype, kvstore=args.kvstore)
    return 0


def _finetune(args):
    from .finetuning import finetune
    finetune(args.task, args.pretrained, num_epochs=args.epochs,
             batch_size=args.batch_size, max_len=args.max_len, lr=args.lr,
             freeze_encoder=args.freeze_encoder, ctx=args.ctx, out_dir=args.out,
             resume=args.resume, overwrite=args.overwrite, seed=args.seed,
             data_dir=args.data_dir, progress=not args.no_progress, dtype=args.dtype,
             kvstore=args.kvstore)
    return 0


def _quantize(args):
    from .quantization import CALIBRATION_FILE
    from .serving.calibration import calibrate_int8
    record = calibrate_int8(args.pretrained, args.calibrate, max_len=args.max_len,
                            min_cosine=args.min_cosine, min_agreement=args.min_agreement,
                            progress=not args.no_progress)
    measured = (f"{record['agreement']:.2%} of the predictions unchanged (bar "
                f"{record['min_agreement']:.0%})" if record['kind'] == 'classifier' else
                f"sentence embeddings' cosine to float32 mean {record['cosine_mean']:.4f}, "
                f"minimum {record['cosine_min']:.4f} (bar {record['min_cosine']})")
    print(f"int8 on {record['texts']} texts of {args.calibrate}: {measured}; "
          f"{'passed' if record['passed'] else 'MISSED THE BAR'}; recorded in "
          f"{os.path.join(args.pretrained, CALIBRATION_FILE)}")
    return 0 if record['passed'] else 1


def _encode(args):
    import io
    import numpy as onp
    from .fileio import atomic_write_bytes, check_output_file
    from .pretrained import from_pretrained
    from .represent import encode_batch, read_texts
    output = check_output_file(args.output, '--output', overwrite=True)
    texts = read_texts(args.input)
    net, tokenizer, _ = from_pretrained(args.pretrained)
    vectors = encode_batch(net, texts, tokenizer, max_len=args.max_len,
                           pooling=args.pooling)
    buffer = io.BytesIO()
    onp.save(buffer, vectors)  # to a buffer: np.save would add '.npy' to a path
    atomic_write_bytes(output, buffer.getvalue())
    print(f'{len(texts)} texts -> {output} {vectors.shape}')
    return 0


def _export(args):
    from .classifier import is_classifier_folder, load_classifier
    from .pretrained import from_pretrained
    from .tokenization import WordPieceTokenizer
    if args.format == 'onnx':  # a classifier exports too: its logits
        from .onnx_export import export_onnx
        load = load_classifier if is_classifier_folder(args.pretrained) else from_pretrained
        net = load(args.pretrained)[0]
        if args.precision == 'int8':  # the float32 graph first, then quantized
            import tempfile
            from .fileio import check_output_file
            from .quantization import quantize_onnx
            check_output_file(args.output, '--output', args.overwrite)  # before any work
            with tempfile.TemporaryDirectory() as tmp:
                float32 = export_onnx(net, f'{tmp}/float32.onnx', args.heads)
                print(f'onnx int8: {quantize_onnx(float32, args.output, args.overwrite)}')
            return 0
        print(f'onnx: {export_onnx(net, args.output, args.heads, args.overwrite)}')
        return 0
    if args.precision != 'float32':
        raise ValueError(f'--precision {args.precision}: only --format onnx is quantized')
    net, tokenizer, _ = from_pretrained(args.pretrained)
    if args.format == 'symbol':
        from .export import export_model
        paths = export_model(net, args.output, overwrite=args.overwrite)
    else:
        from .huggingface import export_huggingface
        wordpiece = tokenizer if isinstance(tokenizer, WordPieceTokenizer) else None
        paths = (export_huggingface(net, args.output, wordpiece, overwrite=args.overwrite),)
    print(f'{args.format}: ' + ', '.join(map(str, paths)))
    return 0


def _launch(args):
    from .distributed import launch
    command = args.job[1:] if args.job[:1] == ['--'] else args.job
    if not command:
        raise ValueError("the training command each worker runs, after '--': "
                         'bert-gluon launch -- bert-gluon pretrain --kvstore dist_sync')
    try:
        launch(command, num_workers=args.workers, num_servers=args.servers,
               hosts=args.hosts, port=args.port, ssh_timeout=args.ssh_timeout)
    except RuntimeError as exc:  # a role failed: the job was ended
        print(f'bert-gluon launch: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('bert-gluon launch: interrupted: ended the whole job', file=sys.stderr)
        return 130
    return 0


def _tune(args):
    """Who multiplies fastest here, in each precision, measured now."""
    from . import kernels
    from .kernels import providers
    reason = kernels.unavailable_reason()
    if reason:
        raise ValueError(f'the native kernels cannot run here: {reason}')
    for precision, chosen in providers.tune().items():
        print(f"{precision}: {chosen['provider']} ({chosen['why']})")
    print(f'cached in {kernels.build_dir() / "providers.json"}; models made from now on '
          'use these (net.plan says which ran)')


def _defaults(function):
    """The API's defaults, read by the command's flags: defined once."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def build_parser():
    from .execution import BACKENDS
    from .config import TRAINING_DTYPES, list_configs
    from .data.pairs import TASKS
    from .distributed import KVSTORES
    from .finetuning import finetune
    from .pretraining import pretrain
    from .represent import POOLINGS, encode_batch
    pre_defaults, fin_defaults = _defaults(pretrain), _defaults(finetune)
    parser = argparse.ArgumentParser(
        prog='bert-gluon', description='BERT as d2l teaches it, on MXNet Gluon')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help="run the book's BERT cells and print "
                                       'their shapes')
    demo.set_defaults(func=_demo)
    tune = sub.add_parser('tune', help='measure which library multiplies fastest on this '
                                       'CPU, float32 and bf16 (done once, at first use, '
                                       'otherwise)')
    tune.set_defaults(func=_tune)

    pre = sub.add_parser('pretrain', help='pretrain on WikiText-2 (the book\'s '
                                          'defaults: 50 steps, batch 512, max_len 64)')
    pre.add_argument('--steps', type=_positive_int, default=pre_defaults['num_steps'])
    pre.add_argument('--batch-size', type=_positive_int, default=pre_defaults['batch_size'])
    pre.add_argument('--max-len', type=_positive_int, default=pre_defaults['max_len'])
    pre.add_argument('--lr', type=_positive_float, default=pre_defaults['lr'])
    pre.add_argument('--config', default=pre_defaults['config'], choices=list_configs())
    pre.add_argument('--ctx', type=_contexts, default='cpu',
                     help="'cpu', 'cpu:0,cpu:1', 'gpu:0,gpu:1'")
    pre.add_argument('--out', default=pre_defaults['out_dir'], help='output folder')
    pre.add_argument('--checkpoint-every', type=_positive_int, default=None,
                     help='steps between checkpoints (default: steps / 5)')
    pre.add_argument('--resume', action='store_true',
                     help="continue from the output folder's newest intact "
                          'checkpoint (with the same arguments)')
    pre.add_argument('--overwrite', action='store_true',
                     help="replace a previous run's outputs in the output folder")
    pre.add_argument('--backend', default='auto', choices=BACKENDS,
                     help="'native' CPU kernels or MXNet's operators (default: "
                          'native where they run)')
    pre.add_argument('--kvstore', default=pre_defaults['kvstore'], choices=KVSTORES,
                     help="'device'/'local': this process's contexts; 'dist_sync' "
                          "(under `bert-gluon launch` or SageMaker) or 'horovod' "
                          '(under horovodrun): one worker of a job, --batch-size global')
    pre.add_argument('--dtype', default=None, choices=TRAINING_DTYPES,
                     help="the products' precision (bfloat16: CPUs with AVX512_BF16 "
                          'or AMX; parameters stay float32)')
    pre.add_argument('--seed', type=_seed, default=pre_defaults['seed'])
    pre.add_argument('--data-dir', default=None,
                     help='root holding wikitext-2/ (default: $BERT_GLUON_DATA, '
                          'then the cache, then a download)')
    pre.add_argument('--dynamic-masking', action='store_true',
                     help='fresh MLM masks every epoch (the book masks once)')
    pre.add_argument('--no-valid', action='store_true',
                     help='skip the held-out evaluation on wiki.valid.tokens')
    pre.add_argument('--no-progress', action='store_true')
    pre.set_defaults(func=_pretrain)

    fin = sub.add_parser('finetune', help='fine-tune on a sentence-pair task '
                                          '(dev accuracy and F1 every epoch)')
    fin.add_argument('--task', required=True, choices=sorted(TASKS))
    fin.add_argument('--from', dest='pretrained', required=True,
                     help="a pretrain output folder, 'all-MiniLM-L6-v2', "
                          "'bert.small', 'bert.base' or a Hugging Face BERT folder")
    fin.add_argument('--epochs', type=_positive_int, default=fin_defaults['num_epochs'])
    fin.add_argument('--batch-size', type=_positive_int, default=fin_defaults['batch_size'])
    fin.add_argument('--max-len', type=_positive_int, default=fin_defaults['max_len'])
    fin.add_argument('--lr', type=_positive_float, default=fin_defaults['lr'])
    fin.add_argument('--freeze-encoder', action='store_true')
    fin.add_argument('--ctx', type=_contexts, default='cpu')
    fin.add_argument('--out', default=fin_defaults['out_dir'])
    fin.add_argument('--resume', action='store_true')
    fin.add_argument('--overwrite', action='store_true')
    fin.add_argument('--kvstore', default=fin_defaults['kvstore'], choices=KVSTORES)
    fin.add_argument('--dtype', default=None, choices=TRAINING_DTYPES,
                     help="the products' precision (default: the checkpoint's)")
    fin.add_argument('--seed', type=_seed, default=fin_defaults['seed'])
    fin.add_argument('--data-dir', default=None)
    fin.add_argument('--no-progress', action='store_true')
    fin.set_defaults(func=_finetune)

    exp = sub.add_parser('export', help='write a model as MXNet symbol + params, ONNX '
                                        '(onnxruntime) or a Hugging Face BERT folder')
    exp.add_argument('--from', dest='pretrained', required=True)
    exp.add_argument('--format', required=True, choices=['symbol', 'onnx', 'huggingface'])
    exp.add_argument('--output', required=True,
                     help='symbol: a prefix; onnx: a .onnx file; huggingface: a folder')
    exp.add_argument('--overwrite', action='store_true',
                     help='replace existing files (a non-empty folder for huggingface)')
    exp.add_argument('--heads', action='store_true',
                     help='onnx: the pretraining heads too (masked_positions in; mlm_logits, '
                          'nsp_logits out); without, the encoder (last_hidden_state, '
                          'pooler_output, sentence_embedding); a classifier folder: logits')
    exp.add_argument('--precision', choices=['float32', 'int8'], default='float32',
                     help="onnx: int8 quantizes the weight products (bert_gluon/quantization.py)"
                          "; onnxruntime and OpenVINO run it")
    exp.set_defaults(func=_export)

    qua = sub.add_parser('quantize', help="measure a model folder's int8 (dtype='int8') "
                                          'against float32 on your own sentences and '
                                          'record it in the folder (int8.json)')
    qua.add_argument('--from', dest='pretrained', required=True,
                     help='a pretrained or fine-tuned classifier folder')
    qua.add_argument('--calibrate', required=True, metavar='FILE',
                     help='UTF-8 text like what the model will serve: a sentence (or a '
                          'tab-separated pair) per line')
    from .serving.calibration import calibrate_int8
    qua_defaults = _defaults(calibrate_int8)
    qua.add_argument('--max-len', type=_positive_int, default=qua_defaults['max_len'])
    qua.add_argument('--min-cosine', type=_positive_float, default=qua_defaults['min_cosine'],
                     help="an encoder's bar: the lowest sentence embedding cosine to float32")
    qua.add_argument('--min-agreement', type=_positive_float,
                     default=qua_defaults['min_agreement'],
                     help="a classifier's bar: the share of predictions unchanged")
    qua.add_argument('--no-progress', action='store_true')
    qua.set_defaults(func=_quantize)

    lau = sub.add_parser('launch', help="run a command as the workers of MXNet's "
                                        'parameter-server job (dist_sync), with its '
                                        'scheduler and servers, all watched')
    lau.add_argument('--workers', type=_positive_int, default=2)
    lau.add_argument('--servers', type=_positive_int, default=1)
    lau.add_argument('--hosts', type=_hosts, default='127.0.0.1',
                     help='comma-separated hosts, round robin (others over ssh); '
                          'the scheduler runs on the first')
    lau.add_argument('--port', type=_port, default=None,
                     help="the scheduler's port (default: a free one)")
    lau.add_argument('--ssh-timeout', type=_positive_int, default=20,
                     help='seconds ssh waits to connect to another host (default 20)')
    lau.add_argument('job', nargs=argparse.REMAINDER,
                     help="-- then the training command, e.g. -- bert-gluon pretrain "
                          '--kvstore dist_sync')
    lau.set_defaults(func=_launch)

    enc = sub.add_parser('encode', help='sentence (or tab-separated pair) '
                                        'representations to a .npy file')
    enc.add_argument('--from', dest='pretrained', required=True)
    enc.add_argument('--input', required=True, help='UTF-8 text, one per line')
    enc.add_argument('--output', required=True, help='.npy file to write')
    enc_defaults = _defaults(encode_batch)
    enc.add_argument('--pooling', default=enc_defaults['pooling'], choices=POOLINGS)
    enc.add_argument('--max-len', type=_positive_int, default=enc_defaults['max_len'])
    enc.set_defaults(func=_encode)
    for command in sub.choices.values():  # --help shows the API's defaults
        command.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    return parser


def main(argv=None):
    """`bert-gluon` with `argv` (default: the command line's); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad data, files, values
        parser.exit(2, f'bert-gluon {args.command}: error: {exc}\n')


def entry():
    """Console script: a thread per CPU this process may use, and huge pages,
    unless the user chose."""
    defaults = {'OMP_NUM_THREADS': str(len(os.sched_getaffinity(0))),
                'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
    unset = {k: v for k, v in defaults.items() if k not in os.environ}
    if unset:
        os.environ.update(unset)
        print('bert-gluon: ' + ', '.join(f'{k}={v}' for k, v in unset.items())
              + ' (unset; set them to choose)', file=sys.stderr)
        os.execv(sys.executable, [sys.executable, '-m', 'bert_gluon.cli',
                                  *sys.argv[1:]])
    sys.exit(main())


if __name__ == '__main__':
    sys.exit(main())
