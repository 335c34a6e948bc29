"""Data sources: turn a ``--data SPEC`` into training rows (with stable ids) and a test set.

Specs:
    ``digits``                        scikit-learn's bundled 8x8 digits (offline)
    ``fashion-mnist[:DIR]``, ``mnist[:DIR]``, ``cifar10[:DIR]``
                                      torchvision's datasets, from files on disk
    ``parquet:PATH``, ``csv:PATH``    a table with an id column, a label column and numeric features

Every training row carries a stable id: the id column of a table, the index in the original
split for the built-in datasets. Features are kept as stored (uint8 pixels stay uint8) with a
fixed ``scale`` applied at training time; nothing is fitted on the training rows, because a
fitted transform would remember rows after they are deleted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sisa.errors import SisaError
from sisa.ids import id_bytes
from sisa.registry import Registry
from sisa.settings import DATASET_DEFAULTS
from sisa.workspace.rows import ARROW_THREADS

DEFAULT_TEST_FRACTION = 0.2

"""Parquet and CSV are read without Arrow's thread pool. Its workers can still be alive when
the interpreter exits, and Arrow then aborts the finished process ("terminate called without
an active exception", exit -6; seen once here in a `sisa train` subprocess, and reported for
pyarrow upstream). sisa's files are small, so the threads bought little."""


@dataclass
class Table:
    """Rows: ``ids`` (int64 or str objects), ``X`` (rows, *shape), ``y`` raw labels or None."""

    ids: np.ndarray
    X: np.ndarray
    y: Optional[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask_or_index: np.ndarray) -> "Table":
        return Table(self.ids[mask_or_index], self.X[mask_or_index],
                     None if self.y is None else self.y[mask_or_index])


@dataclass
class Dataset:
    """A loaded source: training rows, optional test rows, and what is needed to read them.

    ``classes`` lists the label values; models predict indices into it. ``scale`` multiplies
    the stored features at training and prediction time.
    """

    spec: str
    train: Table
    test: Optional[Table]
    shape: tuple[int, ...]
    classes: list
    scale: float = 1.0
    feature_names: Optional[list[str]] = None
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def id_kind(self) -> str:
        return "int" if self.train.ids.dtype.kind in "iu" else "str"

    def label_index(self, labels: np.ndarray, what: str) -> np.ndarray:
        """Map raw labels to class indices; labels outside ``classes`` are an error."""
        lookup = {value: i for i, value in enumerate(self.classes)}
        try:
            return np.fromiter((lookup[_plain(v)] for v in labels), dtype=np.int64, count=len(labels))
        except KeyError as exc:
            raise SisaError(f"{what} has label {exc.args[0]!r}, which the training data does not have "
                            f"(classes: {_preview(self.classes)})") from None


@dataclass(frozen=True)
class LoadOptions:
    id_col: str = "id"
    label_col: str = "label"
    test_fraction: float = DEFAULT_TEST_FRACTION


Loader = Callable[[Optional[str], LoadOptions], Dataset]
SOURCES: Registry[Loader] = Registry("dataset")


def load(spec: str, *, id_col: str = "id", label_col: str = "label",
         test_spec: Optional[str] = None, test_fraction: float = DEFAULT_TEST_FRACTION) -> Dataset:
    """Load the source named by ``spec``; ``test_spec`` names a separate evaluation set.

    Without ``test_spec`` the source's own test split is used, or else a fraction of the
    rows chosen by a hash of their id (stable whatever the order or the seed).

    >>> ds = load("digits")
    >>> len(ds.train) + len(ds.test), ds.shape, len(ds.classes)
    (1797, (1, 8, 8), 10)
    """
    if not 0 < test_fraction < 1:
        raise SisaError(f"test fraction must be between 0 and 1, got {test_fraction}")
    options = LoadOptions(id_col, label_col, test_fraction)
    name, arg = parse_spec(spec)
    dataset = SOURCES.get(name)(arg, options)
    dataset.spec = spec
    if test_spec is not None:
        test = load_rows(test_spec, dataset, options, need_labels=True, what="test data")
        dataset.test = test
    elif dataset.test is None:
        held_out = held_out_mask(dataset.train.ids, test_fraction)
        dataset.test = dataset.train.take(held_out)
        dataset.train = dataset.train.take(~held_out)
    if len(dataset.train) == 0:
        raise SisaError(f"{spec} has no training rows")
    return dataset


