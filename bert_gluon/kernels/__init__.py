"""Native CPU kernels, compiled on first use and loaded into MXNet as an
extension library (MXNet 1.9's lib_api).

`layer_norm.cc`: LayerNorm over the last axis whose backward is one fused
pass per row (MXNet's own CPU backward is ~10x slower than its forward).
`cross_entropy.cc`: weighted softmax cross-entropy, vectorized, skipping
rows of weight 0 (MXNet's log_softmax backward is ~10x slower).
`dropout.cc`: dropout from a hashed counter instead of a draw per element,
for training graphs (it cannot see autograd's train mode).
`dense.cc`: the MLM vocabulary projection, optionally on rows of nonzero
weight only, packed.
`linear.cc`: the other Dense layers of training graphs, forward and
backward, float32 or bf16 operands.
`blas.h`, `library.cc`: matrix products from Intel MKL (the `mkl` package:
it dispatches on the CPU, AVX2 to AMX, and has bf16 products), found at load
time, or else the OpenBLAS beside libmxnet.so (float32 only);
`blas_provider()` says which. `onednn.cc`: float32 and bf16 products from
oneDNN (the `onednn-cpu-gomp` package, built against
`onednn-devel-cpu-gomp`'s headers where both are installed). `providers.py`
measures which of them multiplies fastest here, in each precision; the ops
take the answer as their `products` attribute. `prepared.h`: weights of
inference graphs packed or reordered once, kept while unchanged.
`attention.cc`: self-attention scores (masked softmax) and context straight
from the (B, T, H) projections, per head (`heads.h`) through a
register-blocked product (`small_gemm.h`): no head transposes, no BLAS call
per 64 x 64 head; and both as one op where there is no dropout.
`encoder_layer.cc`: a whole encoder block, forward only, a few sequences at
a time in cache, or a request's rows in one parallel region; every block
of `for_inference()` as one op (bert_encoder_stack).
`embedding.cc`: token + segment + position embeddings in one pass.
Built with the machine's g++ (-march=native: it is built where it runs) into
the cache folder, under a key of the sources, the MXNet version, the
compiler, its flags and this CPU's model and features, so a cache shared
between CPU kinds builds one library per kind. A file lock serializes
builds between processes, a timeout bounds them, and each library is
checked against the SHA-1 recorded beside it before it is loaded (a
truncated file would otherwise take the process down). Which ops run is the
model's plan (bert_gluon/execution.py); where the kernels cannot be built,
`unavailable_reason()` says why and 'auto' models run MXNet's operators.
"""
import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import threading
import time
import warnings
from pathlib import Path

import mxnet as mx

from ..data.files import sha1_of
from ..fileio import atomic_write, atomic_write_bytes

__all__ = ['has_op', 'native_available', 'unavailable_reason', 'library_path',
           'blas_provider', 'PRODUCTS', 'FLOAT32_PROVIDERS', 'BF16_PROVIDERS', 'INT8_PROVIDERS',
           'float32_unavailable_reason', 'bf16_unavailable_reason', 'int8_unavailable_reason',
           'onednn_matmul', 'products_attribute',
           'prepared_weight_counts', 'onednn_primitives', 'LAYER_STEPS', 'layer_step_seconds', 'cpu_flags',
           'cpu_identity', 'build_dir']

_SOURCES = [Path(__file__).with_name(name)
            for name in ('library.cc', 'layer_norm.cc', 'cross_entropy.cc',
                         'dropout.cc', 'attention.cc', 'encoder_layer.cc', 'embedding.cc',
                         'dense.cc', 'linear.cc', 'onednn.cc', 'prepared.cc')]
_HEADERS = [Path(__file__).with_name(name)
            for name in ('common.h', 'small_gemm.h', 'heads.h', 'blas.h', 'onednn.h',
                         'prepared.h')]
_OPENBLAS = Path(mx.__file__).parent / 'libopenblas.so.0'
# Exported: only what MXNet and this module call (a version script), bound
# locally (-Bsymbolic): another extension library loaded beside it, such as
# Horovod's, neither sees nor replaces its symbols.
_FLAGS = ['-shared', '-fPIC', '-O3', '-march=native', '-mprefer-vector-width=512',
          '-fopenmp', '-std=c++17', '-Wl,-Bsymbolic']
_EXPORTS = '{ global: _op*; _part*; _pass*; _msg*; initialize; bert_gluon_*; local: *; };\n'
_BUILD_SECONDS = 900  # a cold build takes about a minute on 2 cores
_state = {'loaded': None, 'reason': None, 'path': None}
_lock = threading.Lock()


