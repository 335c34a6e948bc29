"""Row ids: their canonical bytes, digests of id sets, and parsing ids given as text.

One id has one identity everywhere: the partition hashes its bytes, the store digests the
sorted bytes of a set, and the ledger stores its text. Nothing here imports torch or pyarrow.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable

import numpy as np

from sisa.errors import SisaError


def id_bytes(value: Any) -> bytes:
    """Canonical bytes of an id: integers and strings never collide (3 and "3" differ)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return b"i:%d" % int(value)
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8")
    raise SisaError(f"ids must be integers or strings, got {value!r} ({type(value).__name__})")



def ids_digest(ids: Iterable) -> str:
    """sha256 of a set of ids, independent of their order.

    >>> ids_digest([3, 1, 2]) == ids_digest([1, 2, 3]) != ids_digest([1, 2])
    True
    """
    digest = hashlib.sha256()
    for b in sorted(id_bytes(i) for i in ids):
        digest.update(len(b).to_bytes(8, "little"))
        digest.update(b)
    return digest.hexdigest()


def id_order(ids: np.ndarray) -> np.ndarray:
    """A canonical order of rows by id, so a file's bytes never depend on the input order."""
    if ids.dtype == object:
        return np.argsort(np.array([str(i) for i in ids]), kind="stable")
    return np.argsort(ids, kind="stable")



_INT = re.compile(r"[+-]?[0-9]+")


def key_text(value: Any) -> str:
    return id_bytes(value).decode("utf-8", "surrogateescape")


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

