"""Row ids: their canonical bytes, digests of id sets, and parsing ids given as text.

One id has one identity everywhere: the partition hashes its bytes, the store digests the
sorted bytes of a set, and the ledger stores its text. Nothing here imports torch or pyarrow.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Collection, Iterable, Iterator, Optional

import numpy as np

from sisa.errors import SisaError


def id_bytes(value: Any) -> bytes:
    """Canonical bytes of an id: integers and strings never collide (3 and "3" differ)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return b"i:%d" % int(value)
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8")
    raise SisaError(f"ids must be integers or strings, got {value!r} ({type(value).__name__})")



# Rows per piece when length-prefixed records or hashes are built from an id array, and the
# most bytes an array of ids may take beyond their own (fixed width pads every id to the longest).
_CHUNK_ROWS = 1 << 16
_PAD_LIMIT = 1 << 26
# Integer types that convert to int64 exactly or not at all (Python ints beyond it raise).
_INT_TYPES = {int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32}


def id_bytes_array(ids: Iterable) -> Optional[np.ndarray]:
    """The canonical bytes (:func:`id_bytes`) of every id, in order, as one numpy ``S`` array.

    Built by numpy for a 1-D integer or ``U`` array, or a list, tuple, range or 1-D object array
    whose items are all integers (within int64) or all strings. Exact: numpy's fixed-width
    bytes drop trailing NULs, so an array is given only where no id's bytes end with one (ints
    never do; a string ending in "\\x00" does). Then ``.tolist()`` gives each id's bytes, and
    sorting the array orders them as Python orders bytes. None where there is no such array
    (other iterables, bools, mixed kinds, a string that is not valid UTF-8...): use
    :func:`id_bytes` per id, which also gives the error.

    >>> id_bytes_array(np.array([3, -1])).tolist(), id_bytes_array(["a"]).tolist()
    ([b'i:3', b'i:-1'], [b's:a'])
    """
    try:
        if type(ids) is np.ndarray:  # not a subclass (a masked array iterates differently)
            if ids.ndim != 1:
                return None
            if ids.dtype.kind in "iu":
                return np.char.add(b"i:", ids.astype("S"))
            if ids.dtype.kind not in "UO":
                return None
            values = ids.tolist()  # str for a U array; the objects themselves for an object array
        elif type(ids) in (list, tuple, range):
            values = list(ids)
        else:
            return None
        types = set(map(type, values))
        if types and types <= _INT_TYPES:
            return np.char.add(b"i:", np.array(values, dtype=np.int64).astype("S"))
        if types and types <= {str, np.str_}:
            encoded = list(map(str.encode, values))  # UTF-8, strict, as id_bytes
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            if int(lengths.max()) * len(encoded) > max(_PAD_LIMIT, 8 * int(lengths.sum())):
                return None  # one long id would pad every row to its length
            raw = np.array(encoded, dtype="S")
            if not np.array_equal(np.char.str_len(raw), lengths):
                return None  # a string ending in "\x00" lost it
            return np.char.add(b"s:", raw)
    except (OverflowError, UnicodeError):
        return None  # ints beyond int64, strings that are not UTF-8: id_bytes says what it says
    return None


def _length_prefixed(canonical: np.ndarray) -> bytes:
    """Each id's bytes preceded by its length as 8 little-endian bytes, all joined."""
    n, width = len(canonical), canonical.dtype.itemsize
    lengths = np.char.str_len(canonical).astype("<u8")
    records = np.empty((n, 8 + width), dtype=np.uint8)
    records[:, :8] = lengths.view(np.uint8).reshape(n, 8)
    records[:, 8:] = canonical.view(np.uint8).reshape(n, width)
    return records[np.arange(8 + width) < (lengths.astype(np.int64) + 8)[:, None]].tobytes()


def ids_digest(ids: Iterable) -> str:
    """sha256 of a set of ids, independent of their order.

    Each id's bytes, sorted, preceded by their length (8 bytes, little-endian).

    >>> ids_digest([3, 1, 2]) == ids_digest([1, 2, 3]) != ids_digest([1, 2])
    True
    """
    digest = hashlib.sha256()
    canonical = id_bytes_array(ids)
    if canonical is None:
        for b in sorted(id_bytes(i) for i in ids):
            digest.update(len(b).to_bytes(8, "little"))
            digest.update(b)
        return digest.hexdigest()
    return _sorted_digest(np.sort(canonical))  # no id's bytes end in NUL: numpy's order is Python's


