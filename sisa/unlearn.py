"""Exact deletion: plan, record in the ledger, purge, retrain the affected slices, commit.

A deletion is written to the ledger before anything else changes. :func:`complete_pending`
then brings every affected shard in line with the ledger, and is safe to run again after a
crash at any point: it purges deleted rows from the shard file (a new file under a new name,
then the manifest, then the old file goes), drops every checkpoint whose id set no longer
matches the shard's rows, and retrains from the first slice without a valid checkpoint.
Checkpoints are recognised by the hash of the ids they were trained on, so a rerun keeps what
a crashed run already finished.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from sisa.data import id_bytes
from sisa.errors import SisaError
from sisa.executors import Executor, make_executor, verify_result
from sisa.faults import crash_point
from sisa.ledger import Ledger, read_ledger
from sisa.lock import workspace_lock
from sisa.partition import assign
from sisa.settings import Settings
from sisa.staging import finish_swap, remove_scratch, scratch_folders, swap_path
from sisa.store import ARROW_THREADS, ShardRows, Workspace, ids_digest, rows_to_parquet
from sisa.training import DataSpec, Progress, ShardJob

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


@dataclass
class Plan:
    """What a deletion will do: ids to delete per shard, and where each shard restarts."""

    delete: dict[int, list] = field(default_factory=dict)    # shard -> ids
    test: list = field(default_factory=list)                   # ids found in the test rows only
    also_test: list = field(default_factory=list)              # training ids also in the test rows
    already_deleted: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    from_slice: dict[int, int] = field(default_factory=dict)
    samples: dict[int, int] = field(default_factory=dict)      # rows left in each affected shard
    slice_rows: dict[int, list[int]] = field(default_factory=dict)  # rows per slice after deletion
    epochs: list[int] = field(default_factory=list)            # epochs of each slice
    estimate_seconds: float = 0.0
    slices_of: dict = field(default_factory=dict)              # id -> (shard, slice)

    @property
    def ids(self) -> list:
        return [i for ids in self.delete.values() for i in ids] + self.test

    def retrained(self, shard: int) -> dict[str, Any]:
        """What retraining ``shard`` costs: slice r trains on the rows of slices 0..r, so
        ``samples`` adds up each retrained slice's rows, ``sample_passes`` those times epochs."""
        trained = np.cumsum(self.slice_rows[shard])
        slices = range(self.from_slice[shard], len(trained))
        return {"shard": shard, "from_slice": self.from_slice[shard], "rows": self.samples[shard],
                "slices": len(slices), "samples": int(sum(trained[r] for r in slices)),
                "sample_passes": int(sum(trained[r] * self.epochs[r] for r in slices))}

    def to_dict(self) -> dict[str, Any]:
        retrained = [self.retrained(s) for s in sorted(self.delete)]
        return {
            "deleted": self.ids, "deleted_from_test": self.test + self.also_test,
            "already_deleted": self.already_deleted, "missing": self.missing,
            "retrained": retrained,
            "samples_retrained": int(sum(r["samples"] for r in retrained)),
            "sample_passes_retrained": int(sum(r["sample_passes"] for r in retrained)),
            "estimate_seconds": round(self.estimate_seconds, 3),
        }


TEST_SHARD = -1
"""Ledger shard number of ids deleted from the test rows (no model trained on them)."""


