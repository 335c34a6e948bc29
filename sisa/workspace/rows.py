"""Rows on disk: one Parquet file per shard (and one for the test rows), read and written here."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator, Optional

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


def concat_rows(parts: list[ShardRows]) -> ShardRows:
    """One shard's rows from the rows of its files, in order."""
    if len(parts) == 1:
        return parts[0]
    return ShardRows(*(np.concatenate([getattr(p, name) for p in parts])
                       for name in ("ids", "slice", "label", "X")))


def rows_to_parquet(ids: np.ndarray, shard: Optional[int], slice_: Optional[np.ndarray],
                    label: np.ndarray, X: np.ndarray) -> bytes:
    """Serialise rows to Parquet bytes; features are one fixed-size list column, flattened."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = np.ascontiguousarray(X.reshape(len(X), int(np.prod(X.shape[1:]))))
    width = flat.shape[1]
    columns = {"id": pa.array(ids.tolist(), type=pa.string()) if ids.dtype == object else pa.array(ids)}
    if shard is not None:
        columns["shard"] = pa.array(np.full(len(ids), shard, dtype=np.int32))
        columns["slice"] = pa.array(slice_.astype(np.int32))
    columns["label"] = pa.array(label.astype(np.int64))
    columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, compression="zstd")
    return buffer.getvalue()


def parquet_to_rows(data: bytes, shape: tuple[int, ...], dtype: str) -> ShardRows:
    import pyarrow.parquet as pq

    # read_table would import pyarrow.dataset (0.1-0.2 s)
    return _arrow_rows(pq.ParquetFile(io.BytesIO(data)).read(use_threads=ARROW_THREADS), shape, dtype)


def parquet_batches(data: bytes, shape: tuple[int, ...], dtype: str, batch_rows: int) -> Iterator[ShardRows]:
    """The rows of Parquet bytes, ``batch_rows`` at a time (memory: a batch and a row group,
    not the file decoded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=batch_rows, use_threads=ARROW_THREADS):
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




