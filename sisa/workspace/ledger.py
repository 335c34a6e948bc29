"""The ledger: durable record of every deletion request and every workspace version, ids only.

SQLite in WAL mode with synchronous=FULL: once :meth:`Ledger.add_request` returns, the request
survives a crash or power loss. Requests move pending -> retrained -> committed; a request is
acknowledged to the user only once committed. The ledger never holds features or labels.

Versions: every ``train``, ``add`` and ``revert`` is a numbered workspace version. An add or a
revert is recorded ``pending`` before it changes anything; the shards manifest names the version
its files are, so a crash leaves either a version the manifest names (finished on the next
command) or one it does not (``abandoned``: its files are swept away). A version undone by a
revert becomes ``reverted``; the versions a ``train --force`` replaced become ``replaced``.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional

from sisa.errors import SisaError

STATES = ("pending", "retrained", "committed")
VERSION_KINDS = ("train", "add", "revert")
VERSION_STATES = ("pending", "done", "abandoned", "reverted", "replaced")

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
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('train', 'add', 'revert')),
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'abandoned', 'reverted', 'replaced')),
    detail TEXT NOT NULL          -- JSON: rows, slices, epochs, the version reverted to...
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_REQUEST_COLUMNS = {"reference": "TEXT", "detail": "TEXT"}
"""Columns added to ``requests`` after the first release; older ledgers get them on open."""


def _refuse_links(path: Path) -> None:
    """Refuse a ledger whose database or SQLite companion files are links (SQLite would follow
    them and write wherever they point) or, unless allowed, another user's."""
    from sisa.workspace.files import check_entry

    for suffix in ("", "-wal", "-shm", "-journal"):
        check_entry(f"{path}{suffix}")


