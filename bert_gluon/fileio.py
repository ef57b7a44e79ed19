"""Files written whole or not at all, output paths checked before any work,
and JSON read with errors that name the file.

`atomic_write(path, write)` has `write(tmp)` fill a temporary file beside
`path`, fsyncs it, renames it over `path` and fsyncs the folder: a reader,
or a crash at any moment, sees the old file or the new one, never a part.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ['atomic_write', 'atomic_write_json', 'atomic_write_bytes', 'atomic_copy',
           'atomic_save_parameters', 'fsync_folder', 'read_json', 'check_writable_folder',
           'check_output_file', 'check_output_folder']

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp's files are 0600, ours get the usual mode


def fsync_folder(folder):
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """`write(tmp_path)` fills a temporary file that then replaces `path`
    (mode 0666 less the umask, as open() would give); returns `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_folder(path.parent)
    return path


def atomic_write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            f.write(data)
    return atomic_write(path, write)


def atomic_write_json(path, value, indent=1):
    """Write `value` as UTF-8 JSON to `path` atomically."""
    return atomic_write_bytes(path, json.dumps(value, indent=indent, ensure_ascii=False)
                              .encode('utf-8'))


def atomic_copy(source, path):
    """Copy the file `source` to `path` atomically."""
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


def atomic_save_parameters(net, path):
    """net.save_parameters(path), seen by others whole or not at all."""
    return atomic_write(path, lambda tmp: net.save_parameters(str(tmp)))


def read_json(path):
    """A JSON file's value; a ValueError naming the file if it is missing,
    unreadable or not JSON."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f'{path} is not a readable JSON file: {exc}') from exc


def check_writable_folder(folder, argument):
    """Refuse (naming `argument`) a folder that is a file or cannot be
    written: found now, not at the first write after the work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f'{argument}: {folder} is a file, not a folder')
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder, prefix='.write-test-').close()
    except OSError as exc:
        raise ValueError(f'{argument}: {folder} is not a writable folder: {exc}') from exc


def check_output_file(path, argument, overwrite=False):
    """A file path to write: not a folder, in a writable folder (made if
    missing), and not an existing file unless `overwrite`. Returns a Path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f'{argument}: {path} is a folder; expected a file path')
    if path.exists() and not overwrite:
        raise ValueError(f'{argument}: {path} exists; pass overwrite (--overwrite) to '
                         'replace it, or choose another path')
    check_writable_folder(path.parent, argument)
    return path


def check_output_folder(folder, argument, overwrite=False):
    """A folder to fill: writable (made if missing) and empty unless
    `overwrite`, so no file of the user's is replaced unasked. Returns a Path."""
    folder = Path(folder)
    check_writable_folder(folder, argument)
    held = sorted(p.name for p in folder.iterdir())
    if held and not overwrite:
        raise ValueError(f'{argument}: {folder} is not empty ({", ".join(held[:5])}'
                         f'{", ..." if len(held) > 5 else ""}); pass overwrite '
                         '(--overwrite) to write into it, or choose an empty folder')
    return folder
