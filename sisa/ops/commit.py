"""Executing and committing deletions: everything the ledger records but the files do not yet show.

A deletion is written to the ledger before anything else changes (:mod:`sisa.ops.delete`).
:func:`complete_pending` then brings every affected shard in line with the ledger, and is safe
to run again after a crash at any point: it purges deleted rows from the shard file (a new file
under a new name, then the manifest, then the old file goes), drops every checkpoint whose id
set no longer matches the shard's rows, retrains from the first slice without a valid
checkpoint, and marks the requests committed. Checkpoints are recognised by the hash of the ids
they were trained on, so a rerun keeps what a crashed run already finished. Every command runs
it first, so recovery after a crash is the same code as a deletion.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Iterable, Optional

import numpy as np

from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.ids import id_mask, ids_digest, key_text, prefix_digests
from sisa.models import check_source, model_source
from sisa.training.executors import Executor, accept_result, make_executor
from sisa.training.jobs import Observers, Progress, ShardJob
from sisa.workspace.files import Workspace, file_ids
from sisa.workspace.ledger import (
    Deleted,
    Ledger,
    has_open_work,
    utc_now,
)
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import CheckpointRecord, ShardData, WorkspaceManifest
from sisa.workspace.orphans import remove_orphans
from sisa.workspace.rows import parquet_of_test_rows
from sisa.workspace.staging import (
    finish_swap,
    remove_scratch,
    scratch_folders,
    swap_path,
)

logger = logging.getLogger(__name__)


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
        complete_versions(workspace, executor=executor, progress=progress)
        return complete_requests(workspace, executor=executor, progress=progress)


def needs_recovery(workspace: Workspace) -> bool:
    """Whether a command must take the exclusive lock to clean up first (read-only commands
    on a read-only mount then never try to write)."""
    if swap_path(workspace).exists() or scratch_folders(workspace):
        return True
    try:
        return has_open_work(workspace.ledger_path)
    except SisaError:
        return True  # let the writer report it


def complete_versions(workspace: Workspace, *, executor: Optional[Executor],
                      progress: Optional[Progress]) -> None:
    """Finish an add or revert that the shards manifest already names; abandon one it does
    not (it never happened: the orphan sweep removes the files it had written)."""
    with Ledger(workspace.ledger_path) as ledger:
        for version in ledger.open_versions():
            if workspace.manifest().version == version["version"]:
                finish_version(workspace, version["version"], executor=executor, progress=progress)
            else:
                ledger.set_version_state([version["version"]], "abandoned")
                remove_orphans(workspace)


def ensure_base(ledger: Ledger, manifest: WorkspaceManifest) -> None:
    """Record the workspace's training as its first version in a ledger from before versions."""
    ledger.ensure_base(manifest.version, manifest.created, {"rows": manifest.data.n_train_initial,
                                                            "slices": manifest.settings.slices})


def finish_version(workspace: Workspace, version: int, *, executor: Optional[Executor],
                   progress: Optional[Progress]) -> list[int]:
    """Bring the checkpoints in line with the shard files of an add or revert the manifest
    names (train the added slices; drop the reverted ones'), then mark it done, and the
    versions a revert took out ``reverted``. Returns the shards trained."""
    manifest = workspace.manifest()
    shards = [e.shard for e in manifest.shards]  # a shard a revert emptied loses its checkpoints too
    before = {r.file for r in workspace.checkpoints().checkpoints}
    retrain_shards(workspace, shards, executor=executor, progress=progress)
    trained = sorted({r.shard for r in workspace.checkpoints().checkpoints if r.file not in before})
    remove_orphans(workspace)
    with Ledger(workspace.ledger_path) as ledger:
        detail = next(v for v in ledger.versions() if v["version"] == version)
        if detail["kind"] == "revert":
            ledger.set_version_state(detail.get("removed", []), "reverted", {"reverted_by": version})
        ledger.set_version_state([version], "done", {"n_train": manifest.data.n_train,
                                                     "shards_trained": trained})
    return trained


TEST_SHARD = -1
"""Ledger shard number of ids deleted from the test rows (no model trained on them)."""