def _file_ids(workspace: Workspace, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and slices of a data file, read without the features."""
    import pyarrow.parquet as pq

    from sisa.store import sha256_file

    path = workspace.shards_dir / entry["file"]
    if sha256_file(path) != entry["sha256"]:
        raise SisaError(f"shard file {path} does not match its recorded sha256: it was changed or damaged")
    parquet = pq.ParquetFile(path)
    table = parquet.read(columns=[c for c in ("id", "slice") if c in parquet.schema_arrow.names],
                         use_threads=ARROW_THREADS)
    column = table.column("id")
    ids = np.asarray(column.to_pylist(), dtype=object) if str(column.type) == "string" \
        else column.to_numpy().astype(np.int64)
    slices = table.column("slice").to_numpy() if "slice" in table.column_names else np.zeros(len(ids), int)
    return ids, slices


def plan_deletion(workspace: Workspace, ids: Sequence, *, ignore_missing: bool = False) -> Plan:
    """Group ids by shard and find each shard's earliest affected slice. Changes nothing."""
    with workspace_lock(workspace.root, exclusive=False):
        return _plan_deletion(workspace, ids, ignore_missing=ignore_missing)


def _plan_deletion(workspace: Workspace, ids: Sequence, *, ignore_missing: bool) -> Plan:
    manifest = workspace.read_manifest()
    settings = Settings.from_dict(manifest["settings"])
    deleted = read_ledger(workspace.ledger_path)[0]  # a dry run must not even create the ledger
    plan = Plan()
    unique = list(dict.fromkeys(ids))
    where = assign(unique, seed=settings.seed, shards=settings.shards, slices=settings.slices)
    wanted: dict[int, list] = {}
    for k, value in enumerate(unique):
        if key_text(value) in deleted:
            plan.already_deleted.append(value)
        else:
            wanted.setdefault(int(where.shard[k]), []).append(value)
    entries = {e["shard"]: e for e in manifest["shards"]}
    for shard, candidates in sorted(wanted.items()):
        shard_ids, shard_slices = _file_ids(workspace, entries[shard])
        position = {key_text(v): i for i, v in enumerate(shard_ids.tolist())}
        for value in candidates:
            i = position.get(key_text(value))
            if i is None:
                plan.missing.append(value)
                continue
            plan.delete.setdefault(shard, []).append(value)
            plan.slices_of[key_text(value)] = (shard, int(shard_slices[i]))
        if shard in plan.delete:
            keys = {key_text(v) for v in plan.delete[shard]}
            plan.from_slice[shard] = min(plan.slices_of[k][1] for k in keys)
            plan.samples[shard] = int(len(shard_ids) - len(keys))
            gone = np.bincount([plan.slices_of[k][1] for k in keys], minlength=settings.slices)
            plan.slice_rows[shard] = (np.bincount(shard_slices, minlength=settings.slices) - gone).tolist()
    plan.epochs = settings.slice_epochs()
    if manifest.get("test") and (plan.missing or plan.delete):
        # A person's rows may sit in the held-out test set: they are purged from it too.
        test_ids = set(map(key_text, _file_ids(workspace, manifest["test"])[0].tolist()))
        plan.test = [v for v in plan.missing if key_text(v) in test_ids]
        plan.missing = [v for v in plan.missing if key_text(v) not in test_ids]
        plan.also_test = [v for ids in plan.delete.values() for v in ids if key_text(v) in test_ids]
        for value in plan.test:
            plan.slices_of[key_text(value)] = (TEST_SHARD, -1)
    if plan.missing and not ignore_missing:
        shown = ", ".join(repr(v) for v in plan.missing[:10])
        more = f" and {len(plan.missing) - 10} more" if len(plan.missing) > 10 else ""
        raise SisaError(f"unknown ids (not in the training data): {shown}{more}; nothing was deleted "
                        f"(to delete the others, pass --ignore-missing, or ignore_missing=True in Python)")
    remaining = sum(e["rows"] for e in manifest["shards"]) - sum(len(v) for v in plan.delete.values())
    if plan.ids and remaining <= 0:
        raise SisaError("refusing to delete every training id: nothing would be left to train on; "
                        "delete the workspace instead")
    records = workspace.read_checkpoints_manifest()["checkpoints"]
    plan.estimate_seconds = sum(r["seconds"] for r in records
                                if r["shard"] in plan.from_slice and r["slice"] >= plan.from_slice[r["shard"]])
    return plan


def delete(workspace: Workspace, ids: Sequence, *, ignore_missing: bool = False,
           executor: Optional[Executor] = None, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Delete ``ids`` exactly; returns the plan's summary once the deletion is committed."""
    with workspace_lock(workspace.root, exclusive=True):
        return _delete(workspace, ids, ignore_missing=ignore_missing, executor=executor, progress=progress)


def _delete(workspace: Workspace, ids: Sequence, *, ignore_missing: bool, executor: Optional[Executor],
            progress: Optional[Progress]) -> dict[str, Any]:
    started = time.perf_counter()
    complete_pending(workspace, executor=executor, progress=progress)
    plan = _plan_deletion(workspace, ids, ignore_missing=ignore_missing)
    if plan.ids:
        with Ledger(workspace.ledger_path) as ledger:
            ledger.add_request((k, shard, slice_) for k, (shard, slice_) in plan.slices_of.items())
        crash_point("after-ledger")
        complete_pending(workspace, executor=executor, progress=progress)
    result = plan.to_dict()
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def complete_pending(workspace: Workspace, *, executor: Optional[Executor] = None,
                     progress: Optional[Progress] = None) -> list[int]:
    """Finish an interrupted training swap and every uncommitted deletion request, and remove
    folders interrupted commands left; returns the shards retrained."""
    if not needs_recovery(workspace):
        return []
    with workspace_lock(workspace.root, exclusive=True):
        finish_swap(workspace)
        remove_scratch(workspace)
        if not workspace.ledger_path.exists():
            return []
        return _complete_pending(workspace, executor=executor, progress=progress)


def needs_recovery(workspace: Workspace) -> bool:
    """Whether a command must take the exclusive lock to clean up first (read-only commands
    on a read-only mount then never try to write)."""
    if swap_path(workspace).exists() or scratch_folders(workspace):
        return True
    try:
        return bool(read_ledger(workspace.ledger_path)[1])
    except SisaError:
        return True  # let the writer report it


def _complete_pending(workspace: Workspace, *, executor: Optional[Executor],
                      progress: Optional[Progress]) -> list[int]:
    ledger = Ledger(workspace.ledger_path)
    try:
        requests = ledger.open_requests()
        if not requests:
            return []
        pending = ledger.deleted(pending_only=True)
        deleted = ledger.deleted()
        shards = sorted({shard for shard, _ in pending.values() if shard >= 0})
        if workspace.read_manifest().get("test"):  # a deleted id may sit in the test rows too
            _purge(workspace, TEST_SHARD, deleted)
        for shard in shards:
            _purge(workspace, shard, deleted)
        crash_point("before-retrain")
        retrain_shards(workspace, shards, executor=executor, progress=progress)
        ledger.set_state(requests, "retrained")
        crash_point("before-commit")
        remove_orphans(workspace)
        ledger.set_state(requests, "committed")
        return shards
    finally:
        ledger.close()


def _purge(workspace: Workspace, shard: int, deleted: dict[str, tuple[int, int]]) -> None:
    """Rewrite a shard's file (or the test file, for TEST_SHARD) without deleted rows: the new
    file under a new name first, then the manifest, then the old file goes."""
    manifest = workspace.read_manifest()
    data = manifest["data"]
    test = shard == TEST_SHARD
    entry = manifest["test"] if test else next(e for e in manifest["shards"] if e["shard"] == shard)
    rows = workspace.read_data_file(entry["file"], entry["sha256"], tuple(data["shape"]), data["dtype"])
    keep = np.array([key_text(v) not in deleted for v in rows.ids.tolist()], dtype=bool)
    if keep.all():
        return
    old = entry["file"]
    payload = rows_to_parquet(rows.ids[keep], None if test else shard, None if test else rows.slice[keep],
                              rows.label[keep], rows.X[keep])
    name, sha = workspace.write_versioned("test" if test else f"shard-{shard:03d}", payload)
    entry.update(file=name, sha256=sha, rows=int(keep.sum()))
    if "ids_sha256" in entry:
        entry["ids_sha256"] = ids_digest(rows.ids[keep])
    if test:
        data["n_test"] = int(keep.sum())
        # ids deleted as training rows that also sat in the test rows (workspaces trained before
        # test ids had to differ): the audit's count of test rows needs them
        also = sum(1 for v in rows.ids[~keep].tolist() if deleted.get(key_text(v), (TEST_SHARD,))[0] != TEST_SHARD)
        if also:
            data["n_test_deleted_as_training"] = data.get("n_test_deleted_as_training", 0) + also
    else:
        slices = Settings.from_dict(manifest["settings"]).slices
        entry["slice_rows"] = np.bincount(rows.slice[keep], minlength=slices).tolist()
        data["n_train"] = int(sum(e["rows"] for e in manifest["shards"]))
    workspace.write_json(workspace.manifest_path, manifest)
    crash_point("after-purge-file")
    if old != name:
        (workspace.shards_dir / old).unlink(missing_ok=True)


def _valid_prefix(workspace: Workspace, rows: ShardRows, records: list[dict[str, Any]],
                  settings: Settings) -> int:
    """Number of leading slices whose checkpoint exists and was trained on exactly these rows."""
    by_slice = {r["slice"]: r for r in records}
    for slice_ in range(settings.slices):
        n = int(np.searchsorted(rows.slice, slice_, side="right"))
        record = by_slice.get(slice_)
        if record is None or record["ids_sha256"] != ids_digest(rows.ids[:n]) \
                or not workspace.verify_checkpoint(record):
            return slice_
    return settings.slices


def retrain_shards(workspace: Workspace, shards: Iterable[int], *, executor: Optional[Executor] = None,
                   progress: Optional[Progress] = None) -> None:
    """Drop each shard's checkpoints that no longer match its rows and retrain from there."""
    manifest = workspace.read_manifest()
    settings = Settings.from_dict(manifest["settings"])
    data = manifest["data"]
    spec = DataSpec(tuple(data["shape"]), data["dtype"], data["scale"], len(data["classes"]))
    checkpoints = workspace.read_checkpoints_manifest()
    jobs = []
    for shard in shards:
        entry = next(e for e in manifest["shards"] if e["shard"] == shard)
        rows = workspace.read_data_file(entry["file"], entry["sha256"], spec.shape, spec.dtype)
        own = [r for r in checkpoints["checkpoints"] if r["shard"] == shard]
        valid = _valid_prefix(workspace, rows, own, settings) if entry["rows"] else 0
        stale = [r for r in own if r["slice"] >= valid]
        if stale:
            checkpoints["checkpoints"] = [r for r in checkpoints["checkpoints"] if r not in stale]
            workspace.write_json(workspace.checkpoints_manifest_path, checkpoints)
            for r in stale:
                (workspace.checkpoints_dir / r["file"]).unlink(missing_ok=True)
        if entry["rows"] and valid < settings.slices:
            start = next((r for r in own if r["slice"] == valid - 1), None)
            jobs.append(ShardJob(str(workspace.root.resolve()), shard, settings, spec, entry["file"],
                                 entry["sha256"], from_slice=valid, start=start,
                                 slice_rows=tuple(entry["slice_rows"])))

    def record_progress(record: dict[str, Any]) -> None:
        if progress is not None:
            progress(record)
        crash_point("mid-retrain")

    for result in (executor or make_executor("local")).run(jobs, record_progress):
        verify_result(workspace, result)
        checkpoints["checkpoints"] = sorted(checkpoints["checkpoints"] + result.checkpoints,
                                            key=lambda r: (r["shard"], r["slice"]))
        workspace.write_json(workspace.checkpoints_manifest_path, checkpoints)


def remove_orphans(workspace: Workspace) -> None:
    """Delete shard and checkpoint files that no manifest names (left by a crash)."""
    for path in orphan_files(workspace):
        path.unlink(missing_ok=True)


_DATA_NAME = re.compile(r"(shard-[0-9]{3}|test)-[0-9a-f]{12}\.parquet")
_CHECKPOINT_NAME = re.compile(r"slice-[0-9]{2}-[0-9a-f]{16}\.pt")
_SHARD_FOLDER = re.compile(r"shard-[0-9]{3}")
_TEMP_NAME = re.compile(r"\..+\.tmp-.+")


def orphan_files(workspace: Workspace) -> list[Path]:
    """Files sisa wrote that no manifest names (left by a crash). Only names sisa gives its own
    files count (a sha256 or id-set hash in the name): a user's file is never one of them."""
    manifest = workspace.read_manifest()
    named = {e["file"] for e in manifest["shards"]}
    if manifest.get("test"):
        named.add(manifest["test"]["file"])
    live = {r["file"] for r in workspace.read_checkpoints_manifest()["checkpoints"]}
    orphans = [p for p in _files(workspace.shards_dir)
               if (_DATA_NAME.fullmatch(p.name) and p.name not in named) or _TEMP_NAME.fullmatch(p.name)]
    if workspace.checkpoints_dir.is_dir() and not workspace.checkpoints_dir.is_symlink():
        orphans += [p for p in _files(workspace.checkpoints_dir) if _TEMP_NAME.fullmatch(p.name)]
        for folder in workspace.checkpoints_dir.iterdir():
            if _SHARD_FOLDER.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink():
                orphans += [p for p in _files(folder)
                            if (_CHECKPOINT_NAME.fullmatch(p.name) and f"{folder.name}/{p.name}" not in live)
                            or _TEMP_NAME.fullmatch(p.name)]
    return sorted(orphans)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [p for p in folder.iterdir() if p.is_file() or p.is_symlink()]
