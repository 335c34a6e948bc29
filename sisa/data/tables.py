"""Tables as data: CSV and Parquet files with an id column, a label column and numeric features.

Parquet and CSV are read without Arrow's thread pool. Its workers can still be alive when
the interpreter exits, and Arrow then aborts the finished process ("terminate called without
an active exception", exit -6; seen once here in a `sisa train` subprocess, and reported for
pyarrow upstream). sisa's files are small, so the threads bought little.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from sisa.data.dataset import (
    Dataset,
    LoadOptions,
    Table,
    check_features,
    integral_labels,
    plain,
    preview,
)
from sisa.data.streaming import StreamedFeatures
from sisa.errors import SisaError
from sisa.settings import DATASET_DEFAULTS
from sisa.workspace.rows import ARROW_THREADS

_INT_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")


def csv_source(arg: Optional[str], options: LoadOptions) -> Dataset:
    return table_dataset("csv", arg, options)


def parquet_source(arg: Optional[str], options: LoadOptions) -> Dataset:
    return table_dataset("parquet", arg, options)


def table_dataset(kind: str, path: Optional[str], options: LoadOptions) -> Dataset:
    """A table as a dataset: every column but the id and the label is a feature (left in the
    file, read a batch at a time, with ``options.stream``)."""
    table, names = read_table(kind, path, options, need_labels=True, what=f"{kind}:{path}", stream=options.stream)
    labels = table.y
    if labels.dtype != object:
        classes = np.unique(labels).tolist()
    else:
        kinds = {("int" if isinstance(plain(v), int) else "str") for v in labels}
        if len(kinds) > 1:
            raise SisaError(f"label column {options.label_col!r} in {path} mixes numbers and text")
        classes = sorted({plain(v) for v in labels})
    return Dataset(f"{kind}:{path}", table, None, (len(names),), classes, scale=1.0,
                   feature_names=names, defaults=dict(DATASET_DEFAULTS["tables"]))


def read_table(kind: str, path: Optional[str], options: LoadOptions, *, need_labels: bool,
               what: str, features: Optional[list[str]] = None,
               need_ids: bool = True, exact: bool = False, stream: bool = False,
               ids_hint: str = "name it with --id-col") -> tuple[Table, list[str]]:
    """Read and validate a CSV or Parquet table; returns its rows and feature column names
    (``features`` when given: the columns a model was trained on; with ``exact``, no other
    columns besides the id and label may be there, as for rows that will be trained on).
    ``ids_hint`` ends the message for a missing id column.

    With ``stream`` only the ids and labels are read now; the features stay in the file
    (:class:`~sisa.data.streaming.StreamedFeatures`) and are checked as they are read. A
    ``path`` of ``-`` is standard input, read whole (never streamed)."""
    if path == "-":
        path, stream = sys.stdin.buffer.read(), False
    columns = _column_names(kind, path, options, what)
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if doubled:
        raise SisaError(f"{what}: column name(s) {preview(doubled)} appear more than once; give every "
                        f"column its own name")
    if stream and need_ids and options.id_col in columns:
        kept = [c for c in (options.id_col, options.label_col) if c in columns]
        arrow = _read_arrow(kind, path, options, what, kept)
    else:
        stream = False
        arrow = _read_arrow(kind, path, options, what)
    if arrow.num_rows == 0:
        raise SisaError(f"{what} has no rows")
    if options.id_col in columns:
        ids = _ids(arrow.column(options.id_col), kind, what, options.id_col)
    elif need_ids:
        raise SisaError(f"{what}: no id column {options.id_col!r} (columns: {', '.join(columns)}); "
                        f"{ids_hint}")
    else:
        ids = np.arange(arrow.num_rows, dtype=np.int64)
    has_labels = options.label_col in columns
    if need_labels and not has_labels:
        raise SisaError(f"{what}: no label column {options.label_col!r} (columns: {', '.join(columns)}); "
                        f"name it with --label-col")
    features = _feature_columns(columns, options, what, features)
    extra = [c for c in columns if c not in features and c not in (options.id_col, options.label_col)]
    if exact and extra:
        raise SisaError(f"{what}: column(s) {preview(extra)} are not feature columns of the workspace "
                        f"(a training would take them for features); drop them first")
    y = _labels(arrow.column(options.label_col), what, options.label_col) if has_labels else None
    if stream:
        first = _read_arrow(kind, path, options, what, list(features), first_block=True)
        _features(first.slice(0, 0), features, 0, what)  # a column that is not numeric, before any row is read
        types = {name: first.schema.field(name).type for name in features}
        if has_labels:
            types[options.label_col] = arrow.schema.field(options.label_col).type
        source = _TableFeatures(kind, str(path), options, tuple(features), what, ids, y, types)
        X: Any = StreamedFeatures(source, np.arange(len(ids)))
    else:
        X = _features(arrow, features, len(ids), what)
    return Table(ids, X, y), features


STREAM_BATCH_ROWS = 65536
"""Rows of a Parquet table read at a time when its features are streamed."""
STREAM_CSV_BLOCK_BYTES = 1 << 20
"""Bytes of a CSV table read at a time when its features are streamed."""


@dataclass(frozen=True, eq=False)
class _TableFeatures:
    """The feature columns of a CSV or Parquet file, read a batch at a time
    (:class:`~sisa.data.streaming.FeatureSource`). Every batch's ids and labels must be those
    the first read gave (``ids``, ``labels``: the whole file's), row for row: a file changed
    in between is refused, never trained as a mix of two versions."""

    kind: str
    path: str
    options: LoadOptions
    features: tuple[str, ...]
    what: str
    ids: np.ndarray
    labels: Optional[np.ndarray]
    types: dict
    """Arrow types of the feature columns (from a CSV's first block) and of the label column."""

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (len(self.features),)

    def batches(self) -> Iterator[np.ndarray]:
        import pyarrow as pa

        label_col = self.options.label_col if self.labels is not None else None
        columns = [self.options.id_col, *([label_col] if label_col else []), *self.features]
        start = 0
        try:
            for batch in _arrow_batches(self.kind, self.path, self.options, columns, self._csv_types()):
                table = pa.Table.from_batches([batch])
                stop = start + table.num_rows
                what = f"{self.what} (rows {start}-{stop - 1})"
                if sorted(table.schema.names) != sorted(columns) or stop > len(self.ids) \
                        or not np.array_equal(_batch_ids(table.column(self.options.id_col), self.ids.dtype), self.ids[start:stop]) \
                        or (label_col and not np.array_equal(_labels(table.column(label_col), what, label_col),
                                                             self.labels[start:stop])):
                    raise SisaError(f"{self.what} changed while it was being read (its columns, ids or labels "
                                    f"are not those read first); nothing was written to the workspace")
                yield _features(table, list(self.features), table.num_rows, what)
                start = stop
        except (pa.ArrowInvalid, pa.ArrowKeyError, OSError, UnicodeDecodeError) as exc:
            raise SisaError(f"cannot read {self.what} ({self.path}): {exc}") from None
        if start != len(self.ids):
            raise SisaError(f"{self.what} has {start} rows where it had {len(self.ids)} when first read; it "
                            f"changed while it was being read, and nothing was written to the workspace")

    def _csv_types(self) -> dict:
        """A CSV's column types for the second read: the label's as the whole file gave it;
        numeric features as float64, whatever a first block of integers or empty cells
        suggests (sisa trains on them as floats anyway), so a later 1.5 still reads."""
        import pyarrow as pa

        if self.kind != "csv":
            return {}
        widened = {name: pa.float64() if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t))
                   else t for name, t in self.types.items() if name in self.features}
        if self.labels is not None:
            widened[self.options.label_col] = self.types[self.options.label_col]
        return widened


