"""Checkpoints written atomically: a crash at any moment leaves the previous
checkpoint whole, and `latest.json` names only complete ones.

Layout of a folder:
  step-00000050/ params.params, trainer.states, state.json
  latest.json    {"step": 50, "dir": "step-00000050"}
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ['Checkpointer', 'atomic_write_json']


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path, value):
    path = Path(path)
    with tempfile.NamedTemporaryFile('w', dir=path.parent, delete=False,
                                     suffix='.tmp', encoding='utf-8') as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


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
        with open(tmp / 'state.json', 'w', encoding='utf-8') as f:
            json.dump(dict(state, step=step), f)
        for name in os.listdir(tmp):
            with open(tmp / name, 'rb') as f:
                os.fsync(f.fileno())
        final = self.folder / f'step-{step:08d}'
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.folder)
        atomic_write_json(self.folder / 'latest.json',
                          {'step': step, 'dir': final.name})
        self._prune(final.name)
        return final

    def _prune(self, newest):
        done = sorted(p.name for p in self.folder.glob('step-*') if p.is_dir())
        for name in done[:-self.keep]:
            if name != newest:
                shutil.rmtree(self.folder / name, ignore_errors=True)
        for tmp in self.folder.glob('.tmp-*'):  # left by a killed save
            shutil.rmtree(tmp, ignore_errors=True)

    def latest(self):
        """The newest complete checkpoint's folder, or None."""
        pointer = self.folder / 'latest.json'
        if not pointer.is_file():
            return None
        try:
            with open(pointer, encoding='utf-8') as f:
                latest = self.folder / json.load(f)['dir']
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f'checkpoint pointer {pointer} is corrupt: {exc}') from exc
        return latest

    def load(self, net, trainer, ctx=None):
        """Restore the newest checkpoint into net and trainer; its state."""
        latest = self.latest()
        if latest is None:
            raise ValueError(f'no checkpoint in {self.folder} to resume from')
        params, states = latest / 'params.params', latest / 'trainer.states'
        try:
            with open(latest / 'state.json', encoding='utf-8') as f:
                state = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f'checkpoint file {latest / "state.json"} is '
                             f'missing or corrupt: {exc}') from exc
        try:
            net.load_parameters(str(params), ctx=ctx)
        except Exception as exc:  # MXNet raises its own error types
            raise ValueError(f'checkpoint file {params} is missing, corrupt or '
                             f'for another model: {exc}') from exc
        if trainer is not None:
            try:
                trainer.load_states(str(states))
            except Exception as exc:
                raise ValueError(f'checkpoint file {states} is missing or '
                                 f'corrupt: {exc}') from exc
        return state
