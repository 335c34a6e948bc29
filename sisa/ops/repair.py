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

from typing import Any, Optional

import numpy as np

from sisa.errors import SisaError
from sisa.ids import id_order, ids_digest, key_text
from sisa.ops.commit import complete_pending, retrain_shards
from sisa.ops.delete import TEST_SHARD
from sisa.settings import Settings
from sisa.training.executors import Executor
from sisa.training.jobs import Progress
from sisa.workspace.files import CHECKPOINTS_FORMAT, Workspace, sha256_file
from sisa.workspace.ledger import read_ledger
from sisa.workspace.lock import workspace_lock
from sisa.workspace.orphans import orphan_files
from sisa.workspace.rows import rows_to_parquet


def repair(workspace: Workspace, *, data_spec: Optional[str] = None, executor: Optional[Executor] = None,
           progress: Optional[Progress] = None) -> dict[str, Any]:
    """Repair the workspace; returns what was done and the audit that followed."""
    with workspace_lock(workspace.root, exclusive=True):
        manifest = workspace.read_manifest()
        actions: list[str] = []
        settings = Settings.from_dict(manifest["settings"])
        damaged = [e for e in manifest["shards"] if sha256_file(workspace.shards_dir / e["file"]) != e["sha256"]]
        test = manifest.get("test")
        test_damaged = bool(test) and sha256_file(workspace.shards_dir / test["file"]) != test["sha256"]
        rebuilt_from_scratch: set[int] = set()
        if damaged or test_damaged:
            if data_spec is None:
                names = [e["file"] for e in damaged] + ([test["file"]] if test_damaged else [])
                raise SisaError(f"damaged data files: {', '.join(names)}; pass --data SPEC (the source the "
                                f"workspace was trained on) to rebuild them")
            rebuilt_from_scratch = _rebuild_data(workspace, manifest, damaged, test_damaged, data_spec, actions)
        try:
            workspace.read_checkpoints_manifest()
        except SisaError as exc:
            _rebuild_checkpoints_manifest(workspace, settings, actions, reason=str(exc))
        complete_pending(workspace, executor=executor, progress=progress)
        checkpoints = workspace.read_checkpoints_manifest()["checkpoints"]
        unloadable = [r for r in checkpoints if workspace.verify_checkpoint(r) and not _loads(workspace, r)]
        bad = sorted({r["shard"] for r in checkpoints if not workspace.verify_checkpoint(r)}
                     | {r["shard"] for r in unloadable})
        if unloadable:  # whole by sha256 but not a checkpoint sisa can load: retrain from before it
            first = {}
            for r in unloadable:
                first[r["shard"]] = min(first.get(r["shard"], r["slice"]), r["slice"])
            checkpoints = [r for r in checkpoints if not (r["shard"] in first and r["slice"] >= first[r["shard"]])]
            manifest_c = workspace.read_checkpoints_manifest()
            manifest_c["checkpoints"] = checkpoints
            workspace.write_json(workspace.checkpoints_manifest_path, manifest_c)
            for r in unloadable:
                (workspace.checkpoints_dir / r["file"]).unlink(missing_ok=True)
                actions.append(f"removed {r['file']}: it matches its sha256 but cannot be loaded as a checkpoint")
        if rebuilt_from_scratch:
            checkpoints = [r for r in checkpoints if r["shard"] not in rebuilt_from_scratch]
            manifest_c = workspace.read_checkpoints_manifest()
            manifest_c["checkpoints"] = checkpoints
            workspace.write_json(workspace.checkpoints_manifest_path, manifest_c)
        for shard in bad:
            actions.append(f"shard {shard}: damaged checkpoint(s); retrained from the last good one")
        retrain_shards(workspace, range(settings.shards), executor=executor, progress=progress)
        for path in orphan_files(workspace):
            path.unlink(missing_ok=True)
            actions.append(f"removed {path.relative_to(workspace.root)} (named by no manifest)")
    from sisa.ops.audit import audit

    result = audit(workspace)
    return {"actions": actions, "ok": result["ok"], "problems": result["problems"]}


