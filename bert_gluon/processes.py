"""Child processes that never outlive their parent, and free ports.

What `bert-gluon launch` and `LocalEndpoint` start runs in a session of its
own (so the whole group can be signalled) and gets SIGTERM from the kernel
when the process that started it dies, even by SIGKILL (PR_SET_PDEATHSIG):
nothing is left running unwatched.
"""
import ctypes
import os
import random
import signal
import socket
import subprocess
import time

__all__ = ['start_process', 'stop_processes', 'free_port']

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _ending_with(parent):
    def prepare():  # in the child, between fork (and setsid) and exec
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os.kill(os.getpid(), signal.SIGTERM)
    return prepare


def start_process(command, **popen):
    """subprocess.Popen(command, **popen) in a new session that receives
    SIGTERM when this process dies. A command that cannot be started is a
    ValueError naming it."""
    try:
        return subprocess.Popen(command, start_new_session=True,
                                preexec_fn=_ending_with(os.getpid()), **popen)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise ValueError(f'cannot start {command[0]!r}: {exc.strerror or exc}') from exc


def stop_processes(processes, grace=5.0):
    """SIGTERM every process's group, wait up to `grace` seconds, then
    SIGKILL the groups still there; returns when all have ended."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.05)


def free_port(first=8000, last=32767):
    """A TCP port free on every interface, in [first, last] (the model
    server refuses ports above 32767, beneath the OS's ephemeral range),
    searched from a random point so concurrent callers rarely collide."""
    span = last - first + 1
    start = random.randrange(span)
    for offset in range(span):
        port = first + (start + offset) % span
        with socket.socket() as s:
            try:
                s.bind(('0.0.0.0', port))
            except OSError:
                continue
            return port
    raise RuntimeError(f'no free port in {first}-{last}')
