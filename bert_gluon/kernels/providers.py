"""Who multiplies on this CPU, in float32, bf16 and int8: measured here,
not assumed.

float32:   'blas'     MKL's sgemm (or OpenBLAS's, without MKL)
           'onednn'   oneDNN's matmul
bfloat16:  'onednn'   oneDNN's bf16 matmul (AMX or AVX512_BF16)
           'mkl'      MKL's bf16 x bf16 -> float32 products
           'float32'  no bf16 provider beats float32 here: dtype='bfloat16'
                      runs the float32 products, and says so once
int8:      'onednn'   oneDNN's u8 x s8 matmul (AMX-INT8, VNNI, or AVX2's
                      vpmaddubsw) in the fused encoder blocks of inference
                      graphs (kernels/blas.h)
           'float32'  int8 does not beat float32 here: the same fallback

Libraries dispatch on what they know of a CPU, not on what it can do: MKL
runs a slower path on AMD (on Zen 4 its sgemm runs at 0.8-0.9x oneDNN's and
its bf16 slower than its own sgemm, while oneDNN's bf16 runs 1.4-1.7x its
float32);
an Intel core without AMX runs bf16 dot products at half its float32 rate;
a CPU with neither AVX512_BF16 nor AMX would emulate bf16. So each choice is
timed on the Dense products of a BERT layer (SHAPES), once per CPU, library
versions, ISA caps (MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA) and thread
count, and cached beside the kernels' build: float32 takes oneDNN where it
beats BLAS by MARGIN; bf16 takes the fastest provider that beats the chosen
float32 by MARGIN; int8, timed on whole fused encoder blocks (LAYER_SHAPES:
its operands are quantized row by row there, which products alone omit),
likewise. BERT_GLUON_FLOAT32_PROVIDER=blas|onednn and
BERT_GLUON_BF16_PROVIDER=onednn|mkl|float32 force them (tests, benches);
'auto' (the default) measures.
"""
import contextlib
import fcntl
import json
import os
import statistics
import sys
import threading
import time
import warnings

from ..fileio import atomic_write_json

from . import (BF16_PROVIDERS, FLOAT32_PROVIDERS, INT8_PROVIDERS, bf16_unavailable_reason,
               build_dir, cpu_identity, float32_unavailable_reason, int8_unavailable_reason,
               products_attribute)

__all__ = ['CHOICES', 'FORCED_BY', 'REQUEST', 'choice', 'request_choice', 'provider',
           'plan_products', 'measure_speedups', 'measure_layer_seconds', 'tune', 'forget']

# from kernels.PRODUCTS; bf16 and int8 may fall back to the float32 products
CHOICES = {'float32': FLOAT32_PROVIDERS, 'bfloat16': BF16_PROVIDERS + ('float32',),
           'int8': INT8_PROVIDERS + ('float32',)}
_LOW = {'bfloat16': BF16_PROVIDERS, 'int8': INT8_PROVIDERS}  # the precisions below float32
FORCED_BY = {precision: f'BERT_GLUON_{ {"bfloat16": "BF16"}.get(precision, precision.upper())}'
                        '_PROVIDER' for precision in CHOICES}
# (M, K, N) of X (M, K) @ W (N, K)^T: a 32-token request's Q/K/V (MiniLM),
# MiniLM's FFN at 128 tokens, d2l's pretraining FFN at batch 128 x 64 tokens
SHAPES = ((32, 384, 384), (128, 384, 1536), (8192, 128, 256))
MARGIN = 1.05  # a challenger must be this much faster: ties keep the incumbent
# A request's layer, timed per provider: MiniLM's (tokens, hidden, FFN, heads)
REQUEST = (32, 384, 1536, 12)
# int8 is timed on whole fused blocks of REQUEST's widths: (sequences, tokens)
# of a request and of a batch
LAYER_SHAPES = ((1, 32), (8, 128))
_ENVIRONMENT = ('MKL_ENABLE_INSTRUCTIONS', 'ONEDNN_MAX_CPU_ISA', 'OMP_NUM_THREADS')
_lock = threading.RLock()  # a bf16 choice makes the float32 one first
_chosen = {}
_warned = []


