"""What every benchmark here shares: the machine header, and contestants run
side by side in interleaved rounds.

Each contestant lives in its own process for the whole run (MXNet reads
OMP_NUM_THREADS only at import; PyTorch and MXNet keep their own thread
pools), started once; the parent then asks them in turn, round after round,
to time a few calls of a workload, rotating the order every round, so that a
slow moment of a shared machine falls on every contestant alike. Figures
are the median of the rounds, with the min and the max.

A worker is this protocol over stdin/stdout, one JSON line each way:
  parent -> {"kind": "train", "calls": 5}   worker -> {"rate": 412.0, "peak_mb": 900,
                                                       "seconds": [per call, each synced]}
"""
import json
import os
import select
import statistics
import subprocess
import sys
import time

__all__ = ['machine', 'header_lines', 'peak_flops', 'Worker', 'serve', 'interleaved',
           'summary', 'percentile', 'threads_default', 'providers_line', 'Results']

FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')


def threads_default():
    """A thread per CPU this process may use (affinity, not the core count)."""
    return len(os.sched_getaffinity(0))


def machine():
    """CPU model, vendor, the ISA flags that matter, frequency and CPUs."""
    info = {'model': 'unknown', 'vendor': 'unknown', 'flags': [], 'mhz': None}
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            first = f.read().split('\n\n', 1)[0]
    except OSError:
        first = ''
    for line in first.splitlines():
        key, _, value = (part.strip() for part in line.partition(':'))
        if key == 'model name':
            info['model'] = value
        elif key == 'vendor_id':
            info['vendor'] = value
        elif key == 'flags':
            present = set(value.split())
            info['flags'] = [f for f in FLAGS if f in present]
        elif key == 'cpu MHz':
            info['mhz'] = float(value)
    info['cpus'] = threads_default()
    return info


def peak_flops(info, bf16=False):
    """(peak FLOP/s of the CPUs this process may use, how it was computed).

    float32: FMA units x vector width x 2 per cycle: 64 on Intel AVX-512
    (two 512-bit FMA units), 32 on AMD Zen 4 (AVX-512 in two 256-bit halves)
    and on AVX2 machines (two 256-bit FMA units). bf16 on AMX: 1024 FLOP per
    cycle per core (Intel's figure for AMX-BF16); on AVX512_BF16 alone, twice
    the float32 rate. The clock is /proc/cpuinfo's 'cpu MHz' (a VM reports its
    nominal clock; turbo can exceed it)."""
    flags = set(info['flags'])
    if 'avx512f' in flags and info['vendor'] == 'GenuineIntel':
        per_cycle, why = 64, '2 AVX-512 FMA units x 16 floats x 2'
    elif 'avx512f' in flags or 'avx2' in flags:
        per_cycle, why = 32, '256-bit FMA x 2 units (or AVX-512 in two halves) x 8 floats x 2'
    else:
        per_cycle, why = 8, 'SSE'
    if bf16 and 'amx_bf16' in flags:
        per_cycle, why = 1024, 'AMX-BF16, Intel\'s 1024 bf16 FLOP per cycle'
    elif bf16 and 'avx512_bf16' in flags:
        per_cycle, why = 2 * per_cycle, 'AVX512_BF16 dot products, twice float32'
    mhz = info['mhz'] or 0.0
    peak = info['cpus'] * mhz * 1e6 * per_cycle
    return peak, (f'{info["cpus"]} CPUs x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle '
                  f'({why})')


def header_lines(threads, extra=''):
    info = machine()
    flags = ' '.join(info['flags']) or 'none of ' + ' '.join(FLAGS)
    return [f'CPU: {info["model"]} ({info["vendor"]}), {info["cpus"]} CPUs usable, '
            f'{threads} threads per contestant; ISA: {flags}' + (f'; {extra}' if extra else '')]


def providers_line(env):
    """({precision: provider}, a line saying them): who multiplies in
    float32 and bf16 here (kernels/providers.py), asked of a fresh process
    with the contestants' environment (threads, ISA caps)."""
    script = ('from bert_gluon.kernels import providers\n'
              'for p in providers.CHOICES:\n'
              '    c = providers.choice(p); print(p, c["provider"], "-", c["why"])')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                         text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode or len(lines) != 2:
        return {}, 'providers: ' + ' '.join(out.stderr.strip().splitlines()[-1:])
    chosen = {line.split()[0]: line.split()[1] for line in lines}
    return chosen, '\n'.join(f'{p} products here: {line.split(" ", 1)[1]}'
                             for p, line in zip(chosen, lines))


# A worker silent this long has hung: a crash inside MXNet can leave it
# waiting on its own threads (its signal handler exits, joining them)
REPLY_SECONDS = 1800


