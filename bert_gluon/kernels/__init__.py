"""Native CPU kernels, compiled on first use and loaded into MXNet as an
extension library (MXNet 1.9's lib_api).

`layer_norm.cc`: LayerNorm over the last axis whose backward is one fused
pass per row (MXNet's own CPU backward is ~10x slower than its forward).
`cross_entropy.cc`: weighted softmax cross-entropy, vectorized, skipping
rows of weight 0 (MXNet's log_softmax backward is ~10x slower).
`dropout.cc`: dropout from a hashed counter instead of a draw per element,
for training graphs (it cannot see autograd's train mode).
`dense.cc`: the MLM vocabulary projection, optionally on rows of nonzero
weight only, packed; its backward calls the OpenBLAS MXNet ships (built only
where libopenblas.so.0 sits beside libmxnet.so; `has_op` says).
`attention.cc`: self-attention scores (masked softmax) and context straight
from the (B, T, H) projections, per head (`heads.h`) through a
register-blocked product (`small_gemm.h`): no head transposes, no BLAS call
per 64 x 64 head; and both as one op where there is no dropout.
`encoder_layer.cc`: a whole encoder block, forward only, a few sequences at
a time in cache: what the twin's inference graph runs.
`embedding.cc`: token + segment + position embeddings in one pass.
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

__all__ = ['has_op', 'native_available', 'native_for', 'portable']

_SOURCES = [Path(__file__).with_name(name)
            for name in ('library.cc', 'layer_norm.cc', 'cross_entropy.cc',
                         'dropout.cc', 'attention.cc', 'encoder_layer.cc', 'embedding.cc')]
# Ops that call sgemm: linked against MXNet's own OpenBLAS when it has one
_BLAS_SOURCES = [Path(__file__).with_name(name)
                 for name in ('dense.cc',)]
_HEADERS = [Path(__file__).with_name(name)
            for name in ('common.h', 'small_gemm.h', 'heads.h')]
_OPENBLAS = Path(mx.__file__).parent / 'libopenblas.so.0'
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
    sources, libs = list(_SOURCES), ['-lmvec']
    if _OPENBLAS.is_file():
        sources += _BLAS_SOURCES
        libs += [f'-L{_OPENBLAS.parent}', f'-l:{_OPENBLAS.name}',
                 f'-Wl,-rpath,{_OPENBLAS.parent}']
    cmd = ['g++', '-shared', '-fPIC', '-O3', '-march=native', '-fopenmp',
           '-std=c++17', f'-I{include}', '-o', tmp, *map(str, sources),
           str(lib_api), *libs]
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
    digest.update(str(_OPENBLAS.is_file()).encode())
    for source in _SOURCES + _BLAS_SOURCES + _HEADERS:
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


def has_op(name):
    """True when the native kernels are available and include op `name`."""
    return native_available() and hasattr(mx.nd, name)


def native_for(param, op=None):
    """True when the native kernels (with op `op`, if named) can run for a
    block whose Parameter `param` has every copy on a CPU."""
    available = has_op(op) if op else native_available()
    return available and all(c.device_type == 'cpu' for c in param.list_ctx())


@contextlib.contextmanager
def portable():
    """Trace graphs with MXNet's own operators only (for export: a symbol
    file that loads without this package)."""
    _state['portable'] += 1
    try:
        yield
    finally:
        _state['portable'] -= 1