def _sorted_digest(canonical: np.ndarray) -> str:
    digest = hashlib.sha256()
    rows = max(1, min(_CHUNK_ROWS, _PAD_LIMIT // (8 + canonical.dtype.itemsize)))
    for start in range(0, len(canonical), rows):
        digest.update(_length_prefixed(canonical[start:start + rows]))
    return digest.hexdigest()


def prefix_digests(ids: np.ndarray, ends: Iterable[int]) -> Iterator[str]:
    """``ids_digest(ids[:end])`` for each of ``ends`` (ascending), lazily; each id's bytes are
    made and sorted once, each prefix's sorted bytes merged from the one before (the id sets a
    shard's checkpoints were trained on: slices 0..r).

    >>> list(prefix_digests(np.array([5, 3, 9]), [1, 3])) == [ids_digest([5]), ids_digest([5, 3, 9])]
    True
    """
    canonical = id_bytes_array(ids)
    if canonical is None:
        for end in ends:
            yield ids_digest(ids[:end])
        return
    merged, done = canonical[:0], 0
    for end in ends:
        if end > done:  # two sorted runs: the stable sort (timsort) merges them in linear time
            merged = np.sort(np.concatenate([merged, np.sort(canonical[done:end])]), kind="stable")
            done = end
        yield _sorted_digest(merged)


def blake2b_keys(canonical: np.ndarray, **params: bytes) -> np.ndarray:
    """``blake2b(b, digest_size=8, **params)`` of each bytes of ``canonical`` (an array from
    :func:`id_bytes_array`), read as little-endian uint64.

    >>> key = int.from_bytes(hashlib.blake2b(b"i:5", digest_size=8, person=b"p").digest(), "little")
    >>> blake2b_keys(id_bytes_array([5]), person=b"p").tolist() == [key]
    True
    """
    if len(canonical) == 0:  # no hash made, as the per-id loop made none (a bad key is no error)
        return np.zeros(0, dtype=np.uint64)
    copy = hashlib.blake2b(digest_size=8, **params).copy  # a copy of the state hashes like a new one
    digests = bytearray()
    for start in range(0, len(canonical), _CHUNK_ROWS):
        chunk = []
        append = chunk.append
        for b in canonical[start:start + _CHUNK_ROWS].tolist():
            h = copy()
            h.update(b)
            append(h.digest())
        digests += b"".join(chunk)
    return np.frombuffer(bytes(digests), dtype="<u8").astype(np.uint64)


def id_order(ids: np.ndarray) -> np.ndarray:
    """A canonical order of rows by id, so a file's bytes never depend on the input order."""
    if ids.dtype == object:
        return np.argsort(np.array([str(i) for i in ids]), kind="stable")
    return np.argsort(ids, kind="stable")



_INT = re.compile(r"[+-]?[0-9]+")


def key_text(value: Any) -> str:
    return id_bytes(value).decode("utf-8", "surrogateescape")


def id_mask(ids: np.ndarray, keys: Collection[str]) -> np.ndarray:
    """True for each of ``ids`` whose :func:`key_text` is in ``keys``; vectorised over an
    integer array (a key of the other kind never matches: 7 is not "7").

    >>> id_mask(np.array([5, 6, 7]), {"i:7", "s:5"}).tolist()
    [False, False, True]
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        # only keys as key_text writes them ("i:7", never "i:007" or "i:+7")
        wanted = [int(k[2:]) for k in keys if k.startswith("i:") and _INT.fullmatch(k[2:]) and len(k) < 24]
        wanted = [v for v in wanted if -2**63 <= v < 2**63 and f"i:{v}" in keys]
        return np.isin(ids, np.array(wanted, dtype=np.int64)) if wanted else np.zeros(len(ids), dtype=bool)
    keys = keys if isinstance(keys, (set, frozenset, dict)) else set(keys)
    return np.fromiter((key_text(v) in keys for v in ids.tolist()), dtype=bool, count=len(ids))


def parse_ids(raw: Iterable[str], id_kind: str) -> list:
    """Turn ids as typed (text) into the workspace's id type; bad ones are named."""
    out = []
    for text in raw:
        if id_kind == "int":
            if len(text) > 40:  # int() refuses more than 4,300 digits with a traceback
                raise SisaError(f"id {text[:40]}... ({len(text)} characters) is outside the 64-bit integer "
                                f"range of this workspace's ids")
            if not _INT.fullmatch(text):
                raise SisaError(f"id {text[:40]!r} is not an integer, and this workspace's ids are integers")
            if not -2**63 <= int(text) < 2**63:
                raise SisaError(f"id {text[:40]}{'...' if len(text) > 40 else ''} is outside the 64-bit "
                                f"integer range of this workspace's ids")
            out.append(int(text))
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8, passed through by the shell
                raise SisaError(f"id {text[:40]!r} is not valid UTF-8 text; ids are UTF-8 strings") from None
            out.append(text)
    return out

