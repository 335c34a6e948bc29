"""Deletion requests: parse and plan them against the partition, and record them in the ledger.

A deletion is written to the ledger before anything else changes; :mod:`sisa.ops.commit` then
purges the rows, retrains the affected slices and commits the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from sisa.data.partition import assign
from sisa.errors import SisaError
from sisa.faults import crash_point
from sisa.ids import id_mask, key_text
from sisa.ops.commit import (
    TEST_SHARD,
    check_model_source,
    complete_pending,
    ensure_base,
)
from sisa.training.executors import Executor
from sisa.training.jobs import Progress, slice_epochs_of
from sisa.workspace.files import Workspace, file_ids
from sisa.workspace.ledger import Ledger, read_ledger
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import DataFile, ShardData, WorkspaceManifest


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
    base_slices: int = 0                                       # slices of the training (then added ones)
    estimate_seconds: float = 0.0
    slices_of: dict = field(default_factory=dict)              # id -> (shard, slice)

    @property
    def ids(self) -> list:
        return [i for ids in self.delete.values() for i in ids] + self.test

    def retrained(self, shard: int) -> dict[str, Any]:
        """What retraining ``shard`` costs: slice r trains on the rows of slices 0..r, so
        ``samples`` adds up each retrained slice's rows, ``sample_passes`` those times epochs."""
        own = self.slice_rows[shard]
        trained = np.cumsum(own)
        slices = range(self.from_slice[shard], len(trained))
        epochs = [slice_epochs_of(self.epochs, self.base_slices, r, int(trained[r]), own[r]) for r in range(len(own))]
        return {"shard": shard, "from_slice": self.from_slice[shard], "rows": self.samples[shard],
                "slices": len(slices), "samples": int(sum(trained[r] for r in slices if epochs[r])),
                "sample_passes": int(sum(trained[r] * epochs[r] for r in slices))}

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



def plan_deletion(workspace: Workspace, ids: Sequence, *, ignore_missing: bool = False) -> Plan:
    """Group ids by shard and find each shard's earliest affected slice. Changes nothing."""
    with workspace_lock(workspace.root, exclusive=False):
        return _plan_deletion(workspace, ids, ignore_missing=ignore_missing)


def _plan_deletion(workspace: Workspace, ids: Sequence, *, ignore_missing: bool) -> Plan:
    manifest = workspace.manifest()
    settings = manifest.settings
    deleted = read_ledger(workspace.ledger_path)[0]  # a dry run must not even create the ledger
    plan = Plan(epochs=list(manifest.schedule()), base_slices=settings.slices)
    unique = list(dict.fromkeys(ids))
    where = assign(unique, seed=settings.seed, shards=settings.shards, slices=settings.slices)
    wanted: dict[int, list] = {}
    for k, value in enumerate(unique):
        if key_text(value) in deleted:
            plan.already_deleted.append(value)
        else:
            wanted.setdefault(int(where.shard[k]), []).append(value)
    for shard, candidates in sorted(wanted.items()):
        _plan_shard(plan, workspace, manifest.shard(shard), candidates, manifest.n_slices)
    if manifest.test and (plan.missing or plan.delete):
        _plan_test_rows(plan, workspace, manifest.test)
    _refuse_unsafe(plan, manifest, ignore_missing=ignore_missing)
    plan.estimate_seconds = sum(r.seconds for r in workspace.checkpoints().checkpoints
                                if r.shard in plan.from_slice and r.slice >= plan.from_slice[r.shard])
    return plan


def _plan_shard(plan: Plan, workspace: Workspace, entry: ShardData, candidates: list, slices: int) -> None:
    """Find ``candidates`` in the shard's rows; the shard's earliest affected slice."""
    shard = entry.shard
    shard_ids, shard_slices = file_ids(workspace, entry)
    found = np.flatnonzero(id_mask(shard_ids, {key_text(v) for v in candidates}))
    position = {key_text(v): i for i, v in zip(found.tolist(), shard_ids[found].tolist())}
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
        gone = np.bincount([plan.slices_of[k][1] for k in keys], minlength=slices)
        plan.slice_rows[shard] = (np.bincount(shard_slices, minlength=slices) - gone).tolist()


