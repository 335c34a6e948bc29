"""Features left in their source file, and gathering them into runs without holding the file.

A table source loaded for training keeps only its ids and labels in memory; its features stay
in the file as :class:`StreamedFeatures` (the file's row positions of the table's rows). The
partition then asks for *runs*: consecutive pieces of a row order (one per shard slice, and
the test rows a row group at a time). :func:`take_runs` reads the file once, batch by batch,
appends each batch's rows to a spill file per run (with their place in the run), and then
hands the runs back one at a time. Memory: a source batch, then one run; disk: the rows once
more, in the scratch folder given, for as long as the runs are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from sisa.errors import SisaError


class FeatureSource(Protocol):
    """A file's rows in file order: ``batches()`` yields the features of consecutive rows,
    having checked that the file still holds the rows it held when first read."""

    what: str
    row_shape: tuple[int, ...]

    def batches(self) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class StreamedFeatures:
    """The features of a table's rows, left in ``source``: row ``i`` is the file's row ``rows[i]``."""

    source: FeatureSource
    rows: np.ndarray
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.source.row_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: np.ndarray) -> "StreamedFeatures":
        index = np.asarray(index)
        if index.dtype != bool and index.dtype.kind not in "iu":
            raise TypeError("streamed features are selected by a boolean mask or an index array")
        return replace(self, rows=self.rows[index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("features left in their file are read with take_runs (into a scratch folder "
                        "of the workspace), never turned into an array by the way")


def take_runs(requests: Sequence[tuple[Any, np.ndarray, np.ndarray]],
              scratch: os.PathLike | str) -> list[Iterator[np.ndarray]]:
    """For each request ``(X, order, bounds)``, an iterator over ``X[order[bounds[k]:bounds[k+1]]]``
    for k = 0, 1, ... ``X`` is an array, or :class:`StreamedFeatures`; requests on features of
    the same source are served by one read of it, spilled into files in the folder ``scratch``
    (each removed once read back; the caller removes the folder) before the first run is
    handed back.

    >>> [run.tolist() for run in take_runs([(np.arange(5), np.array([4, 0, 2, 1, 3]), [0, 2, 5])], ".")[0]]
    [[4, 0], [2, 1, 3]]
    """
    results: list[Iterator[np.ndarray] | None] = [None] * len(requests)
    by_source: dict[int, list[int]] = {}
    for i, (X, order, bounds) in enumerate(requests):
        if isinstance(X, StreamedFeatures):
            by_source.setdefault(id(X.source), []).append(i)
        else:
            results[i] = _in_memory(X, order, bounds)
    for indices in by_source.values():
        spilled = _spill([requests[i] for i in indices], scratch)
        for i, runs in zip(indices, spilled):
            results[i] = runs
    return results  # type: ignore[return-value]


def _in_memory(X: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> Iterator[np.ndarray]:
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield X[order[lo:hi]]


def _spill(requests: list[tuple[StreamedFeatures, np.ndarray, np.ndarray]],
           scratch: os.PathLike | str) -> list[Iterator[np.ndarray]]:
    """Read the requests' one source once, writing every requested row to its run's spill file
    as (place in the run, features); returns per request the runs read back from them."""
    import tempfile

    source = requests[0][0].source
    row_shape = tuple(source.row_shape)
    record = np.dtype([("at", np.int64), ("x", np.float32, row_shape)])
    position, run, at, sizes = [], [], [], []
    for X, order, bounds in requests:
        lengths = np.diff(bounds)
        position.append(X.rows[order])
        run.append(np.repeat(np.arange(len(lengths)) + len(sizes), lengths))
        at.append(np.arange(bounds[-1] - bounds[0]) - np.repeat(bounds[:-1] - bounds[0], lengths))
        sizes.extend(int(n) for n in lengths)
    position, run, at = (np.concatenate(a) for a in (position, run, at))
    if len(np.unique(position)) != len(position):
        raise ValueError("a source row was asked for twice")
    by_position = np.argsort(position, kind="stable")
    folder = Path(tempfile.mkdtemp(prefix="spill-", dir=scratch))
    paths = [folder / f"run-{k}" for k in range(len(sizes))]
    start = 0
    for batch in source.batches():
        stop = start + len(batch)
        lo, hi = np.searchsorted(position, [start, stop], sorter=by_position)
        chosen = by_position[lo:hi]
        chosen = chosen[np.argsort(run[chosen], kind="stable")]
        rows = np.empty(len(chosen), dtype=record)
        rows["at"] = at[chosen]
        rows["x"] = batch[position[chosen] - start]
        cuts = np.flatnonzero(np.diff(run[chosen])) + 1
        for part in np.split(np.arange(len(chosen)), cuts):
            if len(part):
                _append(paths[run[chosen[part[0]]]], rows[part].tobytes())
        start = stop
    if len(position) and start <= position.max():
        raise SisaError(f"{source.what} has fewer rows than when it was first read ({start}); "
                        f"nothing was written to the workspace")
    results, first = [], 0
    for _, _, bounds in requests:
        count = len(bounds) - 1
        results.append(_read_back(paths[first:first + count], sizes[first:first + count], record, row_shape))
        first += count
    return results


def _append(path: Path, data: bytes) -> None:
    """Append to a spill file, created 0600 (it holds personal data), never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _read_back(paths: list[Path], sizes: list[int], record: np.dtype, row_shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    for path, size in zip(paths, sizes):
        rows = np.fromfile(path, dtype=record) if path.exists() else np.empty(0, dtype=record)
        path.unlink(missing_ok=True)
        if len(rows) != size:
            raise SisaError(f"a spilled run holds {len(rows)} rows where {size} were expected")
        X = np.empty((size, *row_shape), dtype=np.float32)
        X[rows["at"]] = rows["x"]
        yield X