def _prepare_file(path: Path) -> None:
    """Create a missing ledger file with sisa's file mode (0600 by default) before SQLite opens
    it: SQLite gives its -wal, -shm and -journal files the database file's permissions."""
    from sisa.workspace.files import creation_modes

    _refuse_links(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        os.close(os.open(path, flags, creation_modes()[0]))
    except FileExistsError:
        pass
    except OSError as exc:
        raise SisaError(f"cannot create the deletion ledger {path}: {exc}") from None


def utc_now(timespec: str = "seconds") -> str:
    """The time in UTC as ISO 8601 text (the ledger keeps microseconds, to order its events)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def _now() -> str:
    return utc_now("microseconds")


class Ledger:
    """Deletion requests of one workspace (``shards/ledger.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        _prepare_file(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
            for column, kind in _REQUEST_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise SisaError(f"cannot open the deletion ledger {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def add_request(self, rows: Iterable[tuple[str, int, int]], *, reference: Optional[str] = None,
                    detail: Optional[dict[str, Any]] = None) -> int:
        """Record ids (canonical id, shard, slice) as one pending request, with the user's
        ``reference`` (a ticket id) and the ``detail`` of what was asked; durable on return."""
        try:
            return self._add_request(list(rows), reference, detail or {})
        except sqlite3.Error as exc:  # a full disk: the transaction rolled back, nothing changed
            raise SisaError(f"cannot record the deletion request in {self.path}: {exc}; nothing was "
                            f"deleted") from None

    def _add_request(self, rows: list[tuple[str, int, int]], reference: Optional[str],
                     detail: dict[str, Any]) -> int:
        now = _now()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT INTO requests (created, updated, state, reference, detail) VALUES (?, ?, 'pending', ?, ?)",
                (now, now, reference, json.dumps(detail, sort_keys=True)))
            request = cursor.lastrowid
            self._db.executemany("INSERT INTO deleted (id, request, shard, slice) VALUES (?, ?, ?, ?)",
                                 [(key, request, shard, slice_) for key, shard, slice_ in rows])
        return request

    def set_state(self, requests: Iterable[int], state: str) -> None:
        assert state in STATES
        try:
            with self._db:
                self._db.executemany("UPDATE requests SET state = ?, updated = ? WHERE request = ?",
                                     [(state, _now(), r) for r in requests])
        except sqlite3.Error as exc:  # the requests stay recorded; the next command finishes them
            raise SisaError(f"cannot update the deletion ledger {self.path}: {exc}; the deletion is "
                            f"recorded and the next sisa command on the workspace finishes it") from None

    def request_detail(self, request: int) -> dict[str, Any]:
        row = self._db.execute("SELECT detail FROM requests WHERE request = ?", (request,)).fetchone()
        return _json(row[0] if row else None)

    def add_detail(self, requests: Iterable[int], detail: dict[str, Any]) -> None:
        """Merge ``detail`` (what the commit did: checkpoints replaced, seconds...) into the
        requests' recorded detail."""
        with self._db:
            for request in requests:
                self._db.execute("UPDATE requests SET detail = ? WHERE request = ?",
                                 (self._merged("requests", "request", request, detail), request))

    # ------------------------------------------------------------------------------- versions

    def begin_version(self, kind: str, detail: dict[str, Any], *, state: str = "pending") -> int:
        """Record a new workspace version (one more than any so far); durable on return."""
        assert kind in VERSION_KINDS and state in VERSION_STATES
        now = _now()
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                version = (self._db.execute("SELECT MAX(version) FROM versions").fetchone()[0] or 0) + 1
                self._db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                                 (version, kind, now, now, state, json.dumps(detail, sort_keys=True)))
        except sqlite3.Error as exc:
            raise SisaError(f"cannot record the new workspace version in {self.path}: {exc}; nothing "
                            f"was changed") from None
        return version

    def ensure_base(self, version: int, created: str, detail: dict[str, Any]) -> None:
        """Record the workspace's training as ``version`` when the ledger has no versions yet
        (a workspace from before versions were recorded)."""
        with self._db:
            if self._db.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 0:
                self._db.execute("INSERT INTO versions VALUES (?, 'train', ?, ?, 'done', ?)",
                                 (version, created or _now(), created or _now(), json.dumps(detail, sort_keys=True)))

    def set_version_state(self, versions: Iterable[int], state: str, detail: Optional[dict[str, Any]] = None) -> None:
        assert state in VERSION_STATES
        with self._db:
            for version in versions:
                self._db.execute("UPDATE versions SET state = ?, updated = ?, detail = ? WHERE version = ?",
                                 (state, _now(), self._merged("versions", "version", version, detail or {}), version))

    def _merged(self, table: str, key: str, number: int, detail: dict[str, Any]) -> str:
        """The recorded detail (JSON) of row ``number`` of ``table`` with ``detail`` merged in."""
        row = self._db.execute(f"SELECT detail FROM {table} WHERE {key} = ?", (number,)).fetchone()
        return json.dumps(dict(_json(row[0] if row else None), **detail), sort_keys=True)

    def versions(self) -> list[dict[str, Any]]:
        return _versions(self._db)

    def salt(self) -> str:
        """The workspace's secret salt for hashing ids in receipts (made on first use)."""
        with self._db:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'id-salt'").fetchone()
            if row:
                return row[0]
            value = secrets.token_hex(32)
            self._db.execute("INSERT INTO meta VALUES ('id-salt', ?)", (value,))
            return value

    def open_versions(self) -> list[dict[str, Any]]:
        """Versions begun but neither finished nor abandoned, oldest first."""
        return [v for v in _versions(self._db) if v["state"] == "pending"]

    def open_requests(self) -> list[int]:
        """Requests not yet committed, oldest first."""
        return _open(self._db)

    def deleted(self, *, pending_only: bool = False) -> dict[str, Deleted]:
        """Canonical id -> where it was, of every deleted id (or only those not yet committed)."""
        return _deleted(self._db, _PENDING if pending_only else "")

    def counts(self) -> dict[str, int]:
        return _counts(self._db)

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Deleted(NamedTuple):
    """Where a deleted id was when it was deleted: its shard and slice, ``TEST_SHARD`` (-1)
    for an id found only in the test rows, or :data:`CARRIED_SHARD` (-2)."""

    shard: int
    slice: int


CARRIED_SHARD = -2
"""Ledger shard number of ids deleted before the workspace was last trained (``sisa train
--force`` carries the ledger over): no model of this training ever saw them."""


def ledger_files(path: Path) -> list[Path]:
    """The ledger's database file and SQLite's companions that exist."""
    return [p for p in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def read_ledger(path: Path) -> tuple[dict[str, Deleted], list[int]]:
    """(deleted ids, open requests) of the ledger at ``path``; nothing when there is none."""
    return _read_only(path, lambda db: (_deleted(db, ""), _open(db)), ({}, []))


def read_pending(path: Path) -> dict[str, Deleted]:
    """Deleted ids of requests not yet committed (read-only)."""
    return _read_only(path, lambda db: _deleted(db, _PENDING), {})


def has_open_work(path: Path) -> bool:
    """Whether a request or a version is begun and not finished (read-only, one query each)."""
    def query(db) -> bool:
        if db.execute("SELECT 1 FROM requests WHERE state != 'committed' LIMIT 1").fetchone():
            return True
        return _has_table(db, "versions") and bool(
            db.execute("SELECT 1 FROM versions WHERE state = 'pending' LIMIT 1").fetchone())

    return _read_only(path, query, False)


def read_open_versions(path: Path) -> list[dict[str, Any]]:
    """Versions begun and not finished (read-only): a crashed add or revert."""
    return [v for v in read_versions(path) if v["state"] == "pending"]


def read_versions(path: Path) -> list[dict[str, Any]]:
    """Every recorded workspace version, oldest first (read-only)."""
    return _read_only(path, lambda db: _versions(db) if _has_table(db, "versions") else [], [])


def read_requests(path: Path) -> list[dict[str, Any]]:
    """Every deletion request, oldest first, with its ids and where each was (read-only)."""
    return _read_only(path, _requests, [])


def read_salt(path: Path) -> Optional[str]:
    """The workspace's id salt, or None while no receipt has needed one (read-only)."""
    def query(db):
        if not _has_table(db, "meta"):
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'id-salt'").fetchone()
        return row[0] if row else None

    return _read_only(path, query, None)


def _json(text: Optional[str]) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _versions(db: sqlite3.Connection) -> list[dict[str, Any]]:
    return [{"version": v, "kind": kind, "created": created, "updated": updated, "state": state, **_json(detail)}
            for v, kind, created, updated, state, detail in db.execute(
                "SELECT version, kind, created, updated, state, detail FROM versions ORDER BY version")]


def _requests(db: sqlite3.Connection) -> list[dict[str, Any]]:
    columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    extra = ", reference, detail" if "reference" in columns else ", NULL, NULL"
    out = {}
    for request, created, updated, state, reference, detail in db.execute(
            "SELECT request, created, updated, state" + extra + " FROM requests ORDER BY request"):
        out[request] = {"request": request, "created": created, "updated": updated, "state": state,
                        "reference": reference, **_json(detail), "ids": []}
    for key, request, shard, slice_ in db.execute("SELECT id, request, shard, slice FROM deleted ORDER BY rowid"):
        if request in out:
            out[request]["ids"].append((key, shard, slice_))
    return list(out.values())


def read_counts(path: Path) -> dict[str, int]:
    """Requests per state and deleted ids (read-only)."""
    return _read_only(path, _counts, dict({state: 0 for state in STATES}, deleted_ids=0))


_PENDING = " JOIN requests r ON r.request = d.request WHERE r.state != 'committed'"


def _deleted(db: sqlite3.Connection, where: str) -> dict[str, Deleted]:
    return {key: Deleted(shard, slice_) for key, shard, slice_ in db.execute(
        "SELECT d.id, d.shard, d.slice FROM deleted d" + where)}


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    out = {state: 0 for state in STATES}
    out.update(dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall()))
    out["deleted_ids"] = db.execute("SELECT COUNT(*) FROM deleted").fetchone()[0]
    return out


def _open(db: sqlite3.Connection) -> list[int]:
    return [r for (r,) in db.execute("SELECT request FROM requests WHERE state != 'committed' ORDER BY request")]


def _read_only(path: Path, query, empty):
    """Run ``query`` on the ledger opened read-only, so that read-only commands work on a
    read-only mount or a full disk and never create a ledger."""
    path = Path(path)
    _refuse_links(path)
    if not path.exists():
        return empty
    uris = [f"file:{path}?mode=ro"]
    if not os.access(path.parent, os.W_OK):
        # SQLite cannot create the WAL index in a read-only folder; nobody can write the
        # ledger there either, so reading the file as immutable is safe.
        uris.append(f"file:{path}?immutable=1")
    error: Exception = RuntimeError("unreachable")
    for uri in uris:
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
            try:
                return query(db)
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            error = exc
    raise SisaError(f"cannot read the deletion ledger {path}: {error}")


def carry(old: Path, new: Path) -> int:
    """Copy the ledger at ``old`` (every request, now committed) to ``new`` for a retrained
    workspace; returns the ids it holds. Their shard becomes :data:`CARRIED_SHARD` (test rows'
    too): neither the new training nor its test rows hold them."""
    with Ledger(old) as source:
        _prepare_file(Path(new))
        target = sqlite3.connect(new)
        try:
            source._db.backup(target)
        finally:
            target.close()
    with Ledger(new) as ledger:
        with ledger._db:
            ledger._db.execute("UPDATE deleted SET shard = ?, slice = -1", (CARRIED_SHARD,))
            # a request still open in the old workspace is complete in the new one: its ids were
            # left out of the training and the test rows
            ledger._db.execute("UPDATE requests SET state = 'committed', updated = ? WHERE state != 'committed'",
                               (_now(),))
            ledger._db.execute("UPDATE versions SET state = 'replaced', updated = ? WHERE state = 'done'", (_now(),))
            ledger._db.execute("UPDATE versions SET state = 'abandoned', updated = ? WHERE state = 'pending'",
                               (_now(),))
        return ledger._db.execute("SELECT COUNT(*) FROM deleted").fetchone()[0]
