"""The deletion ledger: durable record of every deletion request, ids only.

SQLite in WAL mode with synchronous=FULL: once :meth:`Ledger.add_request` returns, the request
survives a crash or power loss. Requests move pending -> retrained -> committed; a request is
acknowledged to the user only once committed. The ledger never holds features or labels.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from sisa.errors import SisaError

STATES = ("pending", "retrained", "committed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'retrained', 'committed'))
);
CREATE TABLE IF NOT EXISTS deleted (
    id TEXT PRIMARY KEY,          -- canonical id: 'i:<integer>' or 's:<text>'
    request INTEGER NOT NULL REFERENCES requests(request),
    shard INTEGER NOT NULL,
    slice INTEGER NOT NULL
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """Deletion requests of one workspace (``shards/ledger.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SisaError(f"cannot open the deletion ledger {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def add_request(self, rows: Iterable[tuple[str, int, int]]) -> int:
        """Record ids (canonical id, shard, slice) as one pending request; durable on return."""
        rows = list(rows)
        now = _now()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT INTO requests (created, updated, state) VALUES (?, ?, 'pending')", (now, now))
            request = cursor.lastrowid
            self._db.executemany("INSERT INTO deleted (id, request, shard, slice) VALUES (?, ?, ?, ?)",
                                 [(key, request, shard, slice_) for key, shard, slice_ in rows])
        return request

    def set_state(self, requests: Iterable[int], state: str) -> None:
        assert state in STATES
        with self._db:
            self._db.executemany("UPDATE requests SET state = ?, updated = ? WHERE request = ?",
                                 [(state, _now(), r) for r in requests])

    def open_requests(self) -> list[int]:
        """Requests not yet committed, oldest first."""
        return [r for (r,) in self._db.execute(
            "SELECT request FROM requests WHERE state != 'committed' ORDER BY request")]

    def deleted(self, *, pending_only: bool = False) -> dict[str, tuple[int, int]]:
        """Canonical id -> (shard, slice) of every deleted id (or only those not yet committed)."""
        query = "SELECT d.id, d.shard, d.slice FROM deleted d"
        if pending_only:
            query += " JOIN requests r ON r.request = d.request WHERE r.state != 'committed'"
        return {key: (shard, slice_) for key, shard, slice_ in self._db.execute(query)}

    def counts(self) -> dict[str, int]:
        out = {state: 0 for state in STATES}
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"):
            out[state] = n
        out["deleted_ids"] = self._db.execute("SELECT COUNT(*) FROM deleted").fetchone()[0]
        return out
