"""``sisa status``: settings, partition sizes and the integrity of every checkpoint."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, locked
from sisa.cli.base import Environment, Subcommand


class Status(Subcommand):
    name = "status"
    help = "show a workspace and check its files"
    description = ("Show settings, shards, slices and every checkpoint with whether its file still "
                   "matches the recorded sha256. Exits 1 when a file does not match.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.ensemble import Ensemble
        from sisa.ops.status import status as workspace_status
        from sisa.workspace.files import Workspace

        with locked(args, env, exclusive=False):
            status = workspace_status(Ensemble(Workspace(args.workdir)))
        s, env = status["settings"], status["environment"] or {}
        lines = [
            f"workspace {status['workdir']}: {status['data']['spec']}, {status['n_train']} training "
            f"rows, {status['data']['n_test']} test rows, version {status['version']}",
            "settings: " + " ".join(f"{k}={v}" for k, v in s.items()),
            "numerics: " + ", ".join(f"{k} {v}" for k, v in env.items()),
            f"deletions: {status['deletions']['deleted_ids']} ids deleted, "
            f"{status['deletions']['pending']} request(s) pending",
            "shard  samples  per slice",
        ]
        if status["data"]["config_file"]:
            lines.insert(1, f"config: {status['data']['config_file']} (sha256 {str(status['data']['config_sha256'])[:12]}...)")
        if status["unfinished_versions"]:
            lines.append(f"UNFINISHED version(s) {status['unfinished_versions']}: interrupted; 'sisa recover' "
                         f"finishes them")
        if status["model_source_changed"]:
            lines.append(f"MODEL CHANGED: {status['model_source_changed']}")
        if status["added_batches"]:
            lines.insert(2, "added: " + ", ".join(f"version {b['version']}: {b['rows']} rows in {b['slices']} "
                                                  f"slice(s)" for b in status["added_batches"]))
        for shard, (n, per_slice) in enumerate(zip(status["samples_per_shard"], status["samples_per_slice"])):
            lines.append(f"{shard:5d}  {n:7d}  {' '.join(str(c) for c in per_slice)}")
        bad = [c for c in status["checkpoints"] if not c["ok"]]
        bad_files = [f for f in status["shard_files"] if not f["ok"]]
        for c in bad:
            lines.append(f"DAMAGED checkpoint shard {c['shard']} slice {c['slice']} ({c['file']}): {c['problem']}")
        for f in bad_files:
            lines.append(f"DAMAGED shard file {f['file']}: missing or sha256 mismatch")
        if not bad and not bad_files:
            lines.append(f"all {len(status['checkpoints'])} checkpoints and {len(status['shard_files'])} "
                         f"shard files match their sha256")
        for difference in status["environment_differences"]:
            lines.append(f"note: numerics differ from training ({difference}); a retrain on this "
                         f"machine would not reproduce the checkpoints bit for bit")
        emit(args, status, "\n".join(lines))
        return 0 if status["ok"] else 1
