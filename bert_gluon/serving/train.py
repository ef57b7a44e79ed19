"""SageMaker training entry point: pretraining or fine-tuning from the
training job's variables, the model written where SageMaker uploads it.

The estimator's entry_point is a one-line script (SageMaker runs a file it
uploads): `from bert_gluon.serving.train import main; main()`, with the
package installed in the image. Hyperparameters arrive as flags:
  --job pretrain|finetune, and pretrain's / finetune's flags (--steps,
  --batch-size (global), --max-len, --lr, --dtype, --config, --task,
  --from, --epochs, --freeze-encoder, --seed)
From the environment:
  SM_MODEL_DIR            the output folder (written by the first worker only)
  SM_CHANNEL_TRAINING     the data root (wikitext-2/, glue_data/...), if given
  SM_NUM_GPUS             the contexts: every GPU, else the CPU
  SM_HOSTS, SM_CURRENT_HOST
  DMLC_ROLE=worker        SageMaker's parameter_server distribution started
                          the scheduler and servers: kvstore 'dist_sync'
  sagemaker_mpi_enabled   (SM_FRAMEWORK_PARAMS) its MPI option: 'horovod'
The model folder also gets code/inference.py, so it deploys as it is
(bert_gluon.serving.inference).
"""
import argparse
import json
import os
from pathlib import Path

__all__ = ['main', 'kvstore_from_environment']

INFERENCE_ENTRY = ('# SageMaker serving entry point: bert_gluon\'s handlers\n'
                   'from bert_gluon.serving.inference import (  # noqa: F401\n'
                   '    input_fn, model_fn, output_fn, predict_fn)\n')


def kvstore_from_environment(env=None):
    """The kvstore SageMaker's variables ask for."""
    env = os.environ if env is None else env
    if env.get('DMLC_ROLE') == 'worker':
        return 'dist_sync'
    try:
        framework = json.loads(env.get('SM_FRAMEWORK_PARAMS', '{}'))
    except ValueError:
        framework = {}
    if framework.get('sagemaker_mpi_enabled') or 'OMPI_COMM_WORLD_SIZE' in env:
        return 'horovod'
    return 'device'


def _contexts(env):
    import mxnet as mx
    gpus = int(env.get('SM_NUM_GPUS', '0') or 0)
    return [mx.gpu(i) for i in range(gpus)] if gpus else [mx.cpu()]


def build_parser():
    """Flags left unset take the API's defaults (pretrain's, finetune's):
    each default is defined once, there."""
    from ..config import TRAINING_DTYPES
    from ..data.pairs import TASKS
    parser = argparse.ArgumentParser(description='bert_gluon on SageMaker')
    parser.add_argument('--job', choices=['pretrain', 'finetune'], default='pretrain')
    for flag, kind in (('--steps', int), ('--epochs', int), ('--batch-size', int),
                       ('--max-len', int), ('--lr', float), ('--seed', int)):
        parser.add_argument(flag, type=kind, default=None)
    parser.add_argument('--dtype', default=None, choices=TRAINING_DTYPES)
    parser.add_argument('--config', default=None)
    # what a fine-tuning job tunes, and from what, when the estimator does not say
    parser.add_argument('--task', default='MRPC', choices=sorted(TASKS))
    parser.add_argument('--from', dest='pretrained', default='all-MiniLM-L6-v2')
    parser.add_argument('--freeze-encoder', type=lambda s: str(s).lower() in ('1', 'true'),
                        default=None)
    return parser


def main(argv=None, env=None):
    """The SageMaker training entry point: pretrain or fine-tune with the job's
    hyperparameters (`argv`) and SM_* / DMLC_* variables (`env`, default os.environ)."""
    env = os.environ if env is None else env
    parser = build_parser()
    parser.add_argument('--_ps_port', '--_ps_verbose', dest='_toolkit', action='append',
                        help=argparse.SUPPRESS)  # the MXNet container's own, passed along too
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # SageMaker passes every hyperparameter: name the ones not taken
        raise SystemExit(f'bert_gluon.serving.train: unknown hyperparameters {unknown}')
    model_dir = Path(env.get('SM_MODEL_DIR', 'model'))
    data_dir = env.get('SM_CHANNEL_TRAINING')
    ctx, kvstore = _contexts(env), kvstore_from_environment(env)
    own = {'pretrain': {'num_steps': args.steps, 'config': args.config},
           'finetune': {'num_epochs': args.epochs, 'freeze_encoder': args.freeze_encoder}}
    given = dict(own[args.job], batch_size=args.batch_size, max_len=args.max_len, lr=args.lr,
                 dtype=args.dtype, seed=args.seed)
    common = dict(ctx=ctx, out_dir=model_dir, overwrite=True, data_dir=data_dir,
                  kvstore=kvstore, progress=False,
                  **{k: v for k, v in given.items() if v is not None})
    if args.job == 'pretrain':
        from ..pretraining import pretrain
        result = pretrain(**common)
    else:
        from ..finetuning import finetune
        result = finetune(args.task, args.pretrained, **common)
    from ..distributed import connect
    if connect(kvstore, ctx).is_chief:
        (model_dir / 'code').mkdir(exist_ok=True)
        (model_dir / 'code' / 'inference.py').write_text(INFERENCE_ENTRY)
        print(f'bert_gluon: model written to {model_dir}')
    return result


if __name__ == '__main__':
    main()