def complete_requests(workspace: Workspace, *, executor: Optional[Executor],
                      progress: Optional[Progress]) -> list[int]:
    """Carry out the ledger's open requests: purge, retrain, then mark them committed. Safe to
    run again after a crash at any point; returns the shards retrained."""
    with Ledger(workspace.ledger_path) as ledger:
        requests = ledger.open_requests()
        if not requests:
            return []
        pending = ledger.deleted(pending_only=True)
        deleted = ledger.deleted()
        shards = sorted({shard for shard, _ in pending.values() if shard >= 0})
        if workspace.manifest().test:  # a deleted id may sit in the test rows too
            _purge(workspace, TEST_SHARD, deleted)
        for shard in shards:
            _purge(workspace, shard, deleted)
        crash_point("before-retrain")
        before = {**_live(workspace, shards), **_recorded_before(ledger, requests)}
        started = time.perf_counter()
        retrain_shards(workspace, shards, executor=executor, progress=progress)
        ledger.add_detail(requests, {"replaced": _replaced(before, _live(workspace, shards)),
                                     "retrain_seconds": round(time.perf_counter() - started, 3),
                                     "version": workspace.manifest().version})
        ledger.set_state(requests, "retrained")
        crash_point("before-commit")
        remove_orphans(workspace)
        ledger.set_state(requests, "committed")
        return shards


def _recorded_before(ledger: Ledger, requests: list[int]) -> dict[tuple[int, int], str]:
    """The checkpoints the requests recorded as live when they were made (the oldest first):
    what a retraining that a crash interrupted had already replaced."""
    recorded: dict[tuple[int, int], str] = {}
    for request in reversed(requests):
        detail = ledger.request_detail(request)
        recorded.update({(shard, slice_): sha for shard, slice_, sha in detail.get("checkpoints_before", [])})
    return recorded


def _live(workspace: Workspace, shards: list[int]) -> dict[tuple[int, int], str]:
    """(shard, slice) -> sha256 of the live checkpoints of ``shards``."""
    return {(r.shard, r.slice): r.sha256 for r in workspace.checkpoints().checkpoints if r.shard in shards}


def _replaced(before: dict[tuple[int, int], str], after: dict[tuple[int, int], str]) -> list[dict]:
    """Each checkpoint a deletion replaced: its shard, slice, old and new sha256 (old None
    where a crashed run had already dropped it, new None where the shard is now empty)."""
    return [{"shard": shard, "slice": slice_, "old": before.get((shard, slice_)), "new": after.get((shard, slice_))}
            for shard, slice_ in sorted(set(before) | set(after)) if before.get((shard, slice_)) != after.get((shard, slice_))]


def _purge(workspace: Workspace, shard: int, deleted: dict[str, Deleted]) -> None:
    """Rewrite the files of a shard (or the test file, for TEST_SHARD) that hold deleted rows
    without them: the new files under new names first, then the manifest, then the old files
    go. A shard's other slices' files are not read (beyond their ids) or written."""
    manifest = workspace.manifest()
    if shard == TEST_SHARD:
        _purge_test(workspace, manifest, deleted)
        return
    entry = manifest.shard(shard)
    parts, replaced = [], []
    for part, first in zip(entry.parts, entry.first_slices()):
        if not id_mask(file_ids(workspace, part)[0], deleted).any():
            parts.append(part)
            continue
        rows = workspace.read_data_file(part.file, part.sha256, manifest.data.shape, manifest.data.dtype)
        kept = rows.take(~id_mask(rows.ids, deleted))
        parts.extend(workspace.write_shard_slices(shard, range(first, first + len(part.slice_rows or ())), kept))
        replaced.append(part.file)
    if not replaced:
        return
    manifest = manifest.with_shard(ShardData(shard=shard, parts=tuple(parts)))
    manifest = manifest.replace(data=dataclasses.replace(manifest.data, n_train=sum(e.rows for e in manifest.shards)))
    workspace.save(manifest)
    crash_point("after-purge-file")
    for name in replaced:
        (workspace.shards_dir / name).unlink(missing_ok=True)


