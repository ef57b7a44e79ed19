"""Checkpoints and run folders that never lose work.

A checkpoint is written into a temporary folder, its files' SHA-1s recorded
last in its state.json, and renamed into place: a crash at any moment leaves
every earlier checkpoint whole. Loading takes the newest checkpoint that
verifies (latest.json is only a hint) and falls back past a corrupt one,
saying so. A run folder belongs to one run at a time (a lock), is checked
writable before training, and is not reused by a fresh run unless told to.

Layout of a checkpoints folder:
  step-00000050/ params.params, trainer.states, state.json
  latest.json    {"step": 50, "dir": "step-00000050"}
"""
import errno
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .data.files import sha1_of
from .fileio import atomic_write_json, check_writable_folder, fsync_folder

__all__ = ['Checkpointer', 'RunFolder']


class Checkpointer:
    """Save and restore (params, trainer states, JSON state) in `folder`."""
    def __init__(self, folder, keep=2):
        self.folder = Path(folder)
        self.keep = keep

    def save(self, step, net, trainer, state):
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix='.tmp-', dir=self.folder))
        net.save_parameters(str(tmp / 'params.params'))
        if trainer is not None:
            trainer.save_states(str(tmp / 'trainer.states'))
        files = {}
        for name in sorted(os.listdir(tmp)):
            with open(tmp / name, 'rb') as f:
                os.fsync(f.fileno())
            files[name] = sha1_of(tmp / name)
        with open(tmp / 'state.json', 'w', encoding='utf-8') as f:
            json.dump(dict(state, step=step, files=files), f)
            f.flush()
            os.fsync(f.fileno())
        final = self.folder / f'step-{step:08d}'
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_folder(self.folder)
        atomic_write_json(self.folder / 'latest.json',
                          {'step': step, 'dir': final.name})
        self._prune(final.name)
        return final

    def _prune(self, newest):
        done = [p.name for p in self.candidates()]
        for name in done[self.keep:]:
            if name != newest:
                shutil.rmtree(self.folder / name, ignore_errors=True)
        for tmp in self.folder.glob('.tmp-*'):  # left by a killed save
            shutil.rmtree(tmp, ignore_errors=True)

    def candidates(self):
        """Checkpoint folders, newest first (whatever latest.json says:
        it may be missing or behind)."""
        steps = []
        for path in self.folder.glob('step-*'):
            suffix = path.name[len('step-'):]
            if path.is_dir() and suffix.isdigit():
                steps.append((int(suffix), path))
        return [path for _, path in sorted(steps, reverse=True)]

    def latest(self):
        """The newest checkpoint folder (not yet verified), or None."""
        found = self.candidates()
        return found[0] if found else None

    @staticmethod
    def _verified_state(folder):
        """The state of checkpoint `folder` if every file matches its SHA-1."""
        path = folder / 'state.json'
        try:
            with open(path, encoding='utf-8') as f:
                state = json.load(f)
            files = dict(state.get('files', {}))  # none in older checkpoints
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f'checkpoint file {path} is missing or corrupt: {exc}') from exc
        for name, digest in files.items():
            try:
                actual = sha1_of(folder / name)
            except OSError as exc:
                raise ValueError(f'checkpoint file {folder / name} is missing: {exc}') from exc
            if actual != digest:
                raise ValueError(f'checkpoint file {folder / name} is corrupt '
                                 '(its SHA-1 differs from the one recorded)')
        return state

    def load(self, net, trainer, ctx=None, check=None, required=()):
        """Restore the newest intact checkpoint into net and trainer; its
        state (with 'dir', the folder it came from). A corrupt checkpoint, or
        one whose state lacks a `required` field, is reported with a warning
        and the one before it is tried. `check(state)` may refuse a verified
        checkpoint (a ValueError) before anything loads."""
        found = self.candidates()
        if not found:
            raise ValueError(f'no checkpoint in {self.folder} to resume from')
        problems = []
        for folder in found:
            try:
                state = self._verified_state(folder)
                lacking = [name for name in required if name not in state]
                if lacking:
                    raise ValueError(f'checkpoint file {folder / "state.json"} lacks the '
                                     f'fields {lacking}')
            except ValueError as exc:
                problems.append(str(exc))
                warnings.warn(f'skipping checkpoint {folder.name}: {exc}')
                continue
            if check is not None:
                check(state)
            try:
                try:
                    net.load_parameters(str(folder / 'params.params'), ctx=ctx)
                except Exception as exc:  # MXNet raises its own error types
                    raise ValueError(f'checkpoint file {folder / "params.params"} is '
                                     f'for another model: {exc}') from exc
                if trainer is not None:
                    try:
                        trainer.load_states(str(folder / 'trainer.states'))
                    except Exception as exc:
                        raise ValueError(f'checkpoint file {folder / "trainer.states"} '
                                         f'does not fit this trainer: {exc}') from exc
            except ValueError as exc:
                problems.append(str(exc))
                warnings.warn(f'skipping checkpoint {folder.name}: {exc}')
                continue
            state['dir'] = str(folder)
            return state
        raise ValueError(f'no intact checkpoint in {self.folder}: ' + '; '.join(problems))


class RunFolder:
    """An output folder owned by one run at a time.

    Refuses a path that is a file or not writable, a folder another run
    holds (a lock released when the run ends or dies), and a fresh run over
    a previous run's outputs unless `overwrite`, which deletes them first.
    writer=False: the view of a job's other workers, which only read its
    checkpoints (the chief owns the folder).
    """
    def __init__(self, path, outputs, resume=False, overwrite=False, writer=True):
        self.path = Path(path)
        self.checkpoints = Checkpointer(self.path / 'checkpoints')
        self.writer = writer
        if not writer:  # another worker of the job owns it: read checkpoints only
            self._lock = None
            return
        for folder in (self.path, self.path / 'checkpoints'):
            check_writable_folder(folder, 'out_dir')
        self._lock = open(self.path / '.lock', 'a+')
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.seek(0)
            holder = self._lock.read().strip() or 'unknown'
            self._lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ValueError(f'out_dir {self.path} is in use by another run '
                                 f'(pid {holder}); wait for it or choose another '
                                 'out_dir') from exc
            raise
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        used = [name for name in outputs if (self.path / name).exists()]
        if self.checkpoints.candidates():
            used.append('checkpoints/')
        if used and overwrite:
            for name in used:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        elif used and not (resume and self.checkpoints.candidates()):
            self.close()
            what = ('continue it with resume (--resume)' if self.checkpoints.candidates()
                    else 'it has no checkpoint to resume from')
            raise ValueError(f'out_dir {self.path} holds a previous run '
                             f'({", ".join(used)}): {what}, replace it with '
                             'overwrite (--overwrite), or choose another out_dir')

    def close(self):
        if self._lock is not None and not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
