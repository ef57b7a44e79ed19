"""The Hugging Face BERT folder: config.json, model.safetensors, vocab.txt,
read into the twin and written from it with one name table and one table of
config fields, each read in both directions. No torch: `safetensors.numpy`.

    net, tokenizer, config = load_hf_bert(folder)
    export_huggingface(net, folder, tokenizer)   # transformers.BertModel loads it
"""
import re
import warnings
from pathlib import Path

import numpy as onp
import mxnet as mx

from .config import get_config
from .fileio import (atomic_write, atomic_write_json, check_output_folder, read_json)
from .model import HybridBERTModel
from .tokenization import WordPieceTokenizer, check_vocab_size, load_tokenizer

__all__ = ['HF_TO_TWIN', 'HF_SKIPPED', 'HEADS_NOT_IN_HF', 'HF_CONFIG_FIELDS', 'twin_name',
           'hf_name', 'config_from_hf', 'config_to_hf', 'load_hf_bert', 'export_huggingface']

# Hugging Face BertModel name <-> twin parameter name, and how the array
# changes on the way in ('add_batch_axis'; undone on the way out).
# {layer}: a layer number, {kind}: weight or bias. Linear weights are (out, in) on both sides.
HF_TO_TWIN = (
    ('embeddings.word_embeddings.weight', 'encoder.token_embedding.weight', None),
    ('embeddings.token_type_embeddings.weight', 'encoder.segment_embedding.weight', None),
    # (max_len, H) -> d2l's (1, max_len, H) pos_embedding
    ('embeddings.position_embeddings.weight', 'encoder.pos_embedding', 'add_batch_axis'),
    ('embeddings.LayerNorm.weight', 'encoder.embedding_ln.gamma', None),
    ('embeddings.LayerNorm.bias', 'encoder.embedding_ln.beta', None),
    ('encoder.layer.{layer}.attention.self.query.{kind}', 'encoder.blks.{layer}.attention.W_q.{kind}', None),
    ('encoder.layer.{layer}.attention.self.key.{kind}', 'encoder.blks.{layer}.attention.W_k.{kind}', None),
    ('encoder.layer.{layer}.attention.self.value.{kind}', 'encoder.blks.{layer}.attention.W_v.{kind}', None),
    ('encoder.layer.{layer}.attention.output.dense.{kind}', 'encoder.blks.{layer}.attention.W_o.{kind}', None),
    ('encoder.layer.{layer}.attention.output.LayerNorm.weight', 'encoder.blks.{layer}.addnorm1.ln.gamma', None),
    ('encoder.layer.{layer}.attention.output.LayerNorm.bias', 'encoder.blks.{layer}.addnorm1.ln.beta', None),
    ('encoder.layer.{layer}.intermediate.dense.{kind}', 'encoder.blks.{layer}.ffn.dense1.{kind}', None),
    ('encoder.layer.{layer}.output.dense.{kind}', 'encoder.blks.{layer}.ffn.dense2.{kind}', None),
    ('encoder.layer.{layer}.output.LayerNorm.weight', 'encoder.blks.{layer}.addnorm2.ln.gamma', None),
    ('encoder.layer.{layer}.output.LayerNorm.bias', 'encoder.blks.{layer}.addnorm2.ln.beta', None),
    # BERT's pooler is the book's NSP hidden layer
    ('pooler.dense.{kind}', 'nsp.mlp.0.{kind}', None),
)
_PLACEHOLDERS = {'layer': r'\d+', 'kind': 'weight|bias'}
# Checkpoint tensors deliberately not used, and why (regexes).
HF_SKIPPED = {
    r'embeddings\.position_ids': 'a constant buffer 0..max_len-1, not a weight',
}
# Twin parameters a BertModel checkpoint does not carry: the pretraining
# heads (sentence-transformers models ship the encoder and pooler only).
HEADS_NOT_IN_HF = (r'mlm\..*', r'nsp\.mlp\.1\..*')

