"""Rows on disk: one Parquet file per shard slice (and one for the test rows), read and written here."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np

ARROW_THREADS = False



@dataclass(frozen=True)
class ShardRows:
    """The rows of one shard in canonical (slice, key) order."""

    ids: np.ndarray
    slice: np.ndarray
    label: np.ndarray
    X: np.ndarray

    def take(self, rows: np.ndarray) -> "ShardRows":
        """The rows at ``rows`` (indices or a boolean mask), in that order."""
        return ShardRows(self.ids[rows], self.slice[rows], self.label[rows], self.X[rows])


def concat_rows(parts: Iterable[ShardRows], total: Optional[int] = None) -> ShardRows:
    """One shard's rows from the rows of its files, in order. With ``total`` (the rows there
    must be), each part is copied into place as it comes: memory holds the shard's rows and
    one part, never every part twice."""
    if total is None:
        parts = list(parts)
        total = sum(len(p.ids) for p in parts)
    out: Optional[ShardRows] = None
    at = 0
    for part in parts:
        n = len(part.ids)
        if at + n > total:
            raise ValueError(f"the files hold more than the {total} rows expected")
        if n == total:  # the one part with rows
            out = part
        elif n:
            if out is None:
                out = ShardRows(np.empty(total, dtype=part.ids.dtype), np.empty(total, dtype=np.int64),
                                np.empty(total, dtype=np.int64),
                                np.empty((total, *part.X.shape[1:]), dtype=part.X.dtype))
            for name in ("ids", "slice", "label", "X"):
                getattr(out, name)[at:at + n] = getattr(part, name)
        at += n
    if out is None or at != total:
        raise ValueError(f"the files hold {at} rows, not the {total} expected")
    return out


def rows_to_parquet(ids: np.ndarray, shard: Optional[int], slice_: Optional[np.ndarray],
                    label: np.ndarray, X: np.ndarray, *, row_group_rows: Optional[int] = None) -> bytes:
    """Serialise rows to Parquet bytes; features are one fixed-size list column, flattened.
    ``row_group_rows``: rows per row group (Arrow's default when None)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(rows_table(ids, shard, slice_, label, X), buffer, compression="zstd",
                   row_group_size=row_group_rows)
    return buffer.getvalue()


TEST_ROW_GROUP_ROWS = 65536
"""Rows per row group of the test file, the unit it is written and evaluated in."""


def parquet_of_test_rows(ids: np.ndarray, label: np.ndarray, X: np.ndarray) -> bytes:
    """The test file's bytes; the same as :func:`write_test_file` writes from its chunks."""
    return rows_to_parquet(ids, None, None, label, X, row_group_rows=TEST_ROW_GROUP_ROWS)


def write_test_file(sink, chunks) -> None:
    """Write the test file to ``sink`` from ``chunks`` of (ids, label, X), each
    :data:`TEST_ROW_GROUP_ROWS` rows but the last: one row group each."""
    import pyarrow.parquet as pq

    writer = None
    for ids, label, X in chunks:
        table = rows_table(ids, None, None, label, X)
        if writer is None:
            writer = pq.ParquetWriter(sink, table.schema, compression="zstd")
        writer.write_table(table)
    if writer is None:
        raise ValueError("a test file needs at least one row")
    writer.close()


def rows_table(ids: np.ndarray, shard: Optional[int], slice_: Optional[np.ndarray], label: np.ndarray,
               X: np.ndarray):
    """Rows as the Arrow table sisa's data files hold."""
    import pyarrow as pa

    flat = np.ascontiguousarray(X.reshape(len(X), int(np.prod(X.shape[1:]))))
    width = flat.shape[1]
    columns = {"id": pa.array(ids.tolist(), type=pa.string()) if ids.dtype == object else pa.array(ids)}
    if shard is not None:
        columns["shard"] = pa.array(np.full(len(ids), shard, dtype=np.int32))
        columns["slice"] = pa.array(slice_.astype(np.int32))
    columns["label"] = pa.array(label.astype(np.int64))
    columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)
    return pa.table(columns)


def parquet_to_rows(data: bytes, shape: tuple[int, ...], dtype: str) -> ShardRows:
    import pyarrow.parquet as pq

    # read_table would import pyarrow.dataset (0.1-0.2 s)
    return _arrow_rows(pq.ParquetFile(io.BytesIO(data)).read(use_threads=ARROW_THREADS), shape, dtype)


def parquet_batches(data: bytes, shape: tuple[int, ...], dtype: str, batch_rows: int) -> Iterator[ShardRows]:
    """The rows of Parquet bytes, ``batch_rows`` at a time (memory: a batch and a row group,
    not the file decoded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(io.BytesIO(data), pre_buffer=False)  # pre_buffer keeps what it read
    for batch in reader.iter_batches(batch_size=batch_rows, use_threads=ARROW_THREADS):
        yield _arrow_rows(pa.Table.from_batches([batch]), shape, dtype)


def _arrow_rows(table, shape: tuple[int, ...], dtype: str) -> ShardRows:
    id_col = table.column("id")
    ids = np.asarray(id_col.to_pylist(), dtype=object) if id_col.type == "string" \
        else id_col.to_numpy().astype(np.int64)
    flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    X = flat.astype(dtype, copy=False).reshape((len(ids),) + tuple(shape))
    slice_ = table.column("slice").to_numpy().astype(np.int64) if "slice" in table.column_names \
        else np.zeros(len(ids), dtype=np.int64)
    return ShardRows(ids, slice_, table.column("label").to_numpy().astype(np.int64), X)