class Worker:
    """A contestant's process, started once, timed on request."""
    def __init__(self, name, argv, env):
        self.name = name
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.failed = None

    def ask(self, kind, calls):
        if self.failed:
            return None
        try:
            self.proc.stdin.write(json.dumps({'kind': kind, 'calls': calls}) + '\n')
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_SECONDS)
            if not ready:
                self.proc.kill()
                self.failed = f'no reply in {REPLY_SECONDS} s to {kind}: killed'
                return None
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ''
        if not line:
            self.failed = self.proc.stderr.read()[-3000:] or 'the worker exited'
            return None
        reply = json.loads(line)
        if 'error' in reply:
            self.failed = reply['error']
            return None
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _peak_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(workloads, batch_size, warmup=2):
    """The worker side: workloads maps kind -> (fn, sync). Each request
    times `calls` calls of fn (after `warmup` the first time), each call
    synced and timed alone (the latency of a request), and replies with
    pairs/s, the calls' seconds and the process's peak memory so far."""
    warmed = set()
    for line in sys.stdin:
        request = json.loads(line)
        kind, calls = request['kind'], int(request['calls'])
        try:
            fn, sync = workloads[kind]
            if kind not in warmed:
                for _ in range(warmup):
                    fn()
                sync()
                warmed.add(kind)
            seconds = []
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                sync()
                seconds.append(time.perf_counter() - start)
            reply = {'rate': batch_size * calls / sum(seconds), 'seconds': seconds,
                     'peak_mb': _peak_mb()}
        except Exception as exc:  # reported by the parent beside the table
            reply = {'error': f'{type(exc).__name__}: {exc}'}
        print(json.dumps(reply), flush=True)


def interleaved(workers, kinds, rounds, calls, progress=True, seconds=None):
    """rates[name][kind] = one pairs/s per round; the order of the workers
    rotates every round. calls: kind -> calls per round. seconds, a dict if
    given, gathers seconds[name][kind] = every call's time."""
    rates = {w.name: {k: [] for k in kinds} for w in workers}
    peaks = {}
    if seconds is not None:
        seconds.update({w.name: {k: [] for k in kinds} for w in workers})
    for r in range(rounds):
        order = workers[r % len(workers):] + workers[:r % len(workers)]
        for kind in kinds:
            for w in order:
                reply = w.ask(kind, calls[kind])
                if reply:
                    rates[w.name][kind].append(reply['rate'])
                    if seconds is not None:
                        seconds[w.name][kind].extend(reply['seconds'])
                    peaks[w.name] = max(peaks.get(w.name, 0), reply['peak_mb'])
        if progress:
            print(f'  round {r + 1}/{rounds} done', file=sys.stderr, flush=True)
    return rates, peaks


def summary(values):
    """(median, min, max) of a list, or None."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def percentile(values, q):
    """The q-th percentile (0-100) of a list, linearly interpolated."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Results:
    """A bench's figures as JSON (--json PATH), beside the printed table:
    the machine, threads, library versions, date and command, then one row
    per (workload, contestant) measured. bench/plot.py draws a folder of them."""

    def __init__(self, bench, threads, **setting):
        import datetime
        import platform
        now = datetime.datetime.now(datetime.timezone.utc)
        caps = {k: v for k, v in os.environ.items()  # ISA caps and this package's choices
                if k.startswith(('MKL_ENABLE', 'ONEDNN_MAX', 'BERT_GLUON_'))}
        self.data = {'bench': bench, 'command': ' '.join(['python'] + sys.argv),
                     'date': now.isoformat(timespec='seconds'),
                     'machine': dict(machine(), threads=threads, env=caps,
                                     python=platform.python_version()),
                     'versions': _versions(), 'setting': setting, 'rows': []}

    def add(self, contestant, what, unit, values, **workload):
        """One figure: `values` (every round's, or every call's) summarised as
        median, min, max, p99, under `workload` (batch, length, kind...)."""
        row = dict(workload, contestant=contestant, what=what, unit=unit)
        if values:
            row.update(median=statistics.median(values), min=min(values), max=max(values),
                       p99=percentile(values, 99), n=len(values))
        else:
            row['failed'] = True
        self.data['rows'].append(row)

    def write(self, path):
        """Write atomically (a killed bench leaves no half file)."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = f'{path}.{os.getpid()}.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, path)
        print(f'figures written to {path}', file=sys.stderr)


def _versions():
    """Versions of the libraries a bench's figures depend on (None: not installed)."""
    from importlib import metadata
    found = {}
    for name in ('bert_gluon', 'mxnet', 'numpy', 'mkl', 'onednn-cpu-gomp', 'torch',
                 'transformers', 'onnxruntime', 'openvino', 'gluonnlp'):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