# Hugging Face config field <-> BERTConfig field. Real BERT has two dropout
# rates; the twin one (a differing attention rate is warned about on read).
HF_CONFIG_FIELDS = (
    ('vocab_size', 'vocab_size'), ('hidden_size', 'num_hiddens'),
    ('intermediate_size', 'ffn_num_hiddens'), ('num_attention_heads', 'num_heads'),
    ('num_hidden_layers', 'num_layers'), ('max_position_embeddings', 'max_len'),
    ('hidden_act', 'activation'), ('layer_norm_eps', 'layer_norm_eps'),
    ('type_vocab_size', 'num_segments'), ('hidden_dropout_prob', 'dropout'),
    ('attention_probs_dropout_prob', 'dropout'),
)
_HF_CONSTANTS = {'architectures': ['BertModel'], 'model_type': 'bert',
                 'position_embedding_type': 'absolute', 'initializer_range': 0.02,
                 'pad_token_id': 0}


def _pattern(template):
    parts = re.split(r'\{(\w+)\}', template)  # literal, placeholder, literal, ...
    return re.compile(''.join(f'(?P<{p}>{_PLACEHOLDERS[p]})' if i % 2 else re.escape(p)
                              for i, p in enumerate(parts)))


_PATTERNS = [(_pattern(hf), _pattern(twin), hf, twin, change)
             for hf, twin, change in HF_TO_TWIN]


def twin_name(hf):
    """(twin parameter name, change) of a Hugging Face tensor name, or (None, None)."""
    for hf_pattern, _, _, twin, change in _PATTERNS:
        match = hf_pattern.fullmatch(hf)
        if match:
            return twin.format(**match.groupdict()), change
    return None, None


def hf_name(twin):
    """(Hugging Face tensor name, change) of a twin parameter name, or (None, None)."""
    for _, twin_pattern, hf, _, change in _PATTERNS:
        match = twin_pattern.fullmatch(twin)
        if match:
            return hf.format(**match.groupdict()), change
    return None, None


def config_from_hf(hf, path='config.json'):
    """A BERTConfig from a Hugging Face BERT config.json dict; its
    pretraining heads are marked untrained (BertModel's checkpoints have no
    MLM head and no NSP output layer, and none is read)."""
    if not isinstance(hf, dict):
        raise ValueError(f'{path}: expected a JSON object, got {type(hf).__name__}')
    dropouts = ('hidden_dropout_prob', 'attention_probs_dropout_prob')
    missing = [k for k, _ in HF_CONFIG_FIELDS if k not in hf and k not in dropouts]
    if missing:
        raise ValueError(f'{path}: a BERT config needs the fields {missing}')
    if hf.get('model_type') != 'bert' or hf.get('position_embedding_type',
                                                'absolute') != 'absolute':
        raise ValueError(f'{path}: expected a BERT model with absolute '
                         f'positions, got model_type={hf.get("model_type")!r}')
    if hf.get('hidden_act') not in ('gelu', 'relu'):
        raise ValueError(f'{path}: hidden_act {hf.get("hidden_act")!r} '
                         "is not supported (expected 'gelu' or 'relu')")
    rates = [float(hf.get(k, 0.1)) for k in dropouts]
    if rates[0] != rates[1]:
        warnings.warn(f'{path}: the twin has one dropout rate; hidden_dropout_prob '
                      f'{rates[0]} is used for attention too (the checkpoint says '
                      f'{rates[1]}): inference is unaffected')
    fields = {ours: hf[theirs] for theirs, ours in HF_CONFIG_FIELDS if theirs not in dropouts}
    try:
        return get_config('google.bert.base', dropout=rates[0], pretraining_heads=False,
                          **dict(fields, layer_norm_eps=float(fields['layer_norm_eps'])))
    except (TypeError, ValueError) as exc:  # a field of the wrong type or range
        raise ValueError(f'{path}: {exc}') from exc


def config_to_hf(config):
    """The Hugging Face config.json dict of a real-BERT BERTConfig."""
    return dict(_HF_CONSTANTS, **{theirs: getattr(config, ours)
                                  for theirs, ours in HF_CONFIG_FIELDS})


