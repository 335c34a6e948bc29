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
from sisa.ids import ids_digest, key_text
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
from sisa.workspace.rows import rows_to_parquet

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
    """Write every shard that gets rows as a new file: its rows, then the batch's in (slice,
    key) order; returns the manifest that names them (not yet saved)."""
    settings, first, k = manifest.settings, manifest.n_slices, len(batch.epochs)
    where = assign(ids, seed=settings.seed, shards=settings.shards, slices=k)
    shards = []
    for entry in manifest.shards:
        rows = shard_order(where, entry.shard)
        counts = tuple(np.bincount(where.slice[rows], minlength=k).tolist())
        if len(rows):
            old = workspace.read_data_file(entry.file, entry.sha256, manifest.data.shape, manifest.data.dtype)
            all_ids = np.concatenate([old.ids, ids[rows]]) if len(old.ids) else ids[rows]
            name, sha = workspace.write_shard_file(entry.shard, rows_to_parquet(
                all_ids, entry.shard, np.concatenate([old.slice, where.slice[rows] + first]),
                np.concatenate([old.label, labels[rows]]), np.concatenate([old.X, X[rows]])))
            entry = dataclasses.replace(entry, file=name, sha256=sha, rows=len(all_ids),
                                        ids_sha256=ids_digest(all_ids))
        shards.append(dataclasses.replace(entry, slice_rows=tuple(entry.slice_rows or ()) + counts))
    data = dataclasses.replace(manifest.data, n_train=manifest.data.n_train + len(ids),
                               n_train_initial=_plus(manifest.data.n_train_initial, len(ids)))
    return manifest.replace(shards=tuple(shards), data=data, version=batch.version,
                            batches=manifest.batches + (batch,))


def _unlink_replaced(workspace: Workspace, old: WorkspaceManifest, new: WorkspaceManifest) -> None:
    live = {e.file for e in new.files()}
    for entry in old.shards:
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
    """Rewrite every shard file that holds rows of a reverted batch without them; returns the
    manifest that names the new files (not yet saved)."""
    slices = manifest.replace(batches=keep).n_slices
    shards, removed = [], 0
    for entry in manifest.shards:
        entry = dataclasses.replace(entry, slice_rows=tuple((entry.slice_rows or ())[:slices]))
        if entry.rows != sum(entry.slice_rows):
            rows = workspace.read_data_file(entry.file, entry.sha256, manifest.data.shape, manifest.data.dtype)
            kept = rows.slice < slices
            name, sha = workspace.write_shard_file(entry.shard, rows_to_parquet(
                rows.ids[kept], entry.shard, rows.slice[kept], rows.label[kept], rows.X[kept]))
            removed += entry.rows - int(kept.sum())
            entry = dataclasses.replace(entry, file=name, sha256=sha, rows=int(kept.sum()),
                                        ids_sha256=ids_digest(rows.ids[kept]))
        shards.append(entry)
    data = dataclasses.replace(manifest.data, n_train=manifest.data.n_train - removed,
                               n_train_initial=_plus(manifest.data.n_train_initial, -removed))
    return manifest.replace(shards=tuple(shards), data=data, version=version, batches=keep)