def _key():
    import importlib.metadata

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return 'none'
    libraries = ', '.join(f'{p} {version(p)}' for p in ('mkl', 'onednn-cpu-gomp'))
    caps = ','.join(f'{k}={os.environ.get(k, "")}' for k in _ENVIRONMENT)
    return f'{cpu_identity()}\n{libraries}\n{caps}\ncpus {len(os.sched_getaffinity(0))}'


def _seconds(run, repeats):
    run()  # warm: packing, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _unavailable_reason(precision, name):
    if precision == 'float32':
        return float32_unavailable_reason(name)
    if name == 'float32':
        return None
    return (int8_unavailable_reason if precision == 'int8' else bf16_unavailable_reason)(name)


def measure_speedups(precision, name, baseline):
    """Seconds of `baseline`'s float32 products / seconds of `name`'s
    `precision` products, for each of SHAPES (int8: each of LAYER_SHAPES,
    whole fused blocks), on this process's threads (> 1: `name` faster)."""
    import mxnet as mx
    import numpy as onp
    reason = _unavailable_reason(precision, name)  # loads the kernels
    if reason:
        raise ValueError(f'{precision} products by {name} cannot run here: {reason}')
    if precision == 'int8':
        return [measure_layer_seconds('float32', baseline, *shape)
                / measure_layer_seconds('int8', name, *shape) for shape in LAYER_SHAPES]
    ratios = []
    # numpy's generator, not MXNet's: a seeded run draws the same numbers
    # whether or not this measurement ran in it first
    rng = onp.random.RandomState(0)
    for M, K, N in SHAPES:
        X = mx.nd.array(rng.uniform(-1, 1, (M, K)))
        W = mx.nd.array(rng.uniform(-1, 1, (N, K)))
        repeats = max(3, min(30, int(2e9 / (2 * M * K * N))))

        def product(attribute):
            return lambda: mx.nd.bert_linear(X, W, use_bias=False,
                                             products=attribute).wait_to_read()
        ratios.append(_seconds(product(products_attribute('float32', baseline)), repeats)
                      / _seconds(product(products_attribute(precision, name)), repeats))
    return ratios


def _measured(precision, incumbent, challengers):
    """The fastest challenger that beats `incumbent`'s float32 products by
    MARGIN, else the incumbent (precision 'float32') or 'float32'."""
    speedups, said = {}, []
    for name in challengers:
        ratios = measure_speedups(precision, name, incumbent)
        speedups[name] = statistics.geometric_mean(ratios)
        shapes = ', '.join(f'{_shape_name(precision, shape)} {r:.2f}x'
                           for shape, r in zip(_shapes(precision), ratios))
        said.append(f"{name}'s {precision} products {speedups[name]:.2f}x {incumbent}'s "
                    f'float32 ({shapes})')
    fallback = incumbent if precision == 'float32' else 'float32'
    best = max(speedups, key=speedups.get, default=None)
    winner = best if best and speedups[best] >= MARGIN else fallback
    return {'provider': winner, 'speedups': speedups,
            'why': 'measured here: ' + ('; '.join(said) or 'nothing else runs')}


def _shapes(precision):
    return LAYER_SHAPES if precision == 'int8' else SHAPES


def _shape_name(precision, shape):
    if precision == 'int8':
        return f'a block of {shape[0]}x{shape[1]} tokens'
    return 'x'.join(map(str, shape))


def _forced(precision):
    """The provider BERT_GLUON_*_PROVIDER forces for `precision`, or None."""
    variable = FORCED_BY[precision]
    forced = os.environ.get(variable, 'auto')
    if forced not in CHOICES[precision] + ('auto',):
        raise ValueError(f'{variable} must be one of {CHOICES[precision] + ("auto",)}, '
                         f'got {forced!r}')
    if forced == 'auto':
        return None
    reason = _unavailable_reason(precision, forced)
    if reason:
        raise ValueError(f'{variable}={forced} cannot run here: {reason}')
    return {'provider': forced, 'why': f'forced by {variable}'}