def _plan_test_rows(plan: Plan, workspace: Workspace, test: DataFile) -> None:
    """A person's rows may sit in the held-out test set: they are purged from it too."""
    ids = file_ids(workspace, test)[0]
    wanted = {key_text(v) for v in plan.missing} | {key_text(v) for found in plan.delete.values() for v in found}
    test_ids = set(map(key_text, ids[id_mask(ids, wanted)].tolist()))
    plan.test = [v for v in plan.missing if key_text(v) in test_ids]
    plan.missing = [v for v in plan.missing if key_text(v) not in test_ids]
    plan.also_test = [v for ids in plan.delete.values() for v in ids if key_text(v) in test_ids]
    for value in plan.test:
        plan.slices_of[key_text(value)] = (TEST_SHARD, -1)


def _refuse_unsafe(plan: Plan, manifest: WorkspaceManifest, *, ignore_missing: bool) -> None:
    if plan.missing and not ignore_missing:
        shown = ", ".join(repr(v) for v in plan.missing[:10])
        more = f" and {len(plan.missing) - 10} more" if len(plan.missing) > 10 else ""
        raise SisaError(f"unknown ids (not in the training data): {shown}{more}; nothing was deleted "
                        f"(to delete the others, pass --ignore-missing, or ignore_missing=True in Python)")
    remaining = sum(e.rows for e in manifest.shards) - sum(len(v) for v in plan.delete.values())
    if plan.ids and remaining <= 0:
        raise SisaError("refusing to delete every training id: nothing would be left to train on; "
                        "delete the workspace instead")


def delete(workspace: Workspace, ids: Sequence, *, ignore_missing: bool = False,
           executor: Optional[Executor] = None, progress: Optional[Progress] = None,
           reference: Optional[str] = None) -> dict[str, Any]:
    """Delete ``ids`` exactly; returns the plan's summary once the deletion is committed.
    ``reference`` (a ticket id) is stored with the request for its history and receipt."""
    if reference is not None and (not isinstance(reference, str) or not reference.strip()
                                  or len(reference) > 1000 or not reference.isprintable()):
        raise SisaError("a reference is one line of printable text, at most 1000 characters")
    with workspace_lock(workspace.root, exclusive=True):
        return _delete(workspace, ids, ignore_missing=ignore_missing, executor=executor, progress=progress,
                       reference=reference)


def _delete(workspace: Workspace, ids: Sequence, *, ignore_missing: bool, executor: Optional[Executor],
            progress: Optional[Progress], reference: Optional[str]) -> dict[str, Any]:
    started = time.perf_counter()
    complete_pending(workspace, executor=executor, progress=progress)
    plan = _plan_deletion(workspace, ids, ignore_missing=ignore_missing)
    result = plan.to_dict()
    # a request that only names ids deleted before is recorded too when it carries a reference:
    # its ticket gets an answer (a receipt saying they were already gone)
    if plan.ids or (plan.already_deleted and reference is not None):
        check_model_source(workspace.manifest())  # before the request is recorded, not after
        with Ledger(workspace.ledger_path) as ledger:
            ensure_base(ledger, workspace.manifest())  # the training, as the ledger's first version
            result["request"] = ledger.add_request(
                ((k, shard, slice_) for k, (shard, slice_) in plan.slices_of.items()), reference=reference,
                detail=_request_detail(workspace, plan, result, ids))
        crash_point("after-ledger")
        complete_pending(workspace, executor=executor, progress=progress)
    result["reference"] = reference
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _request_detail(workspace: Workspace, plan: Plan, summary: dict[str, Any], ids: Sequence) -> dict[str, Any]:
    """What the ledger keeps with a request for its history and receipt: counts, the plan, the
    ids already deleted before it, and the checkpoints of the affected shards as they are now
    (so a receipt names what was replaced even when a crash interrupts the retraining)."""
    return {"asked": len(dict.fromkeys(map(key_text, ids))), "already_deleted": len(plan.already_deleted),
            "already_deleted_ids": [key_text(v) for v in plan.already_deleted],
            "missing": len(plan.missing), "retrained": summary["retrained"],
            "samples_retrained": summary["samples_retrained"],
            "checkpoints_before": [[r.shard, r.slice, r.sha256] for r in workspace.checkpoints().checkpoints
                                   if r.shard in plan.delete]}
