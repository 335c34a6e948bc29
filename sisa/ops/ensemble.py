"""A trained workspace as a predictor: shard models, aggregation, evaluation and status."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from sisa.aggregation import aggregate
from sisa.errors import SisaError
from sisa.settings import Settings
from sisa.training.jobs import DataSpec
from sisa.training.slices import (
    deterministic_torch,
    numerics_environment,
    predict_probas,
)
from sisa.workspace.files import ShardRows, Workspace, sha256_file


class Ensemble:
    """The shard models of a workspace, read with their integrity checked.

    >>> import tempfile, sisa
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     clf = sisa.SISAClassifier(tmp, shards=2, slices=1, epochs=1).fit(
    ...         np.eye(4, dtype=np.float32).repeat(5, 0), np.arange(20) % 2)
    ...     Ensemble(sisa.workspace.files.Workspace(tmp)).predict_proba(np.eye(4, dtype=np.float32)).shape
    (4, 2)
    """

    def __init__(self, workspace: Workspace) -> None:
        from sisa.workspace.staging import check_no_swap

        self.workspace = workspace
        check_no_swap(workspace)
        self.manifest = workspace.read_manifest()
        self.checkpoints_manifest = workspace.read_checkpoints_manifest()
        self.settings = Settings.from_dict(self.manifest["settings"])
        data = self.manifest["data"]
        self.classes: list = data["classes"]
        self.data = DataSpec(tuple(data["shape"]), data["dtype"], data["scale"], len(self.classes))
        self.records = sorted(self.checkpoints_manifest["checkpoints"],
                              key=lambda r: (r["shard"], r["slice"]))
        self.pending_shards = _pending_shards(workspace)

    @property
    def feature_names(self) -> Optional[list[str]]:
        return self.manifest["data"].get("feature_names")

    def final_records(self) -> list[dict[str, Any]]:
        """The checkpoint after the last slice of each shard that has one, in shard order.

        A shard without one (emptied by deletions, or waiting to be retrained) is left out.
        """
        last = {}
        for record in self.records:
            if record["slice"] == self.settings.slices - 1 and record["shard"] not in self.pending_shards:
                last[record["shard"]] = record
        if not last:
            raise SisaError("no shard has a trained model: every shard is empty or waiting for retraining")
        return [last[s] for s in sorted(last)]

    def shard_sizes(self) -> list[int]:
        return [entry["rows"] for entry in self.manifest["shards"]]

    def shard_probas(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of every shard model, shape (shards, rows, classes)."""
        X = self._check_rows(X)
        with deterministic_torch(self.settings):
            return np.stack([predict_probas(self.workspace.load_checkpoint(record)["model"], X,
                                            settings=self.settings, data=self.data)
                             for record in self.final_records()])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        sizes = [self.shard_sizes()[r["shard"]] for r in self.final_records()]
        return aggregate(self.settings.aggregation, self.shard_probas(X), sizes)

    def _check_rows(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        shape = self.data.shape
        if X.shape[1:] != shape:
            if X.ndim == 2 and X.shape[1] == int(np.prod(shape)):
                X = X.reshape((len(X),) + shape)
            else:
                raise SisaError(f"rows have shape {X.shape[1:]}, but the model was trained on {shape}")
        if X.dtype.kind not in "iuf" or not np.all(np.isfinite(X)):
            raise SisaError("features must be finite numbers")
        return np.array(X, copy=True, order="C")  # torch wants writable memory

    def test_rows(self) -> ShardRows:
        test = self.manifest.get("test")
        if not test:
            raise SisaError("this workspace holds no test data; train with --test-data or evaluate "
                            "with predict")
        return self.workspace.read_data_file(test["file"], test["sha256"], self.data.shape, self.data.dtype)

    def evaluate(self, probas: Optional[np.ndarray] = None) -> dict[str, Any]:
        """Test accuracy of the ensemble and of each shard model (``probas``: the shard
        models' test probabilities when already computed, in final_records order)."""
        rows = self.test_rows()
        probas = self.shard_probas(rows.X) if probas is None else probas
        sizes = [self.shard_sizes()[r["shard"]] for r in self.final_records()]
        ensemble = aggregate(self.settings.aggregation, probas, sizes)
        return {
            "accuracy": float(np.mean(ensemble.argmax(1) == rows.label)),
            "shard_accuracy": [float(np.mean(p.argmax(1) == rows.label)) for p in probas],
            "n_test": int(len(rows.label)),
            "shards_used": [r["shard"] for r in self.final_records()],
            "aggregation": self.settings.aggregation,
        }

    def status(self) -> dict[str, Any]:
        """Settings, shard and slice sizes, and every checkpoint with whether it still matches."""
        checkpoints = []
        for record in self.records:
            actual = sha256_file(self.workspace.checkpoints_dir / record["file"])
            checkpoints.append({"shard": record["shard"], "slice": record["slice"],
                                "file": record["file"], "sha256": record["sha256"],
                                "samples": record["samples"], "ok": actual == record["sha256"],
                                "problem": None if actual == record["sha256"] else
                                ("missing or unreadable" if actual is None else "sha256 mismatch")})
        shard_files = []
        for entry in self.manifest["shards"]:
            ok = sha256_file(self.workspace.shards_dir / entry["file"]) == entry["sha256"]
            shard_files.append({"shard": entry["shard"], "file": entry["file"], "ok": ok})
        data = self.manifest["data"]
        recorded = self.checkpoints_manifest.get("environment") or {}
        deletions = {"deleted_ids": 0, "pending": 0}
        from sisa.workspace.ledger import read_counts

        counts = read_counts(self.workspace.ledger_path)
        deletions = {"deleted_ids": counts["deleted_ids"], "pending": counts["pending"] + counts["retrained"]}
        return {
            "deletions": deletions,
            "left_out_shards": sorted(self.pending_shards),
            "environment_differences": environment_differences(recorded, self.settings),
            "workdir": str(self.workspace.root),
            "settings": self.settings.to_dict(),
            "data": {k: data[k] for k in ("spec", "shape", "id_kind", "n_train", "n_test")},
            "shards": self.settings.shards,
            "slices": self.settings.slices,
            "n_train": data["n_train"],
            "samples_per_shard": [e["rows"] for e in self.manifest["shards"]],
            "samples_per_slice": [e["slice_rows"] for e in self.manifest["shards"]],
            "environment": self.checkpoints_manifest.get("environment"),
            "shard_files": shard_files,
            "checkpoints": checkpoints,
            "ok": all(c["ok"] for c in checkpoints) and all(f["ok"] for f in shard_files),
        }


def _pending_shards(workspace: Workspace) -> set[int]:
    """Shards with deletions recorded but not committed: their checkpoints may have seen
    deleted rows, so they are never used until retrained."""
    from sisa.workspace.ledger import read_pending

    return {shard for shard, _ in read_pending(workspace.ledger_path).values() if shard >= 0}


def environment_differences(recorded: dict[str, Any], settings: Settings) -> list[str]:
    """How this machine's numerics differ from those the checkpoints were trained under.

    Any difference means a retrain here would not reproduce the checkpoints bit for bit.
    """
    import torch

    if settings.device == "cuda" and not torch.cuda.is_available():
        return ["device: the checkpoints were trained on cuda, and torch sees no CUDA device here"]
    current = numerics_environment(settings)
    return [f"{key}: trained under {recorded.get(key)!r}, this machine has {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]