def _decide(precision):
    forced = _forced(precision)
    if forced:
        return forced
    names = FLOAT32_PROVIDERS[1:] if precision == 'float32' else _LOW[precision]
    reasons = {name: _unavailable_reason(precision, name) for name in names}
    runnable = [name for name in names if reasons[name] is None]
    incumbent = 'blas' if precision == 'float32' else provider('float32')
    if not runnable:
        return {'provider': incumbent if precision == 'float32' else 'float32',
                'why': '; '.join(f'{name}: {reason}' for name, reason in reasons.items())}

    def measure():
        measured = _measured(precision, incumbent, runnable)
        skipped = [f'{name}: {reason}' for name, reason in reasons.items() if reason]
        if skipped:
            measured['why'] += '; not run: ' + '; '.join(skipped)
        return measured
    return _cached_or_measured(f'{precision} against {incumbent}', precision, measure,
                               f"{', '.join(runnable)} against {incumbent}")


def _cached_or_measured(entry, precision, measure, what):
    """providers.json's answer for `entry` on this machine, or `measure()`'s,
    written there (one process measures, the others read its answer)."""
    path = build_dir() / 'providers.json'
    key = f'{entry}\n{_key()}'
    with _file_lock(path):
        cached = _read(path).get(key)
        if cached is not None and not _valid(cached, precision):
            warnings.warn(f'{path}: the entry for this machine is not a provider choice '
                          f'({cached!r:.200}); measuring again', stacklevel=2)
            cached = None
        if cached:
            return cached
        print(f'bert_gluon: timing who multiplies {entry.split()[0]} fastest on this CPU '
              f'({what}; a few seconds, once; cached in {path}; `bert-gluon tune` '
              'measures again)', file=sys.stderr, flush=True)
        measured = measure()
        known = _read(path)
        known[key] = measured
        try:
            atomic_write_json(path, known)
        except OSError:  # a read-only cache: measured again next time, nothing lost
            pass
    return measured


