"""Tables as data: CSV and Parquet files with an id column, a label column and numeric features.

Parquet and CSV are read without Arrow's thread pool. Its workers can still be alive when
the interpreter exits, and Arrow then aborts the finished process ("terminate called without
an active exception", exit -6; seen once here in a `sisa train` subprocess, and reported for
pyarrow upstream). sisa's files are small, so the threads bought little.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

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
from sisa.errors import SisaError
from sisa.settings import DATASET_DEFAULTS
from sisa.workspace.rows import ARROW_THREADS

_INT_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")


def csv_source(arg: Optional[str], options: LoadOptions) -> Dataset:
    return table_dataset("csv", arg, options)


def parquet_source(arg: Optional[str], options: LoadOptions) -> Dataset:
    return table_dataset("parquet", arg, options)


def table_dataset(kind: str, path: Optional[str], options: LoadOptions) -> Dataset:
    """A table as a dataset: every column but the id and the label is a feature."""
    table, names = read_table(kind, path, options, need_labels=True, what=f"{kind}:{path}")
    labels = table.y
    kinds = {("int" if isinstance(plain(v), int) else "str") for v in labels}
    if len(kinds) > 1:
        raise SisaError(f"label column {options.label_col!r} in {path} mixes numbers and text")
    classes = sorted({plain(v) for v in labels})
    return Dataset(f"{kind}:{path}", table, None, (len(names),), classes, scale=1.0,
                   feature_names=names, defaults=dict(DATASET_DEFAULTS["tables"]))


def read_table(kind: str, path: Optional[str], options: LoadOptions, *, need_labels: bool,
               what: str, features: Optional[list[str]] = None,
               need_ids: bool = True, exact: bool = False) -> tuple[Table, list[str]]:
    """Read and validate a CSV or Parquet table; returns its rows and feature column names
    (``features`` when given: the columns a model was trained on; with ``exact``, no other
    columns besides the id and label may be there, as for rows that will be trained on)."""
    arrow = _read_arrow(kind, path, options, what)
    if arrow.num_rows == 0:
        raise SisaError(f"{what} has no rows")
    columns = arrow.schema.names
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if doubled:
        raise SisaError(f"{what}: column name(s) {preview(doubled)} appear more than once; give every "
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
    features = _feature_columns(columns, options, what, features)
    extra = [c for c in columns if c not in features and c not in (options.id_col, options.label_col)]
    if exact and extra:
        raise SisaError(f"{what}: column(s) {preview(extra)} are not feature columns of the workspace "
                        f"(a training would take them for features); drop them first")
    X = _features(arrow, features, len(ids), what)
    y = _labels(arrow.column(options.label_col), what, options.label_col) if has_labels else None
    return Table(ids, X, y), features


def _read_arrow(kind: str, path: Optional[str], options: LoadOptions, what: str):
    """The file as an Arrow table (CSV ids as text: they become integers in :func:`_ids`)."""
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
            return pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=ARROW_THREADS),
                                 convert_options=pcsv.ConvertOptions(column_types={options.id_col: pa.string()}))
        return pq.read_table(path, use_threads=ARROW_THREADS)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise SisaError(f"cannot read {what} ({path}): {exc}") from None


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

    if label.null_count:
        raise SisaError(f"{what}: label column {label_col!r} has {label.null_count} missing values")
    if pa.types.is_floating(label.type):
        return integral_labels(label.to_numpy(), f"{what}: label column {label_col!r}")
    if pa.types.is_integer(label.type) or pa.types.is_string(label.type) \
            or pa.types.is_large_string(label.type) or pa.types.is_boolean(label.type):
        y: Any = np.asarray(label.to_pylist(), dtype=object)
        if pa.types.is_integer(label.type) or pa.types.is_boolean(label.type):
            y = y.astype(np.int64)
        return y
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