def load_rows(spec: str, like: Dataset, options: LoadOptions, *, need_labels: bool,
              what: str, need_ids: bool = True) -> Table:
    """Rows of ``spec`` shaped like ``like``'s training rows (for test data and prediction).

    Tables are matched by feature name; the built-in datasets give their test split.
    """
    name, arg = parse_spec(spec)
    if name in ("csv", "parquet"):
        if like.feature_names is None:
            raise SisaError(f"{what} {spec} is a table, but the model was trained on {like.spec} images")
        table, _ = _read_table(name, arg, options, need_labels=need_labels, what=what,
                               features=like.feature_names, need_ids=need_ids)
    else:
        other = load(spec, id_col=options.id_col, label_col=options.label_col,
                     test_fraction=options.test_fraction)
        table = other.test
        if tuple(other.shape) != tuple(like.shape):
            raise SisaError(f"{what} {spec} has rows of shape {other.shape}, but the model was "
                            f"trained on shape {tuple(like.shape)}")
    return table


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    if not isinstance(spec, str) or not spec:
        raise SisaError("empty data spec; use e.g. digits, fashion-mnist, csv:PATH or parquet:PATH")
    name, sep, arg = spec.partition(":")
    if name not in SOURCES:
        suffix = Path(spec).suffix.lower()
        if suffix in (".csv", ".parquet", ".pq"):
            return ("csv" if suffix == ".csv" else "parquet"), spec
        raise SisaError(f"unknown dataset {name!r} in {spec!r}; choose one of: {', '.join(SOURCES)} "
                        f"(tables as csv:PATH or parquet:PATH)")
    return name, (arg if sep else None)


