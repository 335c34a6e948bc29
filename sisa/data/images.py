"""The built-in image datasets: scikit-learn's digits, Fashion-MNIST and MNIST (IDX files),
CIFAR-10. Rows are numbered by their index in the original split, test rows after the
training rows, so every row has an id of its own."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sisa.data.dataset import Dataset, LoadOptions, Table
from sisa.errors import SisaError
from sisa.settings import DATASET_DEFAULTS

Loader = Callable[[Optional[str], LoadOptions], Dataset]


def digits(arg: Optional[str], options: LoadOptions) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 rows; pixel values 0..16)."""
    if arg:
        raise SisaError("digits takes no path: it is bundled with scikit-learn")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = bunch.data.astype(np.uint8).reshape(-1, 1, 8, 8)
    ids = np.arange(len(X), dtype=np.int64)
    return Dataset("digits", Table(ids, X, bunch.target.astype(np.int64)), None, (1, 8, 8),
                   list(range(10)), scale=1 / 16, defaults=dict(DATASET_DEFAULTS["digits"]))


# ---------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, what images and labels are stored as


def idx_source(name: str, folder_name: str, system_dir: Optional[str], defaults: dict[str, Any]) -> Loader:
    """The loader of an IDX dataset: the four files from the folder the spec names, else from
    ``data/`` or ``system_dir``; flat, or in torchvision's ``<folder_name>/raw`` layout."""

    def loader(arg: Optional[str], options: LoadOptions) -> Dataset:
        candidates = [Path(arg)] if arg else [Path("data")] + ([Path(system_dir)] if system_dir else [])
        for directory in candidates:
            found = find_idx(directory, folder_name)
            if found is not None:
                return _idx_dataset(name, directory, found, defaults)
        where = " or ".join(str(c) for c in candidates)
        hint = " (Debian: apt-get install dataset-fashion-mnist)" if system_dir else ""
        raise SisaError(
            f"{name} files not found in {where}. Put the four IDX files ({', '.join(IDX_FILES)}, "
            f"each optionally .gz) in a folder and pass --data {name}:FOLDER{hint}")

    return loader


def find_idx(directory: Path, folder_name: str) -> Optional[dict[str, Path]]:
    """The four IDX files in ``directory`` or its ``<folder_name>/raw``, each plain or .gz."""
    for folder in (directory, directory / folder_name / "raw"):
        found = {}
        for base in IDX_FILES:
            for candidate in (folder / base, folder / (base + ".gz")):
                if candidate.is_file():
                    found[base] = candidate
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _idx_dataset(name: str, directory: Path, found: dict[str, Path], defaults: dict[str, Any]) -> Dataset:
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(found[f"{prefix}-images-idx3-ubyte"], 3, name)
        labels = read_idx(found[f"{prefix}-labels-idx1-ubyte"], 1, name)
        if len(images) != len(labels):
            raise SisaError(f"{name} files in {directory}: {len(images)} images but {len(labels)} labels")
        # test rows are numbered after the training rows: every row has an id of its own
        first = len(splits[0]) if splits else 0
        splits.append(Table(np.arange(first, first + len(images), dtype=np.int64),
                            images[:, None], labels.astype(np.int64)))
    h, w = splits[0].X.shape[2:]
    return Dataset(name, splits[0], splits[1], (1, int(h), int(w)), list(range(10)),
                   scale=1 / 255, defaults=dict(defaults))


