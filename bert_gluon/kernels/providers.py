"""Who runs the bf16 products on this CPU: measured here, not assumed.

  'mkl'      MKL's bf16 x bf16 -> float32 products (AMX or AVX512_BF16)
  'float32'  no bf16 provider beats float32 here: dtype='bfloat16' runs the
             products in float32, and says so once

bf16 only pays where the CPU multiplies bf16 faster than float32: with AMX
(several times), not always with AVX512_BF16 alone (an Intel core without
AMX runs its bf16 dot products at half its float32 FMA rate), never where
the CPU has neither (MKL would emulate). So the choice is timed: the Dense
products of a BERT layer, bf16 against float32, once per CPU, MKL version,
ISA cap (MKL_ENABLE_INSTRUCTIONS) and thread count, cached beside the
kernels' build. BERT_GLUON_BF16_PROVIDER=mkl|float32 forces it (tests,
benches); 'auto' (the default) measures.
"""
import json
import os
import statistics
import threading
import time
import warnings

from . import bf16_unavailable_reason, build_dir, cpu_identity

__all__ = ['PROVIDERS', 'bf16_choice', 'bf16_provider', 'warn_bf16_fallback',
           'measure_bf16_speedups', 'forget']

PROVIDERS = ('mkl', 'float32')
# (M, K, N) of X (M, K) @ W (N, K)^T: a 32-token request's Q/K/V (MiniLM),
# MiniLM's FFN at 128 tokens, d2l's pretraining FFN at batch 128 x 64 tokens
SHAPES = ((32, 384, 384), (128, 384, 1536), (8192, 128, 256))
MARGIN = 1.05  # bf16 must be this much faster: its rounding is not free
_ENVIRONMENT = ('MKL_ENABLE_INSTRUCTIONS', 'ONEDNN_MAX_CPU_ISA', 'OMP_NUM_THREADS')
_lock = threading.Lock()
_chosen = {}
_warned = []


def _key():
    import importlib.metadata
    try:
        mkl = importlib.metadata.version('mkl')
    except importlib.metadata.PackageNotFoundError:
        mkl = 'none'
    caps = ','.join(f'{k}={os.environ.get(k, "")}' for k in _ENVIRONMENT)
    return f'{cpu_identity()}\nmkl {mkl}\n{caps}\ncpus {len(os.sched_getaffinity(0))}'


def _seconds(run, repeats):
    run()  # warm: packing, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_bf16_speedups():
    """float32 seconds / bf16 seconds of each of SHAPES' products, on this
    process's threads (> 1: bf16 faster)."""
    import mxnet as mx
    reason = bf16_unavailable_reason()  # loads the kernels
    if reason:
        raise ValueError(f'bf16 products cannot run here: {reason}')
    ratios = []
    for M, K, N in SHAPES:
        X = mx.nd.random.uniform(-1, 1, (M, K))
        W = mx.nd.random.uniform(-1, 1, (N, K))
        repeats = max(3, min(30, int(2e9 / (2 * M * K * N))))

        def product(bf16):
            return lambda: mx.nd.bert_linear(X, W, use_bias=False, bf16=bf16).wait_to_read()
        ratios.append(_seconds(product(False), repeats) / _seconds(product(True), repeats))
    return ratios


def _decide():
    forced = os.environ.get('BERT_GLUON_BF16_PROVIDER', 'auto')
    if forced not in PROVIDERS + ('auto',):
        raise ValueError(f'BERT_GLUON_BF16_PROVIDER must be one of {PROVIDERS + ("auto",)}, '
                         f'got {forced!r}')
    reason = bf16_unavailable_reason()
    if forced != 'auto':
        if forced == 'mkl' and reason:
            raise ValueError(f'BERT_GLUON_BF16_PROVIDER=mkl cannot run here: {reason}')
        return {'provider': forced, 'why': 'forced by BERT_GLUON_BF16_PROVIDER'}
    if reason:
        return {'provider': 'float32', 'why': reason}
    path = build_dir() / 'bf16_provider.json'
    key = _key()
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if cached:
        return cached
    ratios = measure_bf16_speedups()
    speedup = statistics.geometric_mean(ratios)
    shapes = ', '.join(f'{M}x{K}x{N} {r:.2f}x' for (M, K, N), r in zip(SHAPES, ratios))
    choice = {'provider': 'mkl' if speedup >= MARGIN else 'float32', 'speedup': speedup,
              'why': f"MKL's bf16 products measured {speedup:.2f}x float32 here ({shapes})"}
    _store(path, key, choice)
    return choice


def _store(path, key, choice):
    from ..fileio import atomic_write_json
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = choice
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, known)
    except OSError:  # a read-only cache: measured again next time, nothing lost
        pass


def bf16_choice():
    """{'provider': 'mkl' | 'float32', 'why': ..., ['speedup': measured]} for
    this process's CPU, libraries, ISA caps and BERT_GLUON_BF16_PROVIDER."""
    key = (os.environ.get('BERT_GLUON_BF16_PROVIDER', 'auto'), _key())
    with _lock:
        if key not in _chosen:
            _chosen[key] = _decide()
        return _chosen[key]


def bf16_provider():
    """'mkl' or 'float32': what dtype='bfloat16' products run on here."""
    return bf16_choice()['provider']


def warn_bf16_fallback():
    """Say once per process that dtype='bfloat16' runs float32 here, and why."""
    if not _warned:
        _warned.append(True)
        warnings.warn("dtype='bfloat16' runs its products in float32 on this CPU: "
                      f"{bf16_choice()['why']}; set BERT_GLUON_BF16_PROVIDER=mkl to force "
                      'bf16', stacklevel=3)


def forget():
    """Drop this process's choices and warning (tests change the machine's
    apparent features); the cache on disk stays."""
    with _lock:
        _chosen.clear()
        _warned.clear()
