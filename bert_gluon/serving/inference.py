"""Inference handlers for SageMaker's MXNet serving container (and its
multi-model-server): model_fn, input_fn, predict_fn, output_fn.

A model folder (what SageMaker unpacks from model.tar.gz into model_dir;
`bert_gluon.serving.train` writes one, with code/inference.py importing
these) holds one of:
  - a `finetune` output (classifier.json ...): a classifier, answering
    {"labels": [...], "probabilities": [[...], ...]} (label names from the task);
  - a `pretrain` output or a Hugging Face BERT folder: an encoder, answering
    {"embeddings": [[...], ...]} (mean pooling, as sentence-transformers).
Every answer also carries "model": the engine, the precision and, on the
mxnet engine, the execution plan that ran (implementation, provider).

Requests, application/json:
  {"inputs": "one sentence"}  or  {"inputs": ["s1", "s2", ...]}
  {"inputs": [["premise", "hypothesis"], ...]}   sentence pairs
  optional "pooling": "mean" | "cls" (encoders)
Bad requests get a 4xx with a message: 415 (not JSON), 400 (malformed,
empty, more than MAX_BATCH inputs), 413 (a text longer than the model's
max_len in tokens), 406 (an Accept other than JSON).

The engine (engines.py: mxnet, onnxruntime or openvino) and its precision
come from BERT_GLUON_ENGINE and BERT_GLUON_PRECISION (the model's
environment on SageMaker); requests, errors and answers do not depend on it.
"""
import json
import os

import numpy as onp

from ..represent import POOLINGS

__all__ = ['model_fn', 'input_fn', 'predict_fn', 'output_fn', 'MAX_BATCH', 'BadRequest']

MAX_BATCH = 256
JSON = 'application/json'


class BadRequest(Exception):
    """A request the model cannot answer: its HTTP status and why."""
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def _toolkit_error(status, message):
    """The serving toolkit's error type when it is installed (the model
    server then answers with `status`), else BadRequest."""
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError
    except ImportError:
        return BadRequest(status, message)
    return GenericInferenceToolkitError(status, message)


def model_fn(model_dir):
    """The model of `model_dir` on the engine and precision the environment
    asks for (BERT_GLUON_ENGINE: mxnet, onnxruntime or openvino;
    BERT_GLUON_PRECISION: float32, bfloat16 or int8): a ServedModel, a Gluon
    Block as the MXNet container requires."""
    from .engines import load_model
    return load_model(str(model_dir), os.environ.get('BERT_GLUON_ENGINE', 'mxnet'),
                      os.environ.get('BERT_GLUON_PRECISION', 'float32'))


def _media_type(header):
    """A Content-Type or Accept header's type, lower-cased: media types are
    case-insensitive (RFC 9110), so Application/JSON is JSON."""
    return (header or '').split(';')[0].strip().lower()


def input_fn(request_body, content_type=JSON):
    """The request as {'pairs': [(a, b or None), ...], 'pooling': ...}."""
    if _media_type(content_type) != JSON:
        raise _toolkit_error(415, f'content type {content_type!r} is not supported: send '
                                  f'{JSON} ({{"inputs": ["a sentence", ...]}})')
    try:
        text = request_body.decode('utf-8') if isinstance(request_body, (bytes, bytearray)) \
            else request_body
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _toolkit_error(400, f'the body is not UTF-8 JSON: {exc}') from exc
    except RecursionError:
        raise _toolkit_error(400, 'the body nests too deeply: expected {"inputs": '
                                  '[...]}') from None
    if not isinstance(body, dict) or 'inputs' not in body:
        raise _toolkit_error(400, 'expected a JSON object with "inputs": a sentence, a list '
                                  'of sentences, or a list of [a, b] pairs')
    inputs = body['inputs']
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _toolkit_error(400, '"inputs" must be a sentence or a non-empty list')
    if len(inputs) > MAX_BATCH:
        raise _toolkit_error(400, f'"inputs" holds {len(inputs)} texts; at most {MAX_BATCH} '
                                  'per request')
    pairs = []
    for i, item in enumerate(inputs):
        if isinstance(item, str) and item.strip():
            pairs.append((item, None))
        elif (isinstance(item, list) and len(item) == 2
              and all(isinstance(t, str) and t.strip() for t in item)):
            pairs.append(tuple(item))
        else:
            raise _toolkit_error(400, f'"inputs"[{i}] must be a non-empty sentence or a pair '
                                      f'[a, b] of them, got {item!r:.80}')
    pooling = body.get('pooling', POOLINGS[0])
    if pooling not in POOLINGS:
        raise _toolkit_error(400, f'"pooling" must be one of {list(POOLINGS)}, got '
                                  f'{pooling!r:.80}')
    return {'pairs': pairs, 'pooling': pooling}


def _token_count(tokenizer, a, b):
    tokenize = tokenizer.tokenize
    return len(tokenize(a)) + (len(tokenize(b)) + 1 if b is not None else 0) + 2


def predict_fn(data, model):
    """Labels and probabilities (a classifier) or embeddings (an encoder),
    the same whatever the engine."""
    pairs, tokenizer, max_len = data['pairs'], model.tokenizer, model.max_len
    counts = [_token_count(tokenizer, a, b) for a, b in pairs]
    for i, count in enumerate(counts):
        if count > max_len:
            raise _toolkit_error(413, f'"inputs"[{i}] is {count} tokens with its markers; '
                                      f'the model takes at most {max_len}')
    # padded to the longest text, not to max_len (in steps of 16: few graph shapes)
    width = min(max_len, -(-max(counts) // 16) * 16)
    outputs = model.run(*tokenizer.encode_pairs(pairs, width))
    if model.kind == 'encoder':
        embeddings = (outputs['sentence_embedding'] if data['pooling'] == 'mean'
                      else outputs['last_hidden_state'][:, 0, :])
        return {'embeddings': embeddings.tolist(), 'model': model.info}
    logits = outputs['logits'].astype('float64')
    probs = onp.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return {'labels': [model.labels[i] for i in onp.argmax(probs, axis=1)],
            'probabilities': probs.round(6).tolist(), 'label_names': list(model.labels),
            'model': model.info}


def output_fn(prediction, accept=JSON):
    """The prediction as JSON: where the Accept header lists JSON,
    application/* or */* among its types (any order, any q)."""
    offered = [_media_type(part) for part in (accept or JSON).split(',')]
    if not {JSON, 'application/*', '*/*'} & set(offered):
        raise _toolkit_error(406, f'accept {accept!r} is not supported: {JSON} only')
    return json.dumps(prediction)
