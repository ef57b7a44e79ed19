"""Who runs the bf16 products on this CPU: measured here, not assumed.

  'onednn'   oneDNN's bf16 matmul (AMX or AVX512_BF16, dispatched on the ISA)
  'mkl'      MKL's bf16 x bf16 -> float32 products (AMX or AVX512_BF16)
  'float32'  no bf16 provider beats float32 here: dtype='bfloat16' runs the
             products in float32, and says so once

bf16 only pays where the CPU multiplies bf16 faster than float32: with AMX
(several times), not always with AVX512_BF16 alone (an Intel core without
AMX runs its bf16 dot products at half its float32 FMA rate; MKL's bf16 on
Zen 4 is slower than its sgemm, oneDNN's twice as fast), never where the CPU
has neither (they would emulate). So the choice is timed: the Dense
products of a BERT layer, each provider's bf16 against float32, once per
CPU, library versions, ISA caps (MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA)
and thread count, cached beside the kernels' build; the fastest that beats
float32 by MARGIN wins. BERT_GLUON_BF16_PROVIDER=onednn|mkl|float32 forces
it (tests, benches); 'auto' (the default) measures.
"""
import json
import os
import statistics
import threading
import time
import warnings

from . import BF16_PROVIDERS, bf16_unavailable_reason, build_dir, cpu_identity

__all__ = ['PROVIDERS', 'bf16_choice', 'bf16_provider', 'warn_bf16_fallback',
           'measure_bf16_speedups', 'forget']

PROVIDERS = BF16_PROVIDERS + ('float32',)
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


def measure_bf16_speedups(provider):
    """float32 seconds / `provider`'s bf16 seconds of each of SHAPES'
    products, on this process's threads (> 1: bf16 faster)."""
    import mxnet as mx
    reason = bf16_unavailable_reason(provider)  # loads the kernels
    if reason:
        raise ValueError(f'bf16 products by {provider} cannot run here: {reason}')
    ratios = []
    for M, K, N in SHAPES:
        X = mx.nd.random.uniform(-1, 1, (M, K))
        W = mx.nd.random.uniform(-1, 1, (N, K))
        repeats = max(3, min(30, int(2e9 / (2 * M * K * N))))

        def product(bf16):
            return lambda: mx.nd.bert_linear(X, W, use_bias=False, bf16=bf16).wait_to_read()
        ratios.append(_seconds(product(''), repeats) / _seconds(product(provider), repeats))
    return ratios


def _decide():
    forced = os.environ.get('BERT_GLUON_BF16_PROVIDER', 'auto')
    if forced not in PROVIDERS + ('auto',):
        raise ValueError(f'BERT_GLUON_BF16_PROVIDER must be one of {PROVIDERS + ("auto",)}, '
                         f'got {forced!r}')
    if forced != 'auto':
        reason = forced != 'float32' and bf16_unavailable_reason(forced)
        if reason:
            raise ValueError(f'BERT_GLUON_BF16_PROVIDER={forced} cannot run here: {reason}')
        return {'provider': forced, 'why': 'forced by BERT_GLUON_BF16_PROVIDER'}
    reasons = {p: bf16_unavailable_reason(p) for p in BF16_PROVIDERS}
    runnable = [p for p in BF16_PROVIDERS if reasons[p] is None]
    if not runnable:
        return {'provider': 'float32',
                'why': '; '.join(f'{p}: {reason}' for p, reason in reasons.items())}
    path = build_dir() / 'bf16_provider.json'
    key = _key()
    try:
        cached = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        cached = None
    if cached:
        return cached
    speedups, said = {}, []
    for provider in runnable:
        ratios = measure_bf16_speedups(provider)
        speedups[provider] = statistics.geometric_mean(ratios)
        shapes = ', '.join(f'{M}x{K}x{N} {r:.2f}x' for (M, K, N), r in zip(SHAPES, ratios))
        said.append(f"{provider}'s bf16 products {speedups[provider]:.2f}x float32 ({shapes})")
    best = max(speedups, key=speedups.get)
    choice = {'provider': best if speedups[best] >= MARGIN else 'float32',
              'speedups': speedups, 'why': 'measured here: ' + '; '.join(said)}
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
    """{'provider': 'onednn' | 'mkl' | 'float32', 'why': ..., ['speedups':
    measured, by provider]} for this process's CPU, libraries, ISA caps and
    BERT_GLUON_BF16_PROVIDER."""
    key = (os.environ.get('BERT_GLUON_BF16_PROVIDER', 'auto'), _key())
    with _lock:
        if key not in _chosen:
            _chosen[key] = _decide()
        return _chosen[key]


def bf16_provider():
    """'onednn', 'mkl' or 'float32': what dtype='bfloat16' products run on here."""
    return bf16_choice()['provider']


def warn_bf16_fallback():
    """Say once per process that dtype='bfloat16' runs float32 here, and why."""
    if not _warned:
        _warned.append(True)
        warnings.warn("dtype='bfloat16' runs its products in float32 on this CPU: "
                      f"{bf16_choice()['why']}; BERT_GLUON_BF16_PROVIDER=onednn or mkl "
                      'forces bf16', stacklevel=3)


def forget():
    """Drop this process's choices and warning (tests change the machine's
    apparent features); the cache on disk stays."""
    with _lock:
        _chosen.clear()
        _warned.clear()