def load_hf_bert(folder, ctx=None, **changes):
    """(net, WordPieceTokenizer, config) from a Hugging Face BERT folder.
    Fails on any checkpoint tensor neither mapped nor listed in HF_SKIPPED,
    on any twin parameter left unassigned outside HEADS_NOT_IN_HF, and on a
    vocab.txt whose size is not the embedding's rows."""
    from safetensors.numpy import load_file
    folder = Path(folder)
    for name in ('config.json', 'model.safetensors', 'vocab.txt'):
        if not (folder / name).is_file():
            raise ValueError(f'{folder} is not a Hugging Face BERT folder: no {name}')
    config = config_from_hf(read_json(folder / 'config.json'), folder / 'config.json')
    config = config.replace(**changes)
    tokenizer = load_tokenizer(folder, name='vocab.txt')
    check_vocab_size(tokenizer, config, folder)
    try:
        tensors = load_file(str(folder / 'model.safetensors'))
    except Exception as exc:
        raise ValueError(f'{folder / "model.safetensors"} is unreadable: {exc}') from exc
    # Some exports prefix every name with 'bert.'
    tensors = {k[5:] if k.startswith('bert.') else k: v for k, v in tensors.items()}
    net = HybridBERTModel(config)
    net.initialize(mx.init.Normal(0.02), ctx=ctx or [mx.cpu()])
    params = net._collect_params_with_prefix()
    assigned, unused = set(), []
    for hf, array in tensors.items():
        name, change = twin_name(hf)
        if name is None:
            if not any(re.fullmatch(p, hf) for p in HF_SKIPPED):
                unused.append(hf)
            continue
        if name not in params:
            raise ValueError(f'checkpoint tensor {hf} maps to {name}, which '
                             'the model does not have')
        if change == 'add_batch_axis':
            array = array[None]
        if tuple(params[name].shape) != array.shape:
            raise ValueError(f'checkpoint tensor {hf} has shape {array.shape}, '
                             f'{name} expects {params[name].shape}')
        params[name].set_data(mx.np.array(array, dtype='float32'))
        assigned.add(name)
    if unused:
        raise ValueError(f'checkpoint tensors neither used nor skipped: {sorted(unused)}')
    missing = [n for n in params if n not in assigned
               and not any(re.fullmatch(p, n) for p in HEADS_NOT_IN_HF)]
    if missing:
        raise ValueError(f'model parameters the checkpoint does not fill: {missing}')
    return net, tokenizer, config


def export_huggingface(net, folder, tokenizer=None, overwrite=False):
    """A real-BERT twin (learned positions, embedding LayerNorm, biased
    attention) as a Hugging Face BERT folder: config.json, model.safetensors
    (BertModel's names: HF_TO_TWIN read backwards) and, given a WordPiece
    tokenizer, vocab.txt. transformers.BertModel loads it with equal outputs.
    The pretraining heads, which BertModel has not, stay out. A folder
    holding files is refused unless `overwrite`."""
    from safetensors.numpy import save_file
    if not isinstance(net, HybridBERTModel):
        raise ValueError(f'net must be a bert_gluon.HybridBERTModel, got {type(net).__name__}')
    config = net.config
    if not (config.position_embedding == 'learned' and config.embedding_layer_norm
            and config.use_bias):
        raise ValueError('the Hugging Face format holds real-BERT configs (learned positions, '
                         'embedding LayerNorm, biased attention); this config has '
                         f'{config.position_embedding} positions, embedding_layer_norm='
                         f'{config.embedding_layer_norm}, use_bias={config.use_bias}')
    if tokenizer is not None and not isinstance(tokenizer, WordPieceTokenizer):
        raise ValueError('tokenizer: the Hugging Face format takes a WordPiece vocab.txt; '
                         f'got a {type(tokenizer).__name__}')
    folder = check_output_folder(folder, 'folder', overwrite)
    tensors = {}
    for name, param in net._collect_params_with_prefix().items():
        hf, change = hf_name(name)
        if hf is None:
            continue  # the MLM and NSP output layers: not in BertModel
        array = param.data().asnumpy()
        tensors[hf] = onp.ascontiguousarray(array[0] if change == 'add_batch_axis' else array)
    atomic_write(folder / 'model.safetensors', lambda tmp: save_file(tensors, tmp))
    atomic_write_json(folder / 'config.json', config_to_hf(config))
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder
