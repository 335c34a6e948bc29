"""Audit: prove that a workspace has forgotten what its ledger says it deleted.

Checks that every live checkpoint and shard file matches its sha256; that no shard file holds a
deleted id; that every live checkpoint was trained on exactly its shard's current rows (by the
hash of its id set), so none has seen a deleted id; that no file outside the manifests is left
behind; and, with ``replay``, that retraining the affected shards from scratch gives the same
checkpoints bit for bit.
"""

from __future__ import annotations

import shutil
from typing import Any, Optional, Sequence

import numpy as np

from sisa.errors import SisaError
from sisa.ids import ids_digest, key_text
from sisa.ops.ensemble import environment_differences
from sisa.settings import Settings
from sisa.training.jobs import DataSpec, ShardJob
from sisa.training.vectorised import run_unit
from sisa.workspace.files import Workspace, sha256_file
from sisa.workspace.ledger import read_ledger
from sisa.workspace.lock import workspace_lock
from sisa.workspace.orphans import orphan_files
from sisa.workspace.staging import (
    REPLAY_PREFIX,
    make_scratch,
    scratch_folders,
    swap_path,
)


def audit(workspace: Workspace, ids: Optional[Sequence] = None, *, replay: bool = False) -> dict[str, Any]:
    """Check the workspace against the ledger (or against ``ids``); returns ``ok`` and problems."""
    with workspace_lock(workspace.root, exclusive=False):
        return _audit(workspace, ids, replay=replay)


def _audit(workspace: Workspace, ids: Optional[Sequence], *, replay: bool) -> dict[str, Any]:
    manifest = workspace.read_manifest()
    checkpoints = workspace.read_checkpoints_manifest()
    settings = Settings.from_dict(manifest["settings"])
    data = manifest["data"]
    spec = DataSpec(tuple(data["shape"]), data["dtype"], data["scale"], len(data["classes"]))
    deleted, open_requests = read_ledger(workspace.ledger_path)  # an audit never writes the ledger
    targets = {key_text(i) for i in ids} if ids is not None else set(deleted)
    problems: list[str] = []
    deleted_texts = {key[2:] for key in deleted}
    never = [i for i in (ids or []) if key_text(i) not in deleted and str(i) not in deleted_texts]
    if never:
        problems.append(f"{len(never)} id(s) were never requested for deletion (the ledger has no record "
                        f"of them): {never[:10]}")
        targets -= {key_text(i) for i in never}
    target_texts = {key[2:] for key in targets}  # a deleted 7 is found as the text "7" too
    if open_requests:
        problems.append(f"{len(open_requests)} deletion request(s) not yet committed; run 'sisa recover'")
    for folder in scratch_folders(workspace):
        problems.append(f"{folder.relative_to(workspace.root)} was left by an interrupted command and may "
                        f"hold personal data; 'sisa recover' removes it")
    if swap_path(workspace).exists():
        problems.append("an interrupted 'sisa train' is half swapped in; run 'sisa recover'")
    from sisa.ops.delete import TEST_SHARD

    # ids deleted before the last `train --force` (CARRIED_SHARD) were never in these files
    deleted_train = sum(1 for shard, _ in deleted.values() if shard >= 0)
    deleted_test = sum(1 for shard, _ in deleted.values() if shard == TEST_SHARD)
    if "n_train_initial" in data:
        live = sum(e["rows"] for e in manifest["shards"])
        if live + deleted_train != data["n_train_initial"]:
            problems.append(f"the shards hold {live} rows and the ledger {deleted_train} deleted training ids, "
                            f"but training started with {data['n_train_initial']} rows: the ledger or the "
                            f"shard files were changed outside sisa")
        test_rows = (manifest.get("test") or {}).get("rows", 0)
        deleted_test += data.get("n_test_deleted_as_training", 0)
        if test_rows + deleted_test != data.get("n_test_initial", test_rows + deleted_test):
            problems.append("the test rows and the ledger's test deletions do not add up to the initial test "
                            "rows: the ledger or the test file was changed outside sisa")
    rows_by_shard = {}
    for entry in manifest["shards"]:
        path = workspace.shards_dir / entry["file"]
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"shard file {entry['file']} is missing or does not match its sha256")
            continue
        rows = workspace.read_data_file(entry["file"], entry["sha256"], spec.shape, spec.dtype)
        rows_by_shard[entry["shard"]] = rows
        present = [v for v in rows.ids.tolist() if key_text(v) in targets or str(v) in target_texts]
        if present:
            problems.append(f"shard file {entry['file']} holds deleted ids: {present[:10]}")
    test = manifest.get("test")
    if test:
        if sha256_file(workspace.shards_dir / test["file"]) != test["sha256"]:
            problems.append(f"test file {test['file']} is missing or does not match its sha256")
        else:
            rows = workspace.read_data_file(test["file"], test["sha256"], spec.shape, spec.dtype)
            present = [v for v in rows.ids.tolist() if key_text(v) in targets or str(v) in target_texts]
            if present:
                problems.append(f"test file {test['file']} holds deleted ids: {present[:10]}")
    for record in checkpoints["checkpoints"]:
        where = f"checkpoint shard {record['shard']} slice {record['slice']} ({record['file']})"
        if not workspace.verify_checkpoint(record):
            problems.append(f"{where} is missing or does not match its sha256")
        else:
            try:  # whole, a torch file of tensors only, and the slice its record says
                counters = workspace.load_checkpoint(record)["counters"]
                if (counters["shard"], counters["slice"], counters["samples"]) != \
                        (record["shard"], record["slice"], record["samples"]):
                    problems.append(f"{where} holds the state of another shard or slice")
            except (SisaError, KeyError, TypeError) as exc:
                problems.append(f"{where}: {exc}")
        rows = rows_by_shard.get(record["shard"])
        if rows is not None:
            n = int(np.searchsorted(rows.slice, record["slice"], side="right"))
            if ids_digest(rows.ids[:n]) != record["ids_sha256"]:
                problems.append(f"{where} was trained on a different id set than its shard's rows "
                                f"(it may have seen deleted ids)")
    for path in orphan_files(workspace):
        problems.append(f"{path.relative_to(workspace.root)} is not named by any manifest "
                        f"(it may hold deleted data)")
    replayed: list[int] = []
    if replay:
        differences = environment_differences(checkpoints.get("environment") or {}, settings)
        shards = sorted({shard for key, (shard, _) in deleted.items() if key in targets and shard >= 0})
        if differences:
            problems.append("cannot replay bit for bit on this machine: " + "; ".join(differences))
        else:
            for shard in shards:
                if shard not in rows_by_shard:
                    problems.append(f"cannot replay shard {shard}: its shard file is damaged")
                    continue
                problem = _replay_shard(workspace, manifest, checkpoints["checkpoints"], shard, settings, spec)
                replayed.append(shard)
                if problem:
                    problems.append(problem)
    return {"ok": not problems, "problems": problems, "checked_ids": len(targets),
            "deleted_ids": len(deleted), "checkpoints": len(checkpoints["checkpoints"]),
            "replayed_shards": replayed}