def _batch_ids(column, dtype: np.dtype) -> np.ndarray:
    """A batch's ids of the kind :func:`_ids` gave for the whole column (compared with them)."""
    import pyarrow as pa

    if dtype == object:
        return np.asarray(column.to_pylist(), dtype=object)
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    try:
        return column.cast(pa.int64()).to_numpy()  # CSV ids read as text, all plain integers at first
    except pa.ArrowInvalid:
        return np.asarray(column.to_pylist(), dtype=object)  # not now: differs from the ids read first


def _column_names(kind: str, path: Optional[str], options: LoadOptions, what: str) -> list[str]:
    if kind == "csv":
        return _read_arrow(kind, path, options, what, first_block=True).schema.names
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_path(kind, path, what)
    try:
        return pq.read_schema(_opened(path)).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise SisaError(f"cannot read {what} ({_shown(path)}): {exc}") from None


def _shown(path) -> str:
    """``path`` for a message (standard input's bytes are never echoed)."""
    return "standard input" if isinstance(path, bytes) else str(path)


def _opened(path):
    """``path`` as Arrow reads it: a file name, or a fresh reader over bytes (standard input)."""
    import pyarrow as pa

    return pa.BufferReader(path) if isinstance(path, bytes) else path


def _check_path(kind: str, path, what: str) -> None:
    if isinstance(path, bytes):
        return
    if not path:
        raise SisaError(f"{kind} needs a path: {kind}:PATH")
    if not os.path.isfile(path):
        raise SisaError(f"{what}: no such file: {path}")


