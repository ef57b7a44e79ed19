"""Native CPU kernels, compiled on first use and loaded into MXNet as an
extension library (MXNet 1.9's lib_api).

`layer_norm.cc`: LayerNorm over the last axis whose backward is one fused
pass per row (MXNet's own CPU backward is ~10x slower than its forward).
`cross_entropy.cc`: weighted softmax cross-entropy, vectorized, skipping
rows of weight 0 (MXNet's log_softmax backward is ~10x slower).
Built with the machine's g++ (-march=native: it is built where it runs) into
the cache folder, keyed by the sources and MXNet version; without a compiler,
or with BERT_GLUON_NATIVE=0, everything falls back to MXNet's operators with
the same numbers.
"""
import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import mxnet as mx

__all__ = ['native_available', 'portable']

_SOURCES = [Path(__file__).with_name(name)
            for name in ('library.cc', 'layer_norm.cc', 'cross_entropy.cc')]
_state = {'loaded': None, 'portable': 0}
# Fixed at import: later changes of $BERT_GLUON_CACHE (tests) do not rebuild.
_BUILD_DIR = Path(os.environ.get('BERT_GLUON_CACHE',
                                 Path.home() / '.cache' / 'bert_gluon')) / 'kernels'
_lock = threading.Lock()


def _build(target):
    include = Path(mx.__file__).parent / 'include'
    lib_api = Path(mx.__file__).parent / 'src' / 'lib_api.cc'
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=target.parent)
    os.close(fd)
    cmd = ['g++', '-shared', '-fPIC', '-O3', '-march=native', '-fopenmp',
           '-std=c++17', f'-I{include}', '-o', tmp, *map(str, _SOURCES),
           str(lib_api), '-lmvec']
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(tmp, target)  # other processes see it whole or not at all
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load():
    if os.environ.get('BERT_GLUON_NATIVE', '1') == '0':
        return False
    digest = hashlib.sha1(mx.__version__.encode())
    for source in _SOURCES:
        digest.update(source.read_bytes())
    key = digest.hexdigest()[:12]
    target = _BUILD_DIR / f'libbert_gluon_ops-{key}.so'
    try:
        if not target.is_file():
            _build(target)
        mx.library.load(str(target), False)
    except (OSError, subprocess.CalledProcessError, mx.base.MXNetError) as exc:
        detail = getattr(exc, 'stderr', '') or exc
        warnings.warn(f'bert_gluon: native CPU kernels unavailable, using MXNet '
                      f'operators (slower LayerNorm backward): {detail}')
        return False
    return True


def native_available():
    """True when the native CPU kernels are loaded and not switched off."""
    if _state['portable']:
        return False
    with _lock:
        if _state['loaded'] is None:
            _state['loaded'] = _load()
    return _state['loaded']


@contextlib.contextmanager
def portable():
    """Trace graphs with MXNet's own operators only (for export: a symbol
    file that loads without this package)."""
    _state['portable'] += 1
    try:
        yield
    finally:
        _state['portable'] -= 1