# Fixed at import: later changes of $BERT_GLUON_CACHE (tests) do not rebuild.
_BUILD_DIR = Path(os.environ.get('BERT_GLUON_CACHE',
                                 Path.home() / '.cache' / 'bert_gluon')) / 'kernels'


@functools.lru_cache(maxsize=None)
def cpu_identity():
    """The CPU's model and feature flags: what -march=native compiles for."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            lines = f.read().split('\n\n', 1)[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = ('vendor_id', 'cpu family', 'model\t', 'model name', 'flags')
    return '\n'.join(line for line in lines if line.startswith(keep))


@functools.lru_cache(maxsize=None)
def _onednn_flags():
    """g++ arguments that build onednn.cc against the installed oneDNN
    (headers of onednn-devel-cpu-gomp, libdnnl of onednn-cpu-gomp), or []:
    built without it (not installed, or BERT_GLUON_ONEDNN=0)."""
    if os.environ.get('BERT_GLUON_ONEDNN', '1') == '0':  # the fallback, on purpose
        return []

    def located(package, name):
        try:
            files = importlib.metadata.files(package) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        found = [f.locate().resolve() for f in files if str(f).endswith(name)]
        return next((path for path in found if path.exists()), None)
    header = located('onednn-devel-cpu-gomp', 'oneapi/dnnl/dnnl.h')
    library = located('onednn-cpu-gomp', 'libdnnl.so.3')
    if not (header and library):
        return []
    include = header.parent.parent.parent
    return ['-DBERT_GLUON_ONEDNN', f'-I{include}', str(library),
            f'-Wl,-rpath,{library.parent}']


def _timer_flags():
    """-DBERT_GLUON_LAYER_TIMERS where BERT_GLUON_LAYER_TIMERS=1: the fused
    block times its steps (a build of its own; bench/profile_request.py)."""
    return ['-DBERT_GLUON_LAYER_TIMERS'] if os.environ.get('BERT_GLUON_LAYER_TIMERS') == '1' \
        else []


def _compiler_identity():
    out = subprocess.run(['g++', '--version'], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.splitlines()[0]


def _intact(target):
    """True when `target` is the library its build recorded (same SHA-1)."""
    record = target.with_suffix('.sha1')
    try:
        return record.read_text().strip() == sha1_of(target)
    except OSError:
        return False


def _build(target):
    include = Path(mx.__file__).parent / 'include'
    lib_api = Path(mx.__file__).parent / 'src' / 'lib_api.cc'
    exports = target.with_suffix('.map')
    exports.write_text(_EXPORTS)

    def compile_to(path):
        subprocess.run(['g++', *_FLAGS, f'-Wl,--version-script={exports}', f'-I{include}',
                        '-o', path, *map(str, _SOURCES), str(lib_api), *_onednn_flags(), *_timer_flags(),
                        '-lmvec', '-ldl'],
                       check=True, capture_output=True, text=True, timeout=_BUILD_SECONDS)
    atomic_write(target, compile_to)  # other processes see it whole or not at all
    atomic_write_bytes(target.with_suffix('.sha1'), sha1_of(target).encode())


def _locked_build(target):
    """Build `target` unless another process did; one build at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / '.build.lock', 'w') as lock:
        deadline = time.monotonic() + _BUILD_SECONDS
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f'another process has held {lock.name} '
                                       f'for {_BUILD_SECONDS} s')
                time.sleep(0.5)
        try:
            if not _intact(target):
                _build(target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_dir():
    """The folder of this machine's builds (and measurements) of the kernels."""
    return _BUILD_DIR


def library_path():
    """Where this machine's build of the kernels lives (built or not)."""
    digest = hashlib.sha1(mx.__version__.encode())
    for part in (_compiler_identity(), ' '.join(_FLAGS + _onednn_flags() + _timer_flags()),
                 _EXPORTS,
                 cpu_identity()):
        digest.update(part.encode())
    for source in _SOURCES + _HEADERS:
        digest.update(source.read_bytes())
    return _BUILD_DIR / f'libbert_gluon_ops-{digest.hexdigest()[:16]}.so'


def _load():
    """Build (if needed), verify and load the library; None or why not."""
    try:
        target = library_path()
        if not _intact(target):
            _locked_build(target)
        if not _intact(target):
            return f'{target} does not match its recorded SHA-1'
        mx.library.load(str(target), False)
    except subprocess.CalledProcessError as exc:
        return f'the build failed: {exc.stderr.strip()[-2000:]}'
    except (OSError, subprocess.SubprocessError, mx.base.MXNetError) as exc:
        return f'{type(exc).__name__}: {exc}'
    missing = [op for op in ('bert_layer_norm', 'bert_attention', 'bert_encoder_layer')
               if not hasattr(mx.nd, op)]
    if missing:
        return f'{target} loaded without the ops {missing}'
    _state['path'] = target
    return _load_blas(target)


def _mkl_library():
    """libmkl_rt from the installed `mkl` package, or None."""
    if os.environ.get('BERT_GLUON_BLAS', 'mkl') == 'openblas':  # the fallback, on purpose
        return None
    try:
        files = importlib.metadata.files('mkl') or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = sorted(str(f.locate()) for f in files if f.name.startswith('libmkl_rt.so'))
    return found[-1] if found else None


def _load_blas(target):
    """Give the loaded library its matrix products; None or why not."""
    library = ctypes.CDLL(str(target))  # the handle MXNet already loaded
    mismatch = _products_mismatch(library)
    if mismatch:
        return mismatch
    library.bert_gluon_load_blas.restype = ctypes.c_int
    library.bert_gluon_blas_provider.restype = ctypes.c_char_p
    error = ctypes.create_string_buffer(512)
    mkl = _mkl_library()
    loaded = library.bert_gluon_load_blas((mkl or '').encode(), str(_OPENBLAS).encode(),
                                          error, len(error))
    _state['blas'] = library.bert_gluon_blas_provider().decode()
    if mkl and loaded != 2:
        warnings.warn(f'bert_gluon: MKL at {mkl} did not load ({error.value.decode()}); '
                      'matrix products from OpenBLAS')
    if not loaded:
        return (f'no matrix-product library: pip install mkl (or an MXNet wheel '
                f'with {_OPENBLAS.name} beside libmxnet.so)')
    return None


def blas_provider():
    """'mkl' or 'openblas': where the native kernels' products come from."""
    return _state.get('blas') if native_available() else None


def cpu_flags():
    """This CPU's feature flags (from /proc/cpuinfo)."""
    for line in cpu_identity().splitlines():
        if line.startswith('flags'):
            return set(line.split(':', 1)[1].split())
    return set()


# Who multiplies, in what: the native ops' `products` attribute -> (precision,
# provider). The one table: the providers' choices, their environment
# variables (providers.py) and the docs derive from it; kernels/common.h's
# kProducts is checked against it when the library loads.
PRODUCTS = {'': ('float32', 'blas'),  # MKL's sgemm, or else OpenBLAS's
            'onednn': ('float32', 'onednn'),
            'onednn-bf16': ('bfloat16', 'onednn'),
            'mkl-bf16': ('bfloat16', 'mkl'),
            'onednn-int8': ('int8', 'onednn')}  # the fused encoder ops only (inference)
FLOAT32_PROVIDERS = tuple(p for precision, p in PRODUCTS.values() if precision == 'float32')
BF16_PROVIDERS = tuple(p for precision, p in PRODUCTS.values() if precision == 'bfloat16')
INT8_PROVIDERS = tuple(p for precision, p in PRODUCTS.values() if precision == 'int8')
_OPERANDS = ('float32', 'bfloat16', 'int8')  # onednn.h's Operands, by code


def onednn_matmul(precision, M=32, N=384, K=384):
    """oneDNN's matmul implementation for an M x K x N product of
    `precision` operands ('float32', 'bfloat16', 'int8': u8 x s8) here,
    such as 'brg:avx512_core_amx', or '' where there is none."""
    library = ctypes.CDLL(str(_state['path']))  # the handle MXNet already loaded
    library.bert_gluon_onednn_matmul.restype = ctypes.c_char_p
    library.bert_gluon_onednn_matmul.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 3
    return library.bert_gluon_onednn_matmul(_OPERANDS.index(precision), M, N, K).decode()


def _onednn_unavailable_reason(precision):
    if os.environ.get('BERT_GLUON_ONEDNN', '1') == '0':
        return 'oneDNN is off (BERT_GLUON_ONEDNN=0)'
    if not _onednn_flags():
        return ('oneDNN is not installed: pip install onednn-cpu-gomp==2023.2.0 '
                'onednn-devel-cpu-gomp==2023.2.0')
    implementation = onednn_matmul(precision)
    if not implementation or implementation.startswith('ref'):
        cap = os.environ.get('ONEDNN_MAX_CPU_ISA')
        name = {'bfloat16': 'bf16'}.get(precision, precision)
        return (f"oneDNN has no {name} matmul for this CPU"
                f"{f' at ONEDNN_MAX_CPU_ISA={cap}' if cap else ''} "
                f"(found: {implementation or 'none'})")
    return None


def float32_unavailable_reason(provider):
    """None when `provider` ('blas' or 'onednn') can run float32 products
    here, else why not. Which is faster: providers.choice('float32')."""
    if provider not in FLOAT32_PROVIDERS:
        raise ValueError(f'provider must be one of {FLOAT32_PROVIDERS}, got {provider!r}')
    return unavailable_reason() or (_onednn_unavailable_reason('float32')
                                    if provider == 'onednn' else None)


def bf16_unavailable_reason(provider):
    """None when `provider` ('onednn' or 'mkl') can run bf16 products here,
    else why not. Whether they beat float32: providers.choice('bfloat16')."""
    if provider not in BF16_PROVIDERS:
        raise ValueError(f'provider must be one of {BF16_PROVIDERS}, got {provider!r}')
    reason = unavailable_reason()
    if reason:
        return reason
    if not {'avx512_bf16', 'amx_bf16'} & cpu_flags():
        return ('this CPU has neither AVX512_BF16 nor AMX-BF16: bf16 products '
                'would be emulated, slower than float32')
    if provider == 'mkl':
        return None if blas_provider() == 'mkl' else "MKL's bf16 products: pip install mkl"
    return _onednn_unavailable_reason('bfloat16')


def int8_unavailable_reason(provider):
    """None when `provider` ('onednn') can run the fused encoder's int8
    products here, else why not. Whether they beat float32:
    providers.choice('int8')."""
    if provider not in INT8_PROVIDERS:
        raise ValueError(f'provider must be one of {INT8_PROVIDERS}, got {provider!r}')
    return unavailable_reason() or _onednn_unavailable_reason('int8')


def products_attribute(precision, provider):
    """The native ops' `products` attribute for products of `precision`
    ('float32', 'bfloat16' or 'int8') by `provider` (PRODUCTS)."""
    for attribute, known in PRODUCTS.items():
        if known == (precision, provider):
            return attribute
    raise ValueError(f'no {precision} products by {provider!r}')


def _products_mismatch(library):
    """None when the library's table of `products` attributes (common.h)
    is PRODUCTS, else what differs."""
    library.bert_gluon_products.restype = ctypes.c_char_p
    library.bert_gluon_products.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    theirs, operands = {}, ctypes.c_int()
    while (name := library.bert_gluon_products(len(theirs), ctypes.byref(operands))) is not None:
        theirs[name.decode()] = _OPERANDS[operands.value]
    ours = {attribute: precision for attribute, (precision, _) in PRODUCTS.items()}
    return None if theirs == ours else (f'the kernels know the products {theirs}, '
                                        f'kernels.PRODUCTS {ours}')


def prepared_weight_counts():
    """(made, reused): weights the inference ops prepared (packed,
    reordered, converted) and reused so far in this process."""
    if not native_available():
        return 0, 0
    made, reused = ctypes.c_uint64(), ctypes.c_uint64()
    ctypes.CDLL(str(_state['path'])).bert_gluon_prepared_counts(ctypes.byref(made),
                                                                ctypes.byref(reused))
    return made.value, reused.value


def onednn_primitives():
    """How many oneDNN matmul primitives the kernels keep now (a bounded,
    least-recently-used cache); 0 without oneDNN or the kernels."""
    if not native_available():
        return 0
    count = ctypes.CDLL(str(_state['path'])).bert_gluon_onednn_primitives
    count.restype = ctypes.c_uint64
    return count()


LAYER_STEPS = ('prepare', 'qkv', 'attention', 'wo', 'addnorm1', 'w1', 'activation', 'w2',
               'addnorm2')


def layer_step_seconds():
    """{step: seconds} the fused encoder blocks spent so far in this process,
    summed over calls, where the kernels were built with
    BERT_GLUON_LAYER_TIMERS=1; else None."""
    if not native_available():
        return None
    seconds = (ctypes.c_double * len(LAYER_STEPS))()
    if not ctypes.CDLL(str(_state['path'])).bert_gluon_layer_step_seconds(seconds):
        return None
    return dict(zip(LAYER_STEPS, seconds))


def unavailable_reason():
    """None when the native kernels are loaded (built on first call), else
    why they cannot be."""
    with _lock:
        if _state['loaded'] is None:
            _state['reason'] = _load()
            _state['loaded'] = _state['reason'] is None
    return _state['reason']


def native_available():
    """True when the native CPU kernels are loaded (built on first call)."""
    return unavailable_reason() is None


def has_op(name):
    """True when the native kernels are available and include op `name`."""
    return native_available() and hasattr(mx.nd, name)
