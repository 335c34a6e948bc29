"""What ``sisa status`` reports: settings, sizes, every file checked against its sha256, deletions."""

from __future__ import annotations

from typing import Any

from sisa.errors import ModelChanged
from sisa.models import check_source
from sisa.ops.ensemble import Ensemble
from sisa.training.numerics import environment_differences
from sisa.workspace.files import sha256_file
from sisa.workspace.ledger import read_counts, read_open_versions


def status(ensemble: Ensemble) -> dict[str, Any]:
    """Settings, shard and slice sizes, and every checkpoint with whether it still matches."""
    workspace, manifest, settings = ensemble.workspace, ensemble.manifest, ensemble.settings
    checkpoints = [_checked_checkpoint(workspace, r) for r in ensemble.records]
    shard_files = [{"shard": e.shard, "file": e.file, "ok": sha256_file(workspace.shards_dir / e.file) == e.sha256}
                   for e in manifest.files() if e.shard is not None]
    counts = read_counts(workspace.ledger_path)
    unfinished = [v["version"] for v in read_open_versions(workspace.ledger_path)]
    data = manifest.data
    try:
        check_source(settings.model, manifest.model_source)
        model_changed = None
    except ModelChanged as exc:
        model_changed = exc.summary
    return {
        "model_source_changed": model_changed,
        "unfinished_versions": unfinished,
        "deletions": {"deleted_ids": counts["deleted_ids"], "pending": counts["pending"] + counts["retrained"]},
        "left_out_shards": sorted(ensemble.pending_shards),
        "environment_differences": environment_differences(ensemble.checkpoints.environment, settings),
        "workdir": str(workspace.root),
        "settings": settings.to_dict(),
        "data": {"spec": data.source_value("spec"), "shape": list(data.shape), "id_kind": data.id_kind,
                 "n_train": data.n_train, "n_test": data.n_test,
                 "config_file": data.source_value("config_file"), "config_sha256": data.source_value("config_sha256")},
        "shards": settings.shards,
        "slices": settings.slices,
        "version": manifest.version,
        "added_batches": [{"version": b.version, "rows": b.rows, "slices": len(b.epochs), "epochs": list(b.epochs)}
                          for b in manifest.batches],
        "total_slices": manifest.n_slices,
        "n_train": data.n_train,
        "samples_per_shard": [e.rows for e in manifest.shards],
        "samples_per_slice": [list(e.slice_rows or ()) for e in manifest.shards],
        "environment": ensemble.checkpoints.environment,
        "shard_files": shard_files,
        "checkpoints": checkpoints,
        "ok": all(c["ok"] for c in checkpoints) and all(f["ok"] for f in shard_files)
              and not unfinished,
    }


def _checked_checkpoint(workspace, record) -> dict[str, Any]:
    """A checkpoint as status shows it, every file of it checked against its sha256."""
    files = [_checked(workspace.checkpoints_dir / name, sha256, file=name) for name, sha256, _ in record.files()]
    problems = [f"{f['file']}: {f['problem']}" for f in files if not f["ok"]]
    out = {"shard": record.shard, "slice": record.slice, "file": record.file, "sha256": record.sha256,
           "samples": record.samples, "bytes": record.total_bytes(), "ok": not problems,
           "problem": "; ".join(problems) or None}
    if record.weights is not None:
        out.update(weights=record.weights, weights_sha256=record.weights_sha256)
    return out


def _checked(path, expected: str, **fields: Any) -> dict[str, Any]:
    actual = sha256_file(path)
    problem = None if actual == expected else ("missing or unreadable" if actual is None else "sha256 mismatch")
    return {**fields, "ok": problem is None, "problem": problem}
