"""`bert-gluon quantize`: a model folder's int8 (dtype='int8') measured
against float32 on the user's own sentences, and recorded in the folder
(quantization.CALIBRATION_FILE) for serving to check.

    calibrate_int8('runs/mrpc', 'my-sentences.txt')

The twin's int8 fits no scales (each activation row is quantized at run
time with its own), so this is evidence, not a fitted parameter: serving the
folder in int8 refuses the record once the weights change after it, and
warns of one that missed its bar (quantization.check_calibration).
"""
import datetime
import os
from pathlib import Path

import numpy as onp

from ..fileio import atomic_write_bytes, atomic_write_json, check_writable_folder
from ..kernels import cpu_identity, int8_unavailable_reason, providers
from ..pretrained import PRETRAINED, weights_digest
from ..quantization import CALIBRATION_FILE
from ..represent import read_texts
from .engines import load_model

__all__ = ['calibrate_int8', 'unrecognized_share', 'MAX_UNRECOGNIZED']

# A tokenizer's pieces of text in its own language are seldom unknown or word
# fragments (WordPiece '##'): counted once with MiniLM's vocabulary, 6% on
# 500 WikiText-2 lines; one sentence each in German 50%, Russian 83%,
# Chinese 60% ([UNK])
MAX_UNRECOGNIZED = 0.4

def unrecognized_share(tokenizer, texts):
    """The share of `texts`' pieces (sentences or (a, b) pairs) that
    `tokenizer` does not know: [UNK] and '##' word fragments for WordPiece,
    '<unk>' for the book's word Vocab."""
    parts = [part for text in texts for part in (text if isinstance(text, tuple) else (text,))]
    pieces = [piece for part in parts for piece in tokenizer.tokenize(part)]
    if not pieces:
        return 1.0
    if hasattr(tokenizer, 'unk'):  # the book's Vocab: whole words
        unknown = sum(tokenizer[piece] == tokenizer.unk for piece in pieces)
    else:
        unknown = sum(piece == '[UNK]' or piece.startswith('##') for piece in pieces)
    return unknown / len(pieces)


def _outputs(model, texts, batch_size, max_len, progress):
    """The served model's answers for `texts`: sentence embeddings (an
    encoder) or logits (a classifier), batched."""
    from tqdm.auto import tqdm
    key = 'logits' if model.kind == 'classifier' else 'sentence_embedding'
    pairs = [text if isinstance(text, tuple) else (text, None) for text in texts]
    out = []
    for start in tqdm(range(0, len(pairs), batch_size), disable=not progress, leave=False,
                      desc=f'{model.precision} answers'):
        arrays = model.tokenizer.encode_pairs(pairs[start:start + batch_size],
                                              min(max_len, model.max_len))
        out.append(model.run(*arrays)[key])
    return onp.concatenate(out)


def calibrate_int8(folder, texts_file, max_len=128, batch_size=32, min_cosine=0.99,
                   min_agreement=0.97, progress=True):
    """Run the sentences of `texts_file` (one per line, or a tab-separated
    pair) through the model of `folder` (a pretrained or classifier folder)
    on the twin in float32 and in int8, and record in
    folder/CALIBRATION_FILE how far int8 strays: an encoder's sentence
    embeddings' cosine to float32 (mean, minimum), a classifier's share of
    predictions unchanged. It passes when the minimum cosine reaches
    `min_cosine` (an encoder) or the agreement `min_agreement` (a
    classifier). Text the tokenizer mostly does not know (another language)
    is refused: it would measure nothing the model serves. Returns the
    record."""
    if str(folder) in PRETRAINED or not Path(folder).is_dir():
        raise ValueError(f'folder: {folder} is not a model folder (a registered name is read '
                         'only: export it first, `bert-gluon export --format huggingface`)')
    folder = Path(folder)
    check_writable_folder(folder, 'folder')
    reason = int8_unavailable_reason('onednn')
    if reason:
        raise ValueError(f'int8 cannot run here: {reason}')
    texts = read_texts(texts_file)
    record_path = folder / CALIBRATION_FILE
    previous = record_path.read_bytes() if record_path.is_file() else None
    if previous is not None:  # replaced: serving the folder meanwhile must not read it
        record_path.unlink()
    try:
        record = _measure(folder, texts_file, texts, max_len, batch_size, min_cosine,
                          min_agreement, progress)
    except BaseException:
        if previous is not None:  # nothing measured: the folder as it was
            atomic_write_bytes(record_path, previous)
        raise
    atomic_write_json(record_path, record)
    return record


def _measure(folder, texts_file, texts, max_len, batch_size, min_cosine, min_agreement,
             progress):
    float32 = load_model(str(folder), 'mxnet', 'float32')
    share = unrecognized_share(float32.tokenizer, texts)
    if share > MAX_UNRECOGNIZED:
        raise ValueError(
            f'texts_file: {texts_file}: {share:.0%} of its word pieces are unknown to the '
            f"model's vocabulary or word fragments (text in the model's language gives "
            f'about 6%): another language than the model\'s? Calibrate on text like what it '
            'will serve')
    reference = _outputs(float32, texts, batch_size, max_len, progress)
    forced = providers.FORCED_BY['int8']
    before = os.environ.get(forced)
    os.environ[forced] = 'onednn'  # measured in int8 even where 'auto' would run float32
    providers.forget()
    try:
        int8 = load_model(str(folder), 'mxnet', 'int8')
        answers = _outputs(int8, texts, batch_size, max_len, progress)
    finally:
        if before is None:
            del os.environ[forced]
        else:
            os.environ[forced] = before
        providers.forget()
    record = {'weights_sha1': weights_digest(folder), 'kind': float32.kind,
              'texts_file': str(texts_file), 'texts': len(texts),
              'unrecognized_share': round(share, 4), 'max_len': max_len,
              'plan': int8.plan,
              'cpu': next((line.split(':', 1)[1].strip() for line in cpu_identity().splitlines()
                           if line.startswith('model name')), ''),
              'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    if float32.kind == 'classifier':
        agreement = float(onp.mean(answers.argmax(1) == reference.argmax(1)))
        record.update(agreement=agreement, min_agreement=min_agreement,
                      passed=agreement >= min_agreement)
    else:
        cosine = (answers * reference).sum(1) / (onp.linalg.norm(answers, axis=1)
                                                 * onp.linalg.norm(reference, axis=1))
        record.update(cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
                      min_cosine=min_cosine, passed=bool(cosine.min() >= min_cosine))
    return record