def held_out_mask(ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for the rows held out for testing, chosen by a hash of the id alone."""
    threshold = int(fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(id_bytes(i), digest_size=8, person=b"sisa-test").digest(),
                        "little") < threshold for i in ids),
        dtype=bool, count=len(ids))




def check_features(X: np.ndarray, what: str) -> None:
    """Features must be finite in float32, the type models train in (3.4e39 is finite as
    float64 and infinite as float32)."""
    if X.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = int(np.count_nonzero(~(np.abs(X) <= np.finfo(np.float32).max)))
        if bad:
            raise SisaError(f"{what} has {bad} NaN or infinite values, or values beyond float32's range "
                            f"(about 3.4e38; models train in float32)")


def integral_labels(values: np.ndarray, what: str) -> np.ndarray:
    """Class labels given as numbers: whole numbers within 2^53 (exact in float64), as int64."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise SisaError(f"{what} holds NaN or infinite labels; labels must be classes (integers or text)")
        if not np.all(values == np.round(values)):
            raise SisaError(f"{what} holds non-integer numbers (continuous targets?); labels must be "
                            f"classes (integers or text)")
        if len(values) and np.abs(values).max() > 2**53:
            raise SisaError(f"{what} holds labels beyond 2^53 in magnitude ({np.abs(values).max():g}); "
                            f"labels must be classes (integers or text)")
    return values.astype(np.int64)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _preview(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(repr(_plain(v)) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------------- built-in sources

@SOURCES.register("digits")
def _digits(arg: Optional[str], options: LoadOptions) -> Dataset:
    if arg:
        raise SisaError("digits takes no path: it is bundled with scikit-learn")
    images, target = _sklearn_digits()
    X = images.astype(np.uint8).reshape(-1, 1, 8, 8)  # pixel values 0..16
    ids = np.arange(len(X), dtype=np.int64)
    return Dataset("digits", Table(ids, X, target.astype(np.int64)), None, (1, 8, 8),
                   list(range(10)), scale=1 / 16, defaults=dict(DATASET_DEFAULTS["digits"]))


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read from its data file: importing sklearn.datasets
    costs seconds of start-up, reading the 1,797 rows takes milliseconds."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_source(name: str, tv_class: str, system_dir: Optional[str], defaults: dict[str, Any]) -> Loader:
    def loader(arg: Optional[str], options: LoadOptions) -> Dataset:
        import torchvision.datasets as tvd

        candidates = [Path(arg)] if arg else [Path("data")] + ([Path(system_dir)] if system_dir else [])
        for directory in candidates:
            found = _find_idx(directory, tv_class)
            if found is None:
                continue
            with tempfile.TemporaryDirectory(prefix="sisa-idx-") as tmp:
                raw = Path(tmp, tv_class, "raw")
                raw.mkdir(parents=True)
                for base, path in found.items():
                    opener = gzip.open if path.suffix == ".gz" else open
                    try:
                        with opener(path, "rb") as src, open(raw / base, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    except (OSError, EOFError) as exc:
                        raise SisaError(f"cannot read {path}: {exc}") from None
                splits = []
                for train in (True, False):
                    try:
                        ds = getattr(tvd, tv_class)(tmp, train=train, download=False)
                        images, labels = ds.data.numpy(), ds.targets.numpy()
                    except Exception as exc:  # torchvision raises bare exceptions on bad files
                        raise SisaError(f"{name} files in {directory} are not valid IDX files: {exc}") from None
                    if len(images) != len(labels):
                        raise SisaError(f"{name} files in {directory}: {len(images)} images but "
                                        f"{len(labels)} labels")
                    # test rows are numbered after the training rows: every row has an id of its own
                    first = len(splits[0]) if splits else 0
                    splits.append(Table(np.arange(first, first + len(images), dtype=np.int64),
                                        images.astype(np.uint8)[:, None], labels.astype(np.int64)))
            h, w = splits[0].X.shape[2:]
            return Dataset(name, splits[0], splits[1], (1, int(h), int(w)), list(range(10)),
                           scale=1 / 255, defaults=dict(defaults))
        where = " or ".join(str(c) for c in candidates)
        hint = " (Debian: apt-get install dataset-fashion-mnist)" if system_dir else ""
        raise SisaError(
            f"{name} files not found in {where}. Put the four IDX files ({', '.join(_IDX_FILES)}, "
            f"each optionally .gz) in a folder and pass --data {name}:FOLDER{hint}")

    return loader


def _find_idx(directory: Path, tv_class: str) -> Optional[dict[str, Path]]:
    for folder in (directory, directory / tv_class / "raw"):
        found = {}
        for base in _IDX_FILES:
            for candidate in (folder / base, folder / (base + ".gz")):
                if candidate.is_file():
                    found[base] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


SOURCES.register("fashion-mnist")(_idx_source(
    "fashion-mnist", "FashionMNIST", "/usr/share/datasets/fashion-mnist", DATASET_DEFAULTS["fashion-mnist"]))
SOURCES.register("mnist")(_idx_source("mnist", "MNIST", None, DATASET_DEFAULTS["mnist"]))


@SOURCES.register("cifar10")
def _cifar10(arg: Optional[str], options: LoadOptions) -> Dataset:
    directory = Path(arg or "data")
    binary = directory / "cifar-10-batches-bin"
    if binary.is_dir():
        train = _read_cifar_bin([binary / f"data_batch_{i}.bin" for i in range(1, 6)])
        test = _read_cifar_bin([binary / "test_batch.bin"], first_id=len(train))
    elif (directory / "cifar-10-batches-py").is_dir():
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
        train, test = splits
    else:
        raise SisaError(f"cifar10 files not found in {directory}. Put the binary version "
                        f"(cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin, test_batch.bin) "
                        f"or the Python version (cifar-10-batches-py/) there and pass --data cifar10:{directory}")
    return Dataset("cifar10", train, test, (3, 32, 32), list(range(10)), scale=1 / 255,
                   defaults=dict(DATASET_DEFAULTS["cifar10"]))


def _read_cifar_bin(paths: Sequence[Path], first_id: int = 0) -> Table:
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


# ---------------------------------------------------------------------------- tables

@SOURCES.register("csv")
def _csv(arg: Optional[str], options: LoadOptions) -> Dataset:
    return _table_dataset("csv", arg, options)


@SOURCES.register("parquet")
def _parquet(arg: Optional[str], options: LoadOptions) -> Dataset:
    return _table_dataset("parquet", arg, options)


def _table_dataset(kind: str, path: Optional[str], options: LoadOptions) -> Dataset:
    table, names = _read_table(kind, path, options, need_labels=True, what=f"{kind}:{path}")
    labels = table.y
    kinds = {("int" if isinstance(_plain(v), int) else "str") for v in labels}
    if len(kinds) > 1:
        raise SisaError(f"label column {options.label_col!r} in {path} mixes numbers and text")
    classes = sorted({_plain(v) for v in labels})
    return Dataset(f"{kind}:{path}", table, None, (len(names),), classes, scale=1.0,
                   feature_names=names, defaults=dict(DATASET_DEFAULTS["tables"]))


_INT_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")


def _read_table(kind: str, path: Optional[str], options: LoadOptions, *, need_labels: bool,
                what: str, features: Optional[list[str]] = None,
                need_ids: bool = True) -> tuple[Table, list[str]]:
    """Read and validate a CSV or Parquet table; returns its rows and feature column names."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not path:
        raise SisaError(f"{kind} needs a path: {kind}:PATH")
    if not os.path.isfile(path):
        raise SisaError(f"{what}: no such file: {path}")
    try:
        if kind == "csv":
            # Ids are read as text and become integers only when every one is written as a
            # plain integer, so "007" stays "007" and CSV and Parquet ids partition alike.
            arrow = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=ARROW_THREADS),
                                  convert_options=pcsv.ConvertOptions(column_types={options.id_col: pa.string()}))
        else:
            arrow = pq.read_table(path, use_threads=ARROW_THREADS)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise SisaError(f"cannot read {what} ({path}): {exc}") from None
    columns = arrow.schema.names
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if doubled:
        raise SisaError(f"{what}: column name(s) {_preview(doubled)} appear more than once; give every "
                        f"column its own name")
    if options.id_col in columns:
        ids = _ids(arrow.column(options.id_col), kind, what, options.id_col)
    elif need_ids:
        raise SisaError(f"{what}: no id column {options.id_col!r} (columns: {', '.join(columns)}); "
                        f"name it with --id-col")
    else:
        ids = np.arange(arrow.num_rows, dtype=np.int64)
    has_labels = options.label_col in columns
    if need_labels and not has_labels:
        raise SisaError(f"{what}: no label column {options.label_col!r} (columns: {', '.join(columns)}); "
                        f"name it with --label-col")
    if features is None:
        features = [c for c in columns if c not in (options.id_col, options.label_col)]
        if not features:
            raise SisaError(f"{what}: no feature columns besides {options.id_col!r} and {options.label_col!r}")
    else:
        missing = [c for c in features if c not in columns]
        if missing:
            raise SisaError(f"{what}: missing feature columns {_preview(missing)} that the model was trained on")
    X = np.empty((len(ids), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = arrow.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
            raise SisaError(f"{what}: feature column {name!r} is not numeric ({column.type})")
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise SisaError(f"{what}: feature column {name!r} has {bad} missing, NaN or infinite values")
        X[:, j] = values
        check_features(X[:, j], f"{what}: feature column {name!r}")
    y = None
    if has_labels:
        label = arrow.column(options.label_col)
        if label.null_count:
            raise SisaError(f"{what}: label column {options.label_col!r} has {label.null_count} missing values")
        if pa.types.is_floating(label.type):
            y = integral_labels(label.to_numpy(), f"{what}: label column {options.label_col!r}")
        elif pa.types.is_integer(label.type) or pa.types.is_string(label.type) \
                or pa.types.is_large_string(label.type) or pa.types.is_boolean(label.type):
            y = np.asarray(label.to_pylist(), dtype=object)
            if pa.types.is_integer(label.type) or pa.types.is_boolean(label.type):
                y = y.astype(np.int64)
        else:
            raise SisaError(f"{what}: label column {options.label_col!r} has type {label.type}; "
                            f"labels must be integers or text")
    return Table(ids, X, y), features


def _ids(column, kind: str, what: str, id_col: str) -> np.ndarray:
    import pyarrow as pa

    if column.null_count:
        raise SisaError(f"{what}: id column {id_col!r} has {column.null_count} missing values")
    if pa.types.is_integer(column.type):
        raw = column.to_numpy()
        if raw.dtype == np.uint64 and len(raw) and int(raw.max()) >= 2**63:
            raise SisaError(f"{what}: id column {id_col!r} holds ids of 2^63 or more ({int(raw.max())}), "
                            f"which do not fit sisa's 64-bit signed integer ids; store them as text")
        ids = raw.astype(np.int64)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = column.to_pylist()
        if kind == "csv" and text and all(len(t) <= 20 and _INT_TEXT.fullmatch(t) and -2**63 <= int(t) < 2**63
                                          for t in text):
            ids = np.array([int(t) for t in text], dtype=np.int64)
        else:
            empty = sum(1 for t in text if t == "")
            if empty:
                raise SisaError(f"{what}: id column {id_col!r} has {empty} missing values")
            ids = np.array(text, dtype=object)
    else:
        raise SisaError(f"{what}: id column {id_col!r} has type {column.type}; ids must be integers or text")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise SisaError(f"{what}: duplicate ids in column {id_col!r}: {_preview(unique[counts > 1])}")
    return ids