def measure_layer_seconds(precision, name, sequences=1, tokens=REQUEST[0]):
    """Seconds of one fused encoder layer of REQUEST's widths on `sequences`
    of `tokens`, its products in `precision` by `name`. One sequence is what
    a single request runs (each product's columns shared out over the
    threads, on each thread alone)."""
    import mxnet as mx
    import numpy as onp
    _, H, F, heads = REQUEST
    T = tokens
    rng = onp.random.RandomState(0)  # numpy's: MXNet's seeded draws stay as they were

    def array(*shape):
        return mx.nd.array(rng.uniform(-0.1, 0.1, shape), dtype='float32')
    with warnings.catch_warnings():  # mx.nd.array asks SciPy, which warns of itself
        warnings.simplefilter('ignore', DeprecationWarning)
        inputs = [array(sequences, T, H), mx.nd.array([T] * sequences, dtype='float32'),
                  *(array(H, H) for _ in range(4)), mx.nd.ones(H), mx.nd.zeros(H),
                  array(F, H), array(F), array(H, F), array(H), mx.nd.ones(H), mx.nd.zeros(H)]
    attribute = products_attribute(precision, name)

    def layer():
        mx.nd.bert_encoder_layer(*inputs, num_heads=heads, scale=(H // heads) ** -0.5,
                                 eps=1e-12, activation='gelu', use_bias=False,
                                 products=attribute).wait_to_read()
    return _seconds(layer, max(3, min(200, 6400 // (sequences * T))))


def request_choice(precision):
    """{'provider': ..., 'why': ...}: who multiplies a single request's
    products in `precision` here. Its products are small (REQUEST: a few
    dozen rows) and each runs on one thread, where the libraries rank
    otherwise than on a batch's; the same variables force it."""
    if precision not in CHOICES:
        raise ValueError(f'precision must be one of {tuple(CHOICES)}, got {precision!r}')
    key = ('requests', precision, os.environ.get(FORCED_BY[precision], 'auto'), _key())
    with _lock:
        if key not in _chosen:
            _chosen[key] = _decide_request(precision)
        return _chosen[key]


def _decide_request(precision):
    forced = _forced(precision)
    if forced:
        return forced
    names = FLOAT32_PROVIDERS if precision == 'float32' else _LOW[precision]
    runnable = [name for name in names if _unavailable_reason(precision, name) is None]
    if len(runnable) < 2:
        return {'provider': runnable[0] if runnable else provider(precision),
                'why': 'the only provider that runs here'}

    def measure():
        seconds = {name: measure_layer_seconds(precision, name) for name in runnable}
        best = min(seconds, key=seconds.get)
        return {'provider': best, 'why': 'measured here, one layer of a request: ' + ', '.join(
            f'{name} {1e3 * t:.3f} ms' for name, t in seconds.items())}
    return _cached_or_measured(f'{precision} requests', precision, measure,
                               f"{', '.join(runnable)} on one request's layer")


@contextlib.contextmanager
def _file_lock(path):
    """`path`'s lock file held (where the folder is writable)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix('.lock'), 'a')
    except OSError:  # a read-only cache: nothing written, nothing to guard
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path):
    """providers.json as a dict: missing, unreadable or of another shape is
    {} (the latter said, naming the file), and measured again."""
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f'{path} is unreadable ({exc}); measuring again', stacklevel=3)
        return {}
    if not isinstance(known, dict):
        warnings.warn(f'{path} holds {type(known).__name__}, not the providers measured per '
                      'machine; measuring again', stacklevel=3)
        return {}
    return known


def _valid(entry, precision):
    return (isinstance(entry, dict) and entry.get('provider') in CHOICES[precision]
            and isinstance(entry.get('why'), str))


def tune():
    """Measure both precisions' providers anew for this machine (dropping
    what providers.json and this process hold for it); the choices."""
    path = build_dir() / 'providers.json'
    with _file_lock(path):
        known = _read(path)
        mine = [k for k in known if k.endswith('\n' + _key())]
        for k in mine:
            del known[k]
        if mine:
            try:
                atomic_write_json(path, known)
            except OSError:
                pass
    forget()
    chosen = {precision: choice(precision) for precision in CHOICES}
    for precision in CHOICES:
        if chosen[precision]['provider'] != 'float32':  # bf16 or int8 where it pays
            chosen[f'{precision} requests'] = request_choice(precision)
    return chosen


def choice(precision):
    """{'provider': ..., 'why': ..., ['speedups': measured, by provider]}:
    who multiplies in `precision` ('float32', 'bfloat16' or 'int8') here, for this
    process's CPU, libraries, ISA caps and BERT_GLUON_*_PROVIDER."""
    if precision not in CHOICES:
        raise ValueError(f'precision must be one of {tuple(CHOICES)}, got {precision!r}')
    key = (precision, os.environ.get(FORCED_BY[precision], 'auto'),
           os.environ.get(FORCED_BY['float32'], 'auto'), _key())
    with _lock:
        if key not in _chosen:
            _chosen[key] = _decide(precision)
        return _chosen[key]


def provider(precision):
    """Who multiplies in `precision` here: 'blas' or 'onednn' (float32);
    'onednn', 'mkl' or 'float32' (bfloat16); 'onednn' or 'float32' (int8)."""
    return choice(precision)['provider']


def plan_products(precision):
    """(precision, provider, why): what a native model asking for products
    in `precision` runs. dtype='bfloat16' or 'int8' where no provider of it
    pays runs float32 and says so, once per process and precision."""
    chosen = choice(precision)
    if precision != 'float32' and chosen['provider'] == 'float32':
        if precision not in _warned:
            _warned.append(precision)
            forcing = ' or '.join(_LOW[precision])
            warnings.warn(f"dtype='{precision}' runs its products in float32 on this CPU: "
                          f"{chosen['why']}; {FORCED_BY[precision]}={forcing} forces "
                          f'{precision}', stacklevel=4)
        fallback = choice('float32')
        return 'float32', fallback['provider'], (f"{precision} does not pay here "
                                                 f"({chosen['why']}); float32: {fallback['why']}")
    return precision, chosen['provider'], chosen['why']


def forget():
    """Drop this process's choices and warning (tests change the machine's
    apparent features); the cache on disk stays."""
    with _lock:
        _chosen.clear()
        _warned.clear()
