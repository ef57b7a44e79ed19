"""Finding and checking data files.

A dataset is looked for, in order: under the `data_dir` argument, under
`$BERT_GLUON_DATA`, in the cache folder (`$BERT_GLUON_CACHE`, default
`~/.cache/bert_gluon`), and last downloaded from its official address into
the cache with the archive's SHA-1 checked. Every root has the layout of
`shared/data`: `<root>/wikitext-2/wiki.train.tokens`,
`<root>/glue_data/MRPC/train.tsv`, ... Files with a published SHA-1 are
checked, so a truncated or corrupt copy fails with its name.
"""
import dataclasses
import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path

__all__ = ['DATASETS', 'find_dataset', 'sha1_of', 'cache_dir']


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
    folder: str                 # relative to a data root
    files: dict                 # file name -> SHA-1 (None: not published)
    url: str = None             # official archive
    url_sha1: str = None
    archive_folder: str = None  # folder inside the archive holding the files


DATASETS = {
    'wikitext-2': DatasetFiles(
        'wikitext-2',
        {'wiki.train.tokens': '863f29c46ef9d167fff4940ec821195882fe29d1',
         'wiki.valid.tokens': '0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422',
         'wiki.test.tokens': 'c7b8ce0aa086fb34dab808c5c49224211eb2b172'},
        # d2l's mirror of Salesforce's wikitext-2-v1.zip (same SHA-1)
        'http://d2l-data.s3-accelerate.amazonaws.com/wikitext-2-v1.zip',
        '3c914d17d80b1459be871a5039ac23e752a53cbe', 'wikitext-2'),
    'MRPC': DatasetFiles(
        'glue_data/MRPC',
        {'train.tsv': '131675ffd3d2f04f286049d31cca506c8acba69e',
         'dev.tsv': 'e4486577c4cb2e5c2a3fd961eb24f03c623ea02d'}),
    'RTE': DatasetFiles(
        'glue_data/RTE',
        {'train.tsv': 'ec2b246745bb5c9d92aee0800684c08902742730',
         'dev.tsv': 'ade75e0673862dcac9c653efb9f59f51be2749aa'},
        'https://dl.fbaipublicfiles.com/glue/data/RTE.zip', None, 'RTE'),
    # d2l's pretrained checkpoints (book section "Fine-Tuning BERT")
    'bert.small': DatasetFiles(
        'bert.small', {'vocab.json': None, 'pretrained.params': None},
        'http://d2l-data.s3-accelerate.amazonaws.com/bert.small.zip',
        'a4e718a47137ccd1809c9107ab4f5edd317bae2c'),
    'bert.base': DatasetFiles(
        'bert.base', {'vocab.json': None, 'pretrained.params': None},
        'http://d2l-data.s3-accelerate.amazonaws.com/bert.base.zip',
        '7b3820b35da691042e5d34c0971ac3edbd80d3f4'),
    'SNLI': DatasetFiles(
        'snli_1.0',
        {'snli_1.0_train.txt': None, 'snli_1.0_test.txt': None},
        'https://nlp.stanford.edu/projects/snli/snli_1.0.zip',
        '9fcde07509c7e87ec61c640c1b2753d9041758e4', 'snli_1.0'),
}

_verified = {}  # (path, size, mtime) of files whose SHA-1 was checked


def cache_dir():
    """Where downloaded data is kept: $BERT_GLUON_CACHE, else ~/.cache/bert_gluon."""
    return Path(os.environ.get('BERT_GLUON_CACHE',
                               Path.home() / '.cache' / 'bert_gluon'))


def sha1_of(path, chunk=1 << 20):
    """The SHA-1 hex digest of the file at `path`, read in chunks."""
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def _check_file(path, expected):
    if expected is None:
        return
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) == expected:
        return
    actual = sha1_of(path)
    if actual != expected:
        raise ValueError(f'{path} is corrupt or truncated: SHA-1 {actual}, '
                         f'expected {expected} ({stat.st_size} bytes). '
                         'Replace it with the official file.')
    _verified[key] = expected


def _folder_in(root, spec):
    """The dataset folder under `root` if it holds every file, else None.
    `root` may also be the dataset folder itself."""
    root = Path(root).expanduser()
    for folder in (root / spec.folder, root):
        if all((folder / name).is_file() for name in spec.files):
            return folder
    return None


def _download(name, spec, root):
    folder = root / spec.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        archive = Path(tmp) / 'archive.zip'
        with urllib.request.urlopen(spec.url, timeout=30) as response, \
                open(archive, 'wb') as f:
            shutil.copyfileobj(response, f)
        if spec.url_sha1 and sha1_of(archive) != spec.url_sha1:
            raise ValueError(f'download of {name} from {spec.url} has the '
                             f'wrong SHA-1 (expected {spec.url_sha1})')
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        if spec.archive_folder:
            extracted = Path(tmp) / spec.archive_folder
        else:  # the archive's folder that holds the files, wherever it is
            holders = [p.parent for p in Path(tmp).rglob(next(iter(spec.files)))]
            if len(holders) != 1:
                raise ValueError(f'the archive of {name} from {spec.url} does '
                                 f'not hold one {next(iter(spec.files))}')
            extracted = holders[0]
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(extracted, folder)  # appears whole or not at all
    return folder


def find_dataset(name, data_dir=None, download=True):
    """The folder holding dataset `name`'s files, checked."""
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; expected one of '
                         f'{sorted(DATASETS)}')
    spec = DATASETS[name]
    places = []
    if data_dir is not None:
        places.append(('data_dir argument', data_dir))
    if os.environ.get('BERT_GLUON_DATA'):
        places.append(('$BERT_GLUON_DATA', os.environ['BERT_GLUON_DATA']))
    places.append(('cache', cache_dir()))
    for what, root in places:
        folder = _folder_in(root, spec)
        if folder is not None:
            for file_name, sha1 in spec.files.items():
                _check_file(folder / file_name, sha1)
            if data_dir is not None and what != 'data_dir argument':
                # the folder the caller named was passed over: say which one was read
                warnings.warn(f'data_dir {data_dir} does not hold {name} '
                              f'({", ".join(spec.files)}); read it from {what}: {folder}',
                              stacklevel=2)
            return folder
    looked = '; '.join(f'{what}: {Path(root).expanduser() / spec.folder}'
                       for what, root in places)
    error = None
    if download and spec.url:
        try:
            folder = _download(name, spec, cache_dir())
            for file_name, sha1 in spec.files.items():
                _check_file(folder / file_name, sha1)
            if data_dir is not None:
                warnings.warn(f'data_dir {data_dir} does not hold {name}; downloaded it '
                              f'to {folder}', stacklevel=2)
            return folder
        except OSError as exc:  # offline, refused, disk full
            error = f'download from {spec.url} failed ({exc})'
    where = ('no official download exists' if not spec.url else
             error or 'download disabled')
    raise FileNotFoundError(
        f'{name} not found. Looked in {looked}; {where}. Put '
        f'{", ".join(spec.files)} in <root>/{spec.folder}/ and pass '
        f'data_dir=<root> or set BERT_GLUON_DATA=<root>.')