def _replay_shard(workspace: Workspace, manifest: dict[str, Any], records: list[dict[str, Any]],
                  shard: int, settings: Settings, spec: DataSpec) -> Optional[str]:
    entry = next(e for e in manifest["shards"] if e["shard"] == shard)
    live = {r["slice"]: r["sha256"] for r in records if r["shard"] == shard}
    if not entry["rows"]:
        return None if not live else f"shard {shard} is empty but still has checkpoints"
    # Replayed inside the workspace, never in /tmp: a copy of the shard that outlived a killed
    # audit would hold personal data nobody knows of. Commands that write remove the folder,
    # and audit reports one that is left.
    tmp = make_scratch(workspace, REPLAY_PREFIX)
    try:
        scratch = Workspace(tmp)
        scratch.shards_dir.mkdir(parents=True)
        try:
            shutil.copyfile(workspace.shards_dir / entry["file"], scratch.shards_dir / entry["file"])
        except OSError as exc:
            raise SisaError(f"cannot copy {entry['file']} for replay: {exc}") from None
        # as training ran it: alone, or in its vectorised group's position
        result = run_unit([ShardJob(str(tmp), shard, settings, spec, entry["file"], entry["sha256"])])[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fresh = {r["slice"]: r["sha256"] for r in result.checkpoints}
    if fresh != live:
        bad = sorted(s for s in set(fresh) | set(live) if fresh.get(s) != live.get(s))
        return f"replay of shard {shard} from scratch differs at slices {bad}"
    return None