def _rebuild_data(workspace: Workspace, manifest: dict[str, Any], damaged: list[dict[str, Any]],
                  test_damaged: bool, data_spec: str, actions: list[str]) -> set[int]:
    from sisa.data.partition import assign, shard_order
    from sisa.data.sources import load

    data = manifest["data"]
    settings = Settings.from_dict(manifest["settings"])
    source = load(data_spec, id_col=data.get("id_col", "id"), label_col=data.get("label_col", "label"),
                  test_spec=data.get("test_spec"), test_fraction=data.get("test_fraction", 0.2))
    deleted = set(read_ledger(workspace.ledger_path)[0])
    retrain: set[int] = set()
    final = {r["shard"]: r for r in workspace_checkpoints(workspace) if r["slice"] == settings.slices - 1}

    def keep(table):
        mask = np.array([key_text(v) not in deleted for v in table.ids.tolist()], dtype=bool)
        return table.take(mask)

    for entry in damaged:
        train = keep(source.train)
        where = assign(train.ids, seed=settings.seed, shards=settings.shards, slices=settings.slices)
        rows = shard_order(where, entry["shard"])
        expected = entry.get("ids_sha256") or (final.get(entry["shard"]) or {}).get("ids_sha256")
        _check_same_ids(f"shard {entry['shard']}", train.ids[rows], entry["rows"], expected, data_spec)
        labels = source.label_index(train.y[rows], "training data")
        payload = rows_to_parquet(train.ids[rows], entry["shard"], where.slice[rows], labels,
                                  train.X[rows].astype(data["dtype"]))
        _replace(workspace, manifest, entry, payload, f"shard-{entry['shard']:03d}", actions, retrain)
    if test_damaged:
        test = keep(source.test)
        _check_same_ids("the test rows", test.ids, manifest["test"]["rows"], manifest["test"].get("ids_sha256"),
                        data_spec)
        order = id_order(test.ids)
        labels = source.label_index(test.y[order], "test data")
        payload = rows_to_parquet(test.ids[order], None, None, labels, test.X[order].astype(data["dtype"]))
        _replace(workspace, manifest, manifest["test"], payload, "test", actions, retrain, shard=TEST_SHARD)
    workspace.write_json(workspace.manifest_path, manifest)
    return {s for s in retrain if s != TEST_SHARD}


def _loads(workspace: Workspace, record: dict[str, Any]) -> bool:
    try:
        counters = workspace.load_checkpoint(record)["counters"]
        return (counters["shard"], counters["slice"]) == (record["shard"], record["slice"])
    except (SisaError, KeyError, TypeError):
        return False


def workspace_checkpoints(workspace: Workspace) -> list[dict[str, Any]]:
    try:
        return workspace.read_checkpoints_manifest()["checkpoints"]
    except SisaError:
        return []


def _check_same_ids(what: str, ids, rows: int, expected: Optional[str], data_spec: str) -> None:
    """A rebuilt file must hold exactly the ids the workspace recorded: a changed source would
    put rows into the workspace that no checkpoint was trained on (or leave some out)."""
    if len(ids) != rows or (expected is not None and ids_digest(ids) != expected):
        raise SisaError(f"--data {data_spec} does not hold the rows the workspace was trained on: {what} "
                        f"would get {len(ids)} rows instead of {rows}"
                        f"{'' if len(ids) != rows else ' (a different id set)'}; nothing was repaired. "
                        f"Pass the unchanged source")


def _replace(workspace: Workspace, manifest: dict[str, Any], entry: dict[str, Any], payload: bytes,
             prefix: str, actions: list[str], retrain: set[int], shard: Optional[int] = None) -> None:
    from sisa.workspace.files import sha256_bytes

    shard = entry.get("shard", TEST_SHARD) if shard is None else shard
    if sha256_bytes(payload) == entry["sha256"]:
        workspace.write_data_file(entry["file"], payload)
        actions.append(f"restored {entry['file']} from the source, byte for byte")
        return
    name, sha = workspace.write_versioned(prefix, payload)
    actions.append(f"rebuilt {entry['file']} from the source as {name} (contents differ from the "
                   f"recorded file{'; the shard retrains from scratch' if shard != TEST_SHARD else ''})")
    entry.update(file=name, sha256=sha)
    retrain.add(shard)


def _rebuild_checkpoints_manifest(workspace: Workspace, settings: Settings, actions: list[str],
                                  reason: str) -> None:
    manifest = workspace.read_manifest()
    data = manifest["data"]
    records = []
    for entry in manifest["shards"]:
        if not entry["rows"]:
            continue
        rows = workspace.read_data_file(entry["file"], entry["sha256"], tuple(data["shape"]), data["dtype"])
        for slice_ in range(settings.slices):
            n = int(np.searchsorted(rows.slice, slice_, side="right"))
            digest = ids_digest(rows.ids[:n])
            name = workspace.checkpoint_name(entry["shard"], slice_, digest)
            path = workspace.checkpoints_dir / name
            if not path.exists():
                break
            record = {"shard": entry["shard"], "slice": slice_, "file": name, "sha256": sha256_file(path),
                      "ids_sha256": digest, "samples": n, "epochs": settings.slice_epochs()[slice_],
                      "seconds": 0.0}
            try:
                counters = workspace.load_checkpoint(record)["counters"]
            except (SisaError, KeyError):
                break
            if (counters.get("shard"), counters.get("slice"), counters.get("samples")) != (entry["shard"], slice_, n):
                break
            records.append(record)
    from sisa.training.slices import numerics_environment

    environment = numerics_environment(settings)
    workspace.write_json(workspace.checkpoints_manifest_path,
                         {"format": CHECKPOINTS_FORMAT, "environment": environment, "checkpoints": records})
    actions.append(f"rebuilt checkpoints/manifest.json from {len(records)} whole checkpoint files ({reason}); "
                   f"numerics recorded as this machine's")
