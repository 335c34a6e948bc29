"""Audit: prove that a workspace has forgotten what its ledger says it deleted.

Checks that every live checkpoint and shard file matches its sha256; that no shard file holds a
deleted id; that every live checkpoint was trained on exactly its shard's current rows (by the
hash of its id set), so none has seen a deleted id; that no file outside the manifests is left
behind; and, with ``replay``, that retraining the affected shards from scratch gives the same
checkpoints bit for bit.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from sisa.errors import ModelChanged, SisaError
from sisa.ids import ids_digest, key_text
from sisa.ops.commit import TEST_SHARD, check_model_source
from sisa.training.executors import run_carried
from sisa.training.jobs import DataSpec, ShardJob
from sisa.training.numerics import environment_differences
from sisa.workspace.carried import CarriedFiles
from sisa.workspace.files import (
    Workspace,
    check_slices,
    legacy_checkpoint_bytes,
    sha256_bytes,
    sha256_file,
)
from sisa.workspace.ledger import read_ledger
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import (
    CheckpointRecord,
    CheckpointsManifest,
    ShardData,
    WorkspaceManifest,
)
from sisa.workspace.orphans import orphan_files
from sisa.workspace.rows import ShardRows, concat_rows
from sisa.workspace.staging import (
    scratch_folders,
    swap_path,
)


def audit(workspace: Workspace, ids: Optional[Sequence] = None, *, replay: bool = False) -> dict[str, Any]:
    """Check the workspace against the ledger (or against ``ids``); returns ``ok`` and problems."""
    with workspace_lock(workspace.root, exclusive=False):
        return _audit(workspace, ids, replay=replay)


class _Audit:
    """One audit's findings; each check adds the problems it finds."""

    def __init__(self, workspace: Workspace, ids: Optional[Sequence]) -> None:
        self.workspace = workspace
        self.manifest = workspace.manifest()
        self.checkpoints = workspace.checkpoints()
        self.spec = DataSpec.from_info(self.manifest.data)
        self.deleted, self.open_requests = read_ledger(workspace.ledger_path)  # never writes the ledger
        self.targets = {key_text(i) for i in ids} if ids is not None else set(self.deleted)
        self.problems: list[str] = []
        self.rows_by_shard: dict[int, ShardRows] = {}
        self.replayed: list[int] = []
        self._unrequested(ids or [])
        self.target_texts = {key[2:] for key in self.targets}  # a deleted 7 is found as the text "7" too

    def _unrequested(self, ids: Sequence) -> None:
        deleted_texts = {key[2:] for key in self.deleted}
        never = [i for i in ids if key_text(i) not in self.deleted and str(i) not in deleted_texts]
        if never:
            self.problems.append(f"{len(never)} id(s) were never requested for deletion (the ledger has no "
                                 f"record of them): {never[:10]}")
            self.targets -= {key_text(i) for i in never}

    def interrupted(self) -> None:
        workspace = self.workspace
        if self.open_requests:
            self.problems.append(f"{len(self.open_requests)} deletion request(s) not yet committed; "
                                 f"run 'sisa recover'")
        for folder in scratch_folders(workspace):
            self.problems.append(f"{folder.relative_to(workspace.root)} was left by an interrupted command and "
                                 f"may hold personal data; 'sisa recover' removes it")
        if swap_path(workspace).exists():
            self.problems.append("an interrupted 'sisa train' is half swapped in; run 'sisa recover'")

    def counts(self) -> None:
        """Rows now plus rows deleted must be the rows trained on at first."""
        data, manifest = self.manifest.data, self.manifest
        # ids deleted before the last `train --force` (CARRIED_SHARD) were never in these files
        deleted_train = sum(1 for shard, _ in self.deleted.values() if shard >= 0)
        deleted_test = sum(1 for shard, _ in self.deleted.values() if shard == TEST_SHARD)
        live = sum(e.rows for e in manifest.shards)
        if data.n_train_initial is not None and live + deleted_train != data.n_train_initial:
            self.problems.append(f"the shards hold {live} rows and the ledger {deleted_train} deleted training "
                                 f"ids, but training started with {data.n_train_initial} rows: the ledger or "
                                 f"the shard files were changed outside sisa")
        test_rows = manifest.test.rows if manifest.test else 0
        if data.n_test_initial is not None and \
                test_rows + deleted_test + data.n_test_deleted_as_training != data.n_test_initial:
            self.problems.append("the test rows and the ledger's test deletions do not add up to the initial "
                                 "test rows: the ledger or the test file was changed outside sisa")

    def data_files(self) -> None:
        """Every data file whole, and holding none of the deleted ids."""
        by_shard: dict[int, list] = {}
        for entry in self.manifest.files():
            kind = "test file" if entry.shard is None else "shard file"
            if sha256_file(self.workspace.shards_dir / entry.file) != entry.sha256:
                self.problems.append(f"{kind} {entry.file} is missing or does not match its sha256")
                if entry.shard is not None:
                    by_shard[entry.shard] = by_shard.get(entry.shard, []) + [None]
                continue
            rows = self.workspace.read_data_file(entry.file, entry.sha256, self.spec.shape, self.spec.dtype)
            if entry.shard is not None:
                by_shard[entry.shard] = by_shard.get(entry.shard, []) + [rows]
            present = [v for v in rows.ids.tolist() if key_text(v) in self.targets or str(v) in self.target_texts]
            if present:
                self.problems.append(f"{kind} {entry.file} holds deleted ids: {present[:10]}")
        # a shard's rows, where all its files are whole and hold the slices the manifest says
        for shard, parts in by_shard.items():
            if None in parts:
                continue
            rows = concat_rows(parts)
            try:
                check_slices(shard, "files", rows.slice, 0, self.manifest.shard(shard).slice_rows)
            except SisaError as exc:
                self.problems.append(str(exc))
                continue
            self.rows_by_shard[shard] = rows

    def checkpoint(self, record: CheckpointRecord) -> None:
        """Whole, a torch file of tensors only, the slice its record says, trained on its rows."""
        where = f"checkpoint shard {record.shard} slice {record.slice} ({record.file})"
        if not self.workspace.verify_checkpoint(record):
            self.problems.append(f"{where} is missing or does not match its sha256")
        else:
            try:
                counters = self.workspace.load_checkpoint(record)["counters"]
                if (counters["shard"], counters["slice"], counters["samples"]) != \
                        (record.shard, record.slice, record.samples):
                    self.problems.append(f"{where} holds the state of another shard or slice")
            except (SisaError, KeyError, TypeError) as exc:
                self.problems.append(f"{where}: {exc}")
        rows = self.rows_by_shard.get(record.shard)
        if rows is not None:
            n = int(np.searchsorted(rows.slice, record.slice, side="right"))
            if ids_digest(rows.ids[:n]) != record.ids_sha256:
                self.problems.append(f"{where} was trained on a different id set than its shard's rows "
                                     f"(it may have seen deleted ids)")

    def orphans(self) -> None:
        for path in orphan_files(self.workspace):
            self.problems.append(f"{path.relative_to(self.workspace.root)} is not named by any manifest "
                                 f"(it may hold deleted data)")

    def replay(self) -> None:
        """Retrain every shard that held a deleted id from scratch; it must give the same bits."""
        settings = self.manifest.settings
        differences = environment_differences(self.checkpoints.environment, settings)
        try:
            check_model_source(self.manifest)
        except ModelChanged as exc:
            differences.append(exc.summary)
        if differences:
            self.problems.append("cannot replay bit for bit on this machine: " + "; ".join(differences))
            return
        for shard in sorted({s for key, (s, _) in self.deleted.items() if key in self.targets and s >= 0}):
            if shard not in self.rows_by_shard:
                self.problems.append(f"cannot replay shard {shard}: its shard file is damaged")
                continue
            problem = _replay_shard(self.workspace, self.manifest, self.manifest.shard(shard), self.checkpoints)
            self.replayed.append(shard)
            if problem:
                self.problems.append(problem + self._version_hint())

    def _version_hint(self) -> str:
        from sisa import __version__

        accepted = (self.manifest.model_source or {}).get("previous_sha256")
        if accepted:
            return (f" (the model's source was changed and the change accepted at version "
                    f"{self.manifest.model_source.get('version')}: checkpoints trained before it were made by "
                    f"other code, so a replay with the current code cannot reproduce them)")
        trained_by = self.manifest.sisa_version
        if trained_by == __version__:
            return ""
        return (f" (the workspace was trained by sisa {trained_by or 'before 0.1.0'} and this is sisa "
                f"{__version__}: a change in training code between versions changes the bits)")

    def report(self) -> dict[str, Any]:
        return {"ok": not self.problems, "problems": self.problems, "checked_ids": len(self.targets),
                "deleted_ids": len(self.deleted), "checkpoints": len(self.checkpoints.checkpoints),
                "replayed_shards": self.replayed}


