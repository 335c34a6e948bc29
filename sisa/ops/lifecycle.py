"""A workspace's life after training: ``add`` takes in new rows, ``revert`` takes them out again.

Both make a new workspace version (:mod:`sisa.workspace.ledger`), recorded ``pending`` before
anything changes. The commit point is the shards manifest naming the new version: files are
written under new names first, then the manifest, then the old files go. What is left to do
after the commit (training the added slices, dropping the checkpoints of reverted ones) is
:func:`sisa.ops.commit.finish_version`, which every command runs after a crash as well.

Added rows get their shard from the same keyed hash as the training's rows, and become new
slices at the end of every shard: slice ``(key // S) % K`` of the batch's K. Each shard then
resumes from its last checkpoint and trains only the new slices, so "train D0; add D1; delete
F" gives the checkpoints "train D0 without F; add D1 without F" gives, bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any, Optional

import numpy as np

from sisa.data.dataset import Dataset, Table, check_features, preview
from sisa.data.partition import assign, shard_order
from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.ids import key_text
from sisa.ops.commit import (
    check_model_source,
    complete_pending,
    ensure_base,
    finish_version,
)
from sisa.settings import MAX_COUNT
from sisa.training.executors import Executor
from sisa.training.jobs import Progress
from sisa.workspace.files import Workspace, file_ids
from sisa.workspace.ledger import Ledger, read_ledger, read_versions, utc_now
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import Batch, WorkspaceManifest
from sisa.workspace.rows import ShardRows

# ------------------------------------------------------------------------------------- add

def add_rows(workspace: Workspace, batch: Table, *, slices: int = 1, epochs: Optional[int] = None,
             spec: Optional[str] = None, executor: Optional[Executor] = None,
             progress: Optional[Progress] = None) -> dict[str, Any]:
    """Take in ``batch`` (ids, features, raw labels) as ``slices`` new slices of every shard,
    each trained ``epochs`` epochs (default: the training's last slice's); returns a summary."""
    started = time.perf_counter()
    with workspace_lock(workspace.root, exclusive=True):
        complete_pending(workspace, executor=executor, progress=progress)
        manifest = workspace.manifest()
        epochs = manifest.settings.slice_epochs()[-1] if epochs is None else epochs
        _check_counts(slices, epochs, len(batch))
        labels, X = _check_batch(workspace, manifest, batch)
        check_model_source(manifest)
        with Ledger(workspace.ledger_path) as ledger:
            ensure_base(ledger, manifest)
            version = ledger.begin_version("add", {"rows": len(batch), "slices": slices, "epochs": epochs,
                                                   "spec": spec})
        crash_point("add-after-ledger")
        new = _append(workspace, manifest, batch.ids, labels, X,
                      Batch(version, (epochs,) * slices, len(batch), utc_now()))
        workspace.save(new)  # the commit point: the rows are in
        crash_point("add-after-manifest")
        _unlink_replaced(workspace, manifest, new)
        trained = finish_version(workspace, version, executor=executor, progress=progress)
    return {"version": version, "rows": len(batch), "slices": slices, "epochs": epochs,
            "shards_trained": trained, "n_train": new.data.n_train,
            "train_seconds": round(sum(r.seconds / (r.shared_by or 1) for r in _new_records(workspace, new)), 3),
            "seconds": round(time.perf_counter() - started, 3)}


def _check_counts(slices: int, epochs: int, rows: int) -> None:
    for name, value in (("slices", slices), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
            raise SisaError(f"{name} of an added batch must be an integer from 1 to {MAX_COUNT}, got {value!r}")
    if rows == 0:
        raise SisaError("the added data has no rows")
    if slices > rows:
        raise SisaError(f"more slices than rows: {slices} slices for {rows} added rows")


def _check_batch(workspace: Workspace, manifest: WorkspaceManifest, batch: Table) -> tuple[np.ndarray, np.ndarray]:
    """Everything that can be wrong with the added rows, before anything is written: their
    shape, labels, id kind, and ids already present, deleted earlier or given twice."""
    info = manifest.data
    if batch.y is None:
        raise SisaError("the added data has no labels")
    X = np.asarray(batch.X)
    if tuple(X.shape[1:]) != tuple(info.shape):
        raise SisaError(f"the added rows have shape {tuple(X.shape[1:])}, but the workspace was trained on "
                        f"rows of shape {tuple(info.shape)}")
    check_features(X, "the added data")
    if X.dtype != np.dtype(info.dtype):
        if np.dtype(info.dtype).kind in "iu" and X.dtype.kind not in "iu":
            raise SisaError(f"the added features are {X.dtype}, but the workspace stores {info.dtype}")
        X = X.astype(info.dtype)
    like = Dataset(info.source_value("spec", "workspace"), Table(batch.ids[:0], X[:0], None), None,
                   tuple(info.shape), list(info.classes))
    labels = like.label_index(batch.y, "the added data")
    kind = "int" if batch.ids.dtype.kind in "iu" else "str"
    if kind != info.id_kind:
        raise SisaError(f"the added ids are {'integers' if kind == 'int' else 'text'}, but the workspace's are "
                        f"{'integers' if info.id_kind == 'int' else 'text'}")
    _check_ids(workspace, manifest, batch.ids)
    return labels, X


def _check_ids(workspace: Workspace, manifest: WorkspaceManifest, ids: np.ndarray) -> None:
    keys = [key_text(v) for v in ids.tolist()]
    counts = Counter(keys)
    twice = sorted({v for v, k in zip(ids.tolist(), keys) if counts[k] > 1}, key=str)
    if twice:
        raise SisaError(f"{len(twice)} id(s) appear more than once in the added data: {preview(twice)}")
    deleted = read_ledger(workspace.ledger_path)[0]
    gone = [v for v, k in zip(ids.tolist(), keys) if k in deleted]
    if gone:
        raise SisaError(f"{len(gone)} added id(s) were deleted earlier and may not come back through add: "
                        f"{preview(gone)}")
    present = set()
    for entry in manifest.files():
        present.update(key_text(v) for v in file_ids(workspace, entry)[0].tolist())
    clash = [v for v, k in zip(ids.tolist(), keys) if k in present]
    if clash:
        raise SisaError(f"{len(clash)} added id(s) are already in the workspace: {preview(clash)}")


def _append(workspace: Workspace, manifest: WorkspaceManifest, ids: np.ndarray, labels: np.ndarray,
            X: np.ndarray, batch: Batch) -> WorkspaceManifest:
    """Write each shard's files of the batch's slices (one per slice, with the shard's rows of
    the batch in key order; a file without rows where it brings the shard none) after its
    existing ones, which stay as they are; returns the manifest that names them (not yet saved)."""
    settings, first, k = manifest.settings, manifest.n_slices, len(batch.epochs)
    where = assign(ids, seed=settings.seed, shards=settings.shards, slices=k)
    shards = []
    for entry in manifest.shards:
        rows = shard_order(where, entry.shard)
        added = ShardRows(ids[rows], where.slice[rows] + first, labels[rows], X[rows])
        parts = workspace.write_shard_slices(entry.shard, range(first, first + k), added)
        shards.append(dataclasses.replace(entry, parts=entry.parts + parts))
    data = dataclasses.replace(manifest.data, n_train=manifest.data.n_train + len(ids),
                               n_train_initial=_plus(manifest.data.n_train_initial, len(ids)))
    return manifest.replace(shards=tuple(shards), data=data, version=batch.version,
                            batches=manifest.batches + (batch,))


def _unlink_replaced(workspace: Workspace, old: WorkspaceManifest, new: WorkspaceManifest) -> None:
    live = {e.file for e in new.files()}
    for entry in old.files():
        if entry.file not in live:
            (workspace.shards_dir / entry.file).unlink(missing_ok=True)


def _new_records(workspace: Workspace, manifest: WorkspaceManifest):
    first = manifest.n_slices - len(manifest.batches[-1].epochs)
    return [r for r in workspace.checkpoints().checkpoints if r.slice >= first]


def _plus(count: Optional[int], change: int) -> Optional[int]:
    """``n_train_initial`` counts every row taken in (training and adds, less reverts); the
    audit checks it against the rows left plus the ids deleted. Early workspaces lack it."""
    return None if count is None else count + change


# ---------------------------------------------------------------------------------- revert

def revert(workspace: Workspace, to: int, *, executor: Optional[Executor] = None,
           progress: Optional[Progress] = None) -> dict[str, Any]:
    """Take out every batch added after version ``to``: purge its rows from the shard files and
    drop its slices' checkpoints. The slices before it keep their checkpoints, so nothing is
    retrained: a deletion since then has already retrained them without its rows."""
    started = time.perf_counter()
    with workspace_lock(workspace.root, exclusive=True):
        complete_pending(workspace, executor=executor, progress=progress)
        manifest = workspace.manifest()
        removed = _reverted_batches(manifest, to, read_versions(workspace.ledger_path))
        if not removed:
            return {"version": manifest.version, "to": to, "reverted": [], "rows_removed": 0,
                    "seconds": round(time.perf_counter() - started, 3)}
        keep = manifest.batches[:len(manifest.batches) - len(removed)]
        with Ledger(workspace.ledger_path) as ledger:
            ensure_base(ledger, manifest)
            version = ledger.begin_version("revert", {"to": to, "removed": [b.version for b in removed],
                                                      "slices_kept": manifest.replace(batches=keep).n_slices})
        crash_point("revert-after-ledger")
        new = _truncate(workspace, manifest, keep, version)
        workspace.save(new)  # the commit point: the rows are out
        crash_point("revert-after-manifest")
        _unlink_replaced(workspace, manifest, new)
        finish_version(workspace, version, executor=executor, progress=progress)
    return {"version": version, "to": to, "reverted": [b.version for b in removed],
            "rows_removed": manifest.data.n_train - new.data.n_train, "n_train": new.data.n_train,
            "seconds": round(time.perf_counter() - started, 3)}


def _reverted_batches(manifest: WorkspaceManifest, to: int, versions: list[dict]) -> tuple[Batch, ...]:
    """The batches added after version ``to``; refuses a version the workspace cannot go back to
    (one that never finished, or an add whose rows a revert already took out)."""
    if isinstance(to, bool) or not isinstance(to, int):
        raise SisaError(f"a version is a whole number, got {to!r}")
    live = [manifest.base_version] + [b.version for b in manifest.batches]
    if to < 1:
        raise SisaError(f"versions are numbered from 1 ('sisa history' lists them); got {to}")
    if to > manifest.version:
        raise SisaError(f"version {to} does not exist yet: the workspace is at version {manifest.version}")
    if to < manifest.base_version:
        raise SisaError(f"version {to} precedes the training of version {manifest.base_version} (a "
                        f"'train --force' replaced it); revert can go back to: {', '.join(map(str, live))}")
    state = {v["version"]: v["state"] for v in versions}.get(to)
    if state == "reverted":
        raise SisaError(f"the rows of version {to} are no longer in the workspace (a revert took them out); "
                        f"revert can go back to: {', '.join(map(str, live))} or a revert after them")
    if state == "abandoned":
        raise SisaError(f"version {to} never finished (it was interrupted and abandoned); revert can go back "
                        f"to: {', '.join(map(str, live))}")
    return tuple(b for b in manifest.batches if b.version > to)


def _truncate(workspace: Workspace, manifest: WorkspaceManifest, keep: tuple[Batch, ...],
              version: int) -> WorkspaceManifest:
    """Drop each shard's files of the reverted batches' slices (a file that also holds kept
    slices, as a format 1 workspace's does, is rewritten with those only); returns the
    manifest that names the files left (not yet saved)."""
    slices = manifest.replace(batches=keep).n_slices
    shards, removed = [], 0
    for entry in manifest.shards:
        parts = []
        for part, first in zip(entry.parts, entry.first_slices()):
            if first + len(part.slice_rows or ()) <= slices:
                parts.append(part)
            elif first < slices:
                rows = workspace.read_data_file(part.file, part.sha256, manifest.data.shape, manifest.data.dtype)
                parts.extend(workspace.write_shard_slices(entry.shard, range(first, slices),
                                                          rows.take(rows.slice < slices)))
        removed += entry.rows - sum(p.rows for p in parts)
        shards.append(dataclasses.replace(entry, parts=tuple(parts)))
    data = dataclasses.replace(manifest.data, n_train=manifest.data.n_train - removed,
                               n_train_initial=_plus(manifest.data.n_train_initial, -removed))
    return manifest.replace(shards=tuple(shards), data=data, version=version, batches=keep)