def _arrow_batches(kind: str, path: str, options: LoadOptions, columns: list[str], types: dict):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if kind == "csv":
        convert = pcsv.ConvertOptions(column_types={**types, options.id_col: pa.string()}, include_columns=columns)
        yield from pcsv.open_csv(path, read_options=pcsv.ReadOptions(use_threads=ARROW_THREADS,
                                                                     block_size=STREAM_CSV_BLOCK_BYTES),
                                 convert_options=convert)
    else:
        # pre_buffer would keep every row group's bytes read so far (memory growing with the file)
        yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=STREAM_BATCH_ROWS, columns=columns,
                                                                       use_threads=ARROW_THREADS)


def _read_arrow(kind: str, path: Optional[str], options: LoadOptions, what: str,
                columns: Optional[list[str]] = None, *, first_block: bool = False):
    """The file as an Arrow table (CSV ids as text: they become integers in :func:`_ids`):
    only ``columns`` when given; with ``first_block``, a CSV file's first block only (its
    header and the types inferred from it; a Parquet file's first rows)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    _check_path(kind, path, what)
    try:
        if kind == "csv":
            # Ids are read as text and become integers only when every one is written as a
            # plain integer, so "007" stays "007" and CSV and Parquet ids partition alike.
            convert = pcsv.ConvertOptions(column_types={options.id_col: pa.string()}, include_columns=columns)
            read = pcsv.ReadOptions(use_threads=ARROW_THREADS)
            if first_block:
                reader = pcsv.open_csv(_opened(path), read_options=read, convert_options=convert)
                batch = next(iter(reader), None)
                return reader.schema.empty_table() if batch is None else pa.Table.from_batches([batch])
            return pcsv.read_csv(_opened(path), read_options=read, convert_options=convert)
        if first_block:  # no rows: the columns and their types
            schema = pq.read_schema(_opened(path))
            return schema.empty_table().select(columns if columns is not None else schema.names)
        return pq.read_table(_opened(path), columns=columns, use_threads=ARROW_THREADS)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise SisaError(f"cannot read {what} ({_shown(path)}): {exc}") from None


def _feature_columns(columns: list[str], options: LoadOptions, what: str,
                     features: Optional[list[str]]) -> list[str]:
    """The given ``features``, all present; or else every column but the id and the label."""
    if features is None:
        features = [c for c in columns if c not in (options.id_col, options.label_col)]
        if not features:
            raise SisaError(f"{what}: no feature columns besides {options.id_col!r} and {options.label_col!r}")
    else:
        missing = [c for c in features if c not in columns]
        if missing:
            raise SisaError(f"{what}: missing feature columns {preview(missing)} that the model was trained on")
    return features


def _features(arrow, features: list[str], n: int, what: str) -> np.ndarray:
    """The feature columns as float32 (rows, features); each numeric, finite and within float32."""
    import pyarrow as pa

    X = np.empty((n, len(features)), dtype=np.float32)
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
    return X


def _labels(label, what: str, label_col: str) -> np.ndarray:
    """The label column: int64 for numbers and booleans, Python strings (object array) for text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if label.null_count:
        raise SisaError(f"{what}: label column {label_col!r} has {label.null_count} missing values")
    if pa.types.is_floating(label.type):
        return integral_labels(label.to_numpy(), f"{what}: label column {label_col!r}")
    if pa.types.is_integer(label.type) or pa.types.is_boolean(label.type):
        if pa.types.is_unsigned_integer(label.type) and len(label) and int(pc.max(label).as_py()) >= 2**63:
            raise SisaError(f"{what}: label column {label_col!r} holds labels of 2^63 or more")
        return label.to_numpy().astype(np.int64)
    if pa.types.is_string(label.type) or pa.types.is_large_string(label.type):
        return np.asarray(label.to_pylist(), dtype=object)
    raise SisaError(f"{what}: label column {label_col!r} has type {label.type}; "
                    f"labels must be integers or text")


def _ids(column, kind: str, what: str, id_col: str) -> np.ndarray:
    """The id column: int64, or Python strings (object array); unique, none missing."""
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
        raise SisaError(f"{what}: duplicate ids in column {id_col!r}: {preview(unique[counts > 1])}")
    return ids