def _audit(workspace: Workspace, ids: Optional[Sequence], *, replay: bool) -> dict[str, Any]:
    check = _Audit(workspace, ids)
    check.interrupted()
    check.counts()
    check.data_files()
    for record in check.checkpoints.checkpoints:
        check.checkpoint(record)
    check.orphans()
    if replay:
        check.replay()
    return check.report()


def _replay_shard(workspace: Workspace, manifest: WorkspaceManifest, entry: ShardData,
                  checkpoints: CheckpointsManifest) -> Optional[str]:
    shard = entry.shard
    own = checkpoints.of_shard(shard)
    live = {r.slice: r.sha256 for r in own}
    if not entry.rows:
        return None if not live else f"shard {shard} is empty but still has checkpoints"
    # Replayed in memory: no copy of the shard's rows, and no checkpoint, is written anywhere
    # (a copy that outlived a killed audit would hold personal data nobody knows of). As
    # training ran it: alone, or in its vectorised group's position.
    job = ShardJob.for_shard(str(workspace.root), manifest, entry)
    files = CarriedFiles.gather(workspace, [p.file for p in entry.parts], [])
    result = run_carried([job], files)[0]
    fresh = {r.slice: r.sha256 for r in result.checkpoints}
    # a checkpoint of format 1 (one file) is compared with the fresh one written that way
    legacy = {r.slice for r in own if r.weights is None}
    fresh.update({r.slice: sha256_bytes(legacy_checkpoint_bytes(files.load_checkpoint(r)))
                  for r in result.checkpoints if r.slice in legacy})
    if fresh != live:
        bad = sorted(s for s in set(fresh) | set(live) if fresh.get(s) != live.get(s))
        return f"replay of shard {shard} from scratch differs at slices {bad}"
    return None
