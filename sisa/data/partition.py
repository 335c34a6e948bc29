"""Partition: each id goes to a (shard, slice) by a keyed hash of (seed, id).

The assignment of a row depends on its id and the seed alone, so removing rows never moves any
other row, and the order of rows in the input never matters. Within a shard, rows are kept in
(slice, key) order, which is the canonical order training shuffles from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from sisa.errors import SisaError
from sisa.ids import blake2b_keys, id_bytes, id_bytes_array


def partition_keys(ids: Iterable, seed: int) -> np.ndarray:
    """64-bit keys from a hash of each id, keyed by the seed.

    >>> partition_keys([1, 2], 0).dtype
    dtype('uint64')
    """
    key = b"sisa-partition:%d" % seed
    canonical = id_bytes_array(ids)
    if canonical is not None:
        return blake2b_keys(canonical, key=key)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(id_bytes(i), digest_size=8, key=key).digest(), "little")
         for i in ids), dtype=np.uint64)


@dataclass(frozen=True)
class Assignment:
    """Per-row ``shard``, ``slice`` and sort ``key`` (aligned with the ids given)."""

    shard: np.ndarray
    slice: np.ndarray
    key: np.ndarray


def assign(ids: Iterable, *, seed: int, shards: int, slices: int) -> Assignment:
    """Shard and slice of every id.

    >>> a = assign([10, 11, 12, 13], seed=0, shards=2, slices=1)
    >>> a.shard.tolist() == assign([13, 12, 11, 10], seed=0, shards=2, slices=1).shard[::-1].tolist()
    True
    """
    key = partition_keys(ids, seed)
    shard = (key % np.uint64(shards)).astype(np.int64)
    slice_ = ((key // np.uint64(shards)) % np.uint64(slices)).astype(np.int64)
    return Assignment(shard, slice_, key)


def check_size_limits(n: int, *, shards: int, slices: int) -> None:
    """Refuse sizes no data this big can fill, before anything is allocated for them
    (``--slices 1e15`` must be a message, not a 14 PiB allocation)."""
    if shards > n:
        raise SisaError(f"more shards than samples: {shards} shards for {n} training rows")
    if shards * slices > n:
        raise SisaError(f"more slices than samples in a shard: {shards} shards x {slices} slices need at "
                        f"least {shards * slices} training rows, and there are {n}; use fewer slices")


def check_sizes(assignment: Assignment, *, shards: int, slices: int) -> np.ndarray:
    """Rows per (shard, slice); refuses more shards than rows, or a shard with fewer rows than
    slices. An empty shard (by chance, or after deleting all its rows) has no model. A slice may still be empty by chance (or after deletions): its slice then
    trains on the same rows as the one before."""
    n = len(assignment.shard)
    check_size_limits(n, shards=shards, slices=slices)
    counts = np.zeros((shards, slices), dtype=np.int64)
    np.add.at(counts, (assignment.shard, assignment.slice), 1)
    for s in range(shards):
        if 0 < counts[s].sum() < slices:
            raise SisaError(f"more slices than samples in a shard: shard {s} has {counts[s].sum()} rows "
                            f"for {slices} slices; use fewer slices")
    return counts


def shard_order(assignment: Assignment, shard: int) -> np.ndarray:
    """Indices of the rows of ``shard`` in canonical (slice, key) order."""
    rows = np.flatnonzero(assignment.shard == shard)
    order = np.lexsort((assignment.key[rows], assignment.slice[rows]))
    return rows[order]