def _purge_test(workspace: Workspace, manifest: WorkspaceManifest, deleted: dict[str, Deleted]) -> None:
    entry = manifest.test
    if not id_mask(file_ids(workspace, entry)[0], deleted).any():  # the ids alone, not the features
        return
    rows = workspace.read_data_file(entry.file, entry.sha256, manifest.data.shape, manifest.data.dtype)
    keep = ~id_mask(rows.ids, deleted)
    payload = parquet_of_test_rows(rows.ids[keep], rows.label[keep], rows.X[keep])
    name, sha = workspace.write_versioned("test", payload)
    new = dataclasses.replace(entry, file=name, sha256=sha, rows=int(keep.sum()),
                              ids_sha256=ids_digest(rows.ids[keep]) if entry.ids_sha256 else "")
    # ids deleted as training rows that also sat in the test rows (workspaces trained before
    # test ids had to differ): the audit's count of test rows needs them
    also = sum(1 for v in rows.ids[~keep].tolist() if deleted.get(key_text(v), (TEST_SHARD,))[0] != TEST_SHARD)
    data = dataclasses.replace(manifest.data, n_test=new.rows,
                               n_test_deleted_as_training=manifest.data.n_test_deleted_as_training + also)
    workspace.save(manifest.replace(test=new, data=data))
    crash_point("after-purge-file")
    if entry.file != name:
        (workspace.shards_dir / entry.file).unlink(missing_ok=True)


def _valid_prefix(workspace: Workspace, ids: np.ndarray, slices_of: np.ndarray, records: list[CheckpointRecord],
                  slices: int) -> int:
    """Number of leading slices whose checkpoint exists and was trained on exactly the rows
    ``ids`` (in slice order; ``slices_of`` their slices) of its shard."""
    by_slice = {r.slice: r for r in records}
    ends = np.searchsorted(slices_of, np.arange(slices), side="right")
    for slice_, digest in zip(range(slices), prefix_digests(ids, ends.tolist())):
        record = by_slice.get(slice_)
        if record is None or record.ids_sha256 != digest or not workspace.verify_checkpoint(record):
            return slice_
    return slices


def _drop_stale(workspace: Workspace, manifest: WorkspaceManifest, shard: int) -> Optional[ShardJob]:
    """Drop the shard's checkpoints that no longer match its rows (and any past its last
    slice, after a revert); the job that retrains the rest (None when nothing is left to train)."""
    entry = manifest.shard(shard)
    ids, slices_of = file_ids(workspace, entry)  # the features are the job's to read
    checkpoints = workspace.checkpoints()
    own = checkpoints.of_shard(shard)
    valid = _valid_prefix(workspace, ids, slices_of, own, manifest.n_slices) if entry.rows else 0
    stale = [r for r in own if r.slice >= valid]
    if stale:
        workspace.save(checkpoints.without_records(stale))
        for r in stale:
            for name, _, _ in r.files():
                (workspace.checkpoints_dir / name).unlink(missing_ok=True)
    if not entry.rows or valid == manifest.n_slices:
        return None
    start = next((r for r in own if r.slice == valid - 1), None)
    return ShardJob.for_shard(str(workspace.root.resolve()), manifest, entry, from_slice=valid, start=start)


def retrain_shards(workspace: Workspace, shards: Iterable[int], *, executor: Optional[Executor] = None,
                   progress: Optional[Progress] = None) -> None:
    """Drop each shard's checkpoints that no longer match its rows and retrain from there."""
    manifest = workspace.manifest()
    jobs = [job for job in (_drop_stale(workspace, manifest, shard) for shard in shards) if job]
    if jobs:
        check_model_source(manifest)
        logger.debug("retraining %s", ", ".join(f"shard {job.shard} from slice {job.from_slice}" for job in jobs))

    def crash_after_slice(record: CheckpointRecord) -> None:
        crash_point("mid-retrain")

    # the caller's progress first, whole (an observer keeps hearing of the plan and epochs)
    for result in (executor or make_executor("local")).run(jobs, Observers(progress, crash_after_slice)):
        accept_result(workspace, result)
        workspace.save(workspace.checkpoints().with_records(result.checkpoints))


def check_model_source(manifest: WorkspaceManifest) -> None:
    """Refuse to retrain with a model of the user's own whose source file changed since the
    workspace recorded it (:func:`sisa.models.check_source`)."""
    check_source(manifest.settings.model, manifest.model_source)


def accept_model_change(workspace: Workspace) -> Optional[dict]:
    """Record the current source of the workspace's own model as its model from now on;
    returns the change (None when nothing changed)."""
    with workspace_lock(workspace.root, exclusive=True):
        manifest = workspace.manifest()
        recorded = manifest.model_source
        current = model_source(manifest.settings.model)
        if not recorded or current is None or current["sha256"] == recorded.get("sha256"):
            return None
        change = {"previous_sha256": recorded.get("sha256"), "accepted": utc_now(), "version": manifest.version}
        workspace.save(manifest.replace(model_source=dict(current, **change)))
        return change
