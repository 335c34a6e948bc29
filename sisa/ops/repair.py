"""Repair: rebuild what is damaged from what is not, then verify.

- A checkpoint that is missing or no longer matches its sha256 is dropped with every later
  slice of its shard, and the shard retrains from its last good checkpoint.
- A lost or damaged checkpoints manifest is rebuilt from the checkpoint files that are still
  whole (each holds its shard, slice and sample counters; its id set is checked against the
  shard's rows), then the gaps retrain.
- A damaged shard or test file is rebuilt from the user's source (``data_spec``), less every
  id in the deletion ledger. When the rebuilt file is byte-identical to the recorded one it is
  simply restored; otherwise the shard retrains from scratch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from sisa.errors import SisaError
from sisa.ids import id_order, ids_digest, key_text, prefix_digests
from sisa.ops.commit import TEST_SHARD, complete_pending, retrain_shards
from sisa.training.executors import Executor
from sisa.training.jobs import Progress
from sisa.workspace.files import Workspace, file_ids, sha256_file, weights_name
from sisa.workspace.ledger import read_ledger
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import (
    CheckpointRecord,
    CheckpointsManifest,
    DataFile,
    ShardData,
    WorkspaceManifest,
)
from sisa.workspace.orphans import orphan_files
from sisa.workspace.rows import parquet_of_test_rows, rows_to_parquet


def repair(workspace: Workspace, *, data_spec: Optional[str] = None, executor: Optional[Executor] = None,
           progress: Optional[Progress] = None) -> dict[str, Any]:
    """Repair the workspace; returns what was done and the audit that followed."""
    with workspace_lock(workspace.root, exclusive=True):
        actions: list[str] = []
        rebuilt_from_scratch = _repair_data(workspace, data_spec, actions)
        try:
            workspace.checkpoints()
        except SisaError as exc:
            _rebuild_checkpoints_manifest(workspace, actions, reason=str(exc))
        complete_pending(workspace, executor=executor, progress=progress)
        bad = _drop_unusable_checkpoints(workspace, rebuilt_from_scratch, actions)
        for shard in bad:
            actions.append(f"shard {shard}: damaged checkpoint(s); retrained from the last good one")
        retrain_shards(workspace, range(workspace.manifest().settings.shards), executor=executor,
                       progress=progress)
        for path in orphan_files(workspace):
            path.unlink(missing_ok=True)
            actions.append(f"removed {path.relative_to(workspace.root)} (named by no manifest)")
    from sisa.ops.audit import audit

    result = audit(workspace)
    return {"actions": actions, "ok": result["ok"], "problems": result["problems"]}


def _repair_data(workspace: Workspace, data_spec: Optional[str], actions: list[str]) -> set[int]:
    """Rebuild damaged data files from the source; returns the shards that retrain from scratch."""
    manifest = workspace.manifest()
    damaged = [e for e in manifest.files() if sha256_file(workspace.shards_dir / e.file) != e.sha256]
    if not damaged:
        return set()
    if data_spec is None:
        raise SisaError(f"damaged data files: {', '.join(e.file for e in damaged)}; pass --data SPEC (the "
                        f"source the workspace was trained on) to rebuild them")
    return _rebuild_data(workspace, manifest, damaged, data_spec, actions)


def _drop_unusable_checkpoints(workspace: Workspace, rebuilt_from_scratch: set[int],
                               actions: list[str]) -> list[int]:
    """Drop checkpoints that are whole by sha256 but cannot be loaded (and every later slice),
    and those of shards rebuilt from scratch; returns the shards with damaged checkpoints."""
    checkpoints = workspace.checkpoints()
    records = checkpoints.checkpoints
    unloadable = [r for r in records if workspace.verify_checkpoint(r) and not _loads(workspace, r)]
    bad = sorted({r.shard for r in records if not workspace.verify_checkpoint(r)} | {r.shard for r in unloadable})
    first: dict[int, int] = {}
    for r in unloadable:
        first[r.shard] = min(first.get(r.shard, r.slice), r.slice)
    dropped = [r for r in records if (r.shard in first and r.slice >= first[r.shard])
               or r.shard in rebuilt_from_scratch]
    if dropped:
        workspace.save(checkpoints.without_records(dropped))
    for r in unloadable:
        for name, _, _ in r.files():
            (workspace.checkpoints_dir / name).unlink(missing_ok=True)
        actions.append(f"removed {r.file}: it matches its sha256 but cannot be loaded as a checkpoint")
    return bad


def _rebuild_data(workspace: Workspace, manifest: WorkspaceManifest, damaged: list[DataFile],
                  data_spec: str, actions: list[str]) -> set[int]:
    from sisa.data.partition import assign, shard_order
    from sisa.data.sources import load

    data, settings = manifest.data, manifest.settings
    source = load(data_spec, id_col=data.source_value("id_col", "id"), label_col=data.source_value("label_col", "label"),
                  test_spec=data.source_value("test_spec"), test_fraction=data.source_value("test_fraction", 0.2),
                  image_size=data.source_value("image_size"))
    deleted = set(read_ledger(workspace.ledger_path)[0])
    retrain: set[int] = set()
    final = {r.shard: r for r in _recorded_checkpoints(workspace) if r.slice == manifest.n_slices - 1}

    def keep(table):
        mask = np.array([key_text(v) not in deleted for v in table.ids.tolist()], dtype=bool)
        return table.take(mask)

    for entry in damaged:
        if entry.shard is None:
            test = keep(source.test)
            _check_same_ids("the test rows", test.ids, entry.rows, entry.ids_sha256 or None, data_spec)
            order = id_order(test.ids)
            labels = source.label_index(test.y[order], "test data")
            payload = parquet_of_test_rows(test.ids[order], labels, test.X[order].astype(data.dtype))
            manifest = _replace(workspace, manifest, entry, payload, actions, retrain)
            continue
        if manifest.batches:
            raise SisaError(f"shard {entry.shard}'s file cannot be rebuilt from {data_spec}: the workspace took "
                            f"in rows with 'sisa add' since it was trained, and which slice each of them sits in "
                            f"depends on the batch it came in; restore the file from a backup, or retrain with "
                            f"'sisa train --force'")
        shard = manifest.shard(entry.shard)
        first = shard.first_slices()[shard.parts.index(entry)]
        slices = range(first, first + len(entry.slice_rows or ()))
        train = keep(source.train)
        where = assign(train.ids, seed=settings.seed, shards=settings.shards, slices=settings.slices)
        rows = shard_order(where, entry.shard)
        rows = rows[(where.slice[rows] >= slices.start) & (where.slice[rows] < slices.stop)]
        single = len(shard.parts) == 1  # a format 1 file: the last checkpoint names all its ids
        expected = entry.ids_sha256 or (final[entry.shard].ids_sha256 if single and entry.shard in final else None)
        what = f"shard {entry.shard}" + ("" if single else f" slice {first}")
        _check_same_ids(what, train.ids[rows], entry.rows, expected, data_spec)
        labels = source.label_index(train.y[rows], "training data")
        payload = rows_to_parquet(train.ids[rows], entry.shard, where.slice[rows], labels,
                                  train.X[rows].astype(data.dtype))
        manifest = _replace(workspace, manifest, entry, payload, actions, retrain,
                            prefix=f"shard-{entry.shard:03d}" + ("" if single else f"-{first:03d}"))
    workspace.save(manifest)
    return {s for s in retrain if s != TEST_SHARD}


def _loads(workspace: Workspace, record: CheckpointRecord) -> bool:
    try:
        counters = workspace.load_checkpoint(record)["counters"]
        return (counters["shard"], counters["slice"]) == (record.shard, record.slice)
    except (SisaError, KeyError, TypeError):
        return False


def _recorded_checkpoints(workspace: Workspace) -> tuple[CheckpointRecord, ...]:
    try:
        return workspace.checkpoints().checkpoints
    except SisaError:
        return ()


def _check_same_ids(what: str, ids, rows: int, expected: Optional[str], data_spec: str) -> None:
    """A rebuilt file must hold exactly the ids the workspace recorded: a changed source would
    put rows into the workspace that no checkpoint was trained on (or leave some out)."""
    if len(ids) != rows or (expected is not None and ids_digest(ids) != expected):
        raise SisaError(f"--data {data_spec} does not hold the rows the workspace was trained on: {what} "
                        f"would get {len(ids)} rows instead of {rows}"
                        f"{'' if len(ids) != rows else ' (a different id set)'}; nothing was repaired. "
                        f"Pass the unchanged source")


def _replace(workspace: Workspace, manifest: WorkspaceManifest, entry: DataFile, payload: bytes,
             actions: list[str], retrain: set[int], prefix: str = "test") -> WorkspaceManifest:
    """Write a rebuilt data file (named ``prefix``-<sha256>); returns the manifest naming it."""
    from sisa.workspace.files import sha256_bytes

    if sha256_bytes(payload) == entry.sha256:
        workspace.write_data_file(entry.file, payload)
        actions.append(f"restored {entry.file} from the source, byte for byte")
        return manifest
    test = entry.shard is None
    name, sha = workspace.write_versioned(prefix, payload)
    actions.append(f"rebuilt {entry.file} from the source as {name} (contents differ from the "
                   f"recorded file{'' if test else '; the shard retrains from scratch'})")
    retrain.add(TEST_SHARD if test else entry.shard)
    new = dataclasses.replace(entry, file=name, sha256=sha)
    if test:
        return manifest.replace(test=new)
    shard = manifest.shard(entry.shard)
    return manifest.with_shard(dataclasses.replace(shard, parts=tuple(new if p == entry else p for p in shard.parts)))


def _rebuild_checkpoints_manifest(workspace: Workspace, actions: list[str], reason: str) -> None:
    from sisa.training.numerics import numerics_environment

    manifest = workspace.manifest()
    records = []
    for entry in manifest.shards:
        if entry.rows:
            records += _whole_checkpoints(workspace, manifest, entry)
    environment = numerics_environment(manifest.settings)
    workspace.save(CheckpointsManifest(checkpoints=tuple(records), environment=environment))
    actions.append(f"rebuilt checkpoints/manifest.json from {len(records)} whole checkpoint files ({reason}); "
                   f"numerics recorded as this machine's")


def _whole_checkpoints(workspace: Workspace, manifest: WorkspaceManifest, entry: ShardData) -> list[CheckpointRecord]:
    """The shard's leading checkpoints found on disk under the names their id sets give them,
    each holding the shard, slice and sample count it should."""
    ids, slices_of = file_ids(workspace, entry)
    records = []
    ends = np.searchsorted(slices_of, np.arange(manifest.n_slices), side="right").tolist()
    for slice_, n, digest in zip(range(manifest.n_slices), ends, prefix_digests(ids, ends)):
        name = workspace.checkpoint_name(entry.shard, slice_, digest)
        path = workspace.checkpoints_dir / name
        if not path.exists():
            break
        weights = workspace.checkpoints_dir / weights_name(name)
        split = weights.is_file()  # else a checkpoint of format 1, weights inside
        record = CheckpointRecord(shard=entry.shard, slice=slice_, file=name, sha256=sha256_file(path) or "",
                                  ids_sha256=digest, samples=n, epochs=manifest.schedule()[slice_],
                                  bytes=path.stat().st_size, weights=weights_name(name) if split else None,
                                  weights_sha256=sha256_file(weights) if split else None,
                                  weights_bytes=weights.stat().st_size if split else None)
        try:
            state = workspace.load_checkpoint(record)
            counters = state["counters"]
            state["model"]  # noqa: B018 - a state file whose weights file is gone is no checkpoint
        except (SisaError, KeyError, TypeError):
            break
        if (counters.get("shard"), counters.get("slice"), counters.get("samples")) != (entry.shard, slice_, n):
            break
        records.append(record)
    return records