def read_idx(path: Path, ndim: int, name: str) -> np.ndarray:
    """The unsigned bytes of an IDX file with ``ndim`` dimensions, read where it lies (gzipped
    when its name ends in .gz). The format: two zero bytes, the type code (0x08: unsigned
    bytes), the number of dimensions, each dimension's size as a big-endian 32-bit integer,
    then the values in row-major order, nothing after them."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            magic = file.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0":
                raise _not_idx(name, path, "it does not start with an IDX magic number (00 00 type dims)")
            if magic[2] != _IDX_UBYTE:
                raise _not_idx(name, path, f"its values are of IDX type 0x{magic[2]:02x}, not unsigned bytes (0x08)")
            if magic[3] != ndim:
                raise _not_idx(name, path, f"it has {magic[3]} dimensions, not {ndim}")
            sizes = file.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise _not_idx(name, path, "it ends inside its header")
            array = np.empty(struct.unpack(f">{ndim}I", sizes), dtype=np.uint8)
            shape = "x".join(map(str, array.shape))
            filled = _read_into(file, array.reshape(-1))
            if filled < array.size:
                raise _not_idx(name, path, f"its header gives {shape} = {array.size} values, "
                                           f"but only {filled} follow (a truncated file?)")
            if file.read(1):
                raise _not_idx(name, path, f"more than the {array.size} values its header gives ({shape}) follow")
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a damaged gzip stream
        raise SisaError(f"cannot read {name} file {path}: {exc}") from None
    return array


def _read_into(file, flat: np.ndarray) -> int:
    """Fill ``flat`` from ``file`` as far as the file goes; returns the bytes read."""
    view, filled = memoryview(flat), 0
    while filled < flat.size:
        n = file.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _not_idx(name: str, path: Path, reason: str) -> SisaError:
    return SisaError(f"{name} file {path} is not a valid IDX file: {reason}")


# ---------------------------------------------------------------------------- CIFAR-10

def cifar10(arg: Optional[str], options: LoadOptions) -> Dataset:
    """CIFAR-10 from its binary version, or from its Python version checked by torchvision."""
    directory = Path(arg or "data")
    binary = directory / "cifar-10-batches-bin"
    if binary.is_dir():
        train = read_cifar_bin([binary / f"data_batch_{i}.bin" for i in range(1, 6)])
        test = read_cifar_bin([binary / "test_batch.bin"], first_id=len(train))
    elif (directory / "cifar-10-batches-py").is_dir():
        train, test = _cifar10_python(directory)
    else:
        raise SisaError(f"cifar10 files not found in {directory}. Put the binary version "
                        f"(cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin, test_batch.bin) "
                        f"or the Python version (cifar-10-batches-py/) there and pass --data cifar10:{directory}")
    return Dataset("cifar10", train, test, (3, 32, 32), list(range(10)), scale=1 / 255,
                   defaults=dict(DATASET_DEFAULTS["cifar10"]))


def _cifar10_python(directory: Path) -> tuple[Table, Table]:
    # The Python version of CIFAR-10 is pickled; torchvision checks every file against the
    # published md5 sums before unpickling it, so only the genuine files are ever loaded.
    import torchvision.datasets as tvd

    splits = []
    for is_train in (True, False):
        try:
            ds = tvd.CIFAR10(str(directory), train=is_train, download=False)
        except RuntimeError as exc:
            raise SisaError(f"cifar10 files in {directory / 'cifar-10-batches-py'} are missing or "
                            f"do not match the published checksums ({exc}); refusing to unpickle them") from None
        first = len(splits[0]) if splits else 0  # test ids follow the training ids
        splits.append(Table(np.arange(first, first + len(ds.data), dtype=np.int64),
                            np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                            np.asarray(ds.targets, dtype=np.int64)))
    return splits[0], splits[1]


def read_cifar_bin(paths: Sequence[Path], first_id: int = 0) -> Table:
    """Rows of CIFAR-10 binary batches: records of a label byte and 3x32x32 pixel bytes."""
    record = 1 + 3 * 32 * 32
    chunks = []
    for path in paths:
        try:
            raw = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise SisaError(f"cannot read {path}: {exc}") from None
        if raw.size == 0 or raw.size % record:
            raise SisaError(f"{path} is not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                            f"multiple of {record}")
        chunks.append(raw.reshape(-1, record))
    rows = np.concatenate(chunks)
    return Table(np.arange(first_id, first_id + len(rows), dtype=np.int64),
                 np.ascontiguousarray(rows[:, 1:].reshape(-1, 3, 32, 32)), rows[:, 0].astype(np.int64))
