"""Training a workspace, and the scikit-learn-like :class:`SISAClassifier` around it."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from sisa.data import Dataset, Table
from sisa.ensemble import Ensemble
from sisa.errors import SisaError
from sisa.executors import Executor, make_executor
from sisa.lock import workspace_lock
from sisa.models import build_model
from sisa.partition import assign, check_sizes, shard_order
from sisa.settings import Settings
from sisa.store import CHECKPOINTS_FORMAT, WORKSPACE_FORMAT, Workspace, id_order, rows_to_parquet
from sisa.training import DataSpec, Progress, ShardJob


def train_workspace(workdir: str | Path, dataset: Dataset, settings: Settings, *,
                    executor: Optional[Executor] = None, force: bool = False,
                    progress: Optional[Progress] = None,
                    source: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Partition ``dataset`` into ``workdir``'s shards, train every shard and record it all.

    Everything that can be wrong with the input is checked before the first file is written,
    so bad input leaves the folder as it was. Returns a summary (seconds, test accuracy...).
    """
    started = time.perf_counter()
    workspace = Workspace(workdir)
    if workspace.root.exists() and not workspace.root.is_dir():
        raise SisaError(f"workdir {workspace.root} is not a folder")
    _refuse_existing(workspace, force)
    train, test = dataset.train, dataset.test
    if train.y is None:
        raise SisaError(f"{dataset.spec} has no labels")
    labels = dataset.label_index(train.y, "training data")
    test_labels = dataset.label_index(test.y, "test data") if test is not None and len(test) else None
    model = build_model(settings.model, dataset.shape, len(dataset.classes))  # shape/model mismatch
    if settings.vectorise > 1:
        from sisa.vectorised import check_vectorisable

        check_vectorisable(model)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SisaError("--device cuda was asked for, but torch sees no CUDA device")
    assignment = assign(train.ids, seed=settings.seed, shards=settings.shards, slices=settings.slices)
    counts = check_sizes(assignment, shards=settings.shards, slices=settings.slices)
    dtype = str(train.X.dtype)

    with workspace_lock(workspace.root, exclusive=True):
        _refuse_existing(workspace, force)  # again, now that no other process can be writing
        records, summary_extra = _write_and_train(
            workspace, dataset, settings, assignment, counts, labels, test_labels, dtype,
            executor=executor, progress=progress, source=source)
    summary = {"workdir": str(workspace.root), "shards": settings.shards, "slices": settings.slices,
               "model": settings.model, "n_train": int(len(train)),
               # a vectorised group's slice seconds count once, not once per shard trained in it
               "train_seconds": round(sum(r["seconds"] / r.get("shared_by", 1) for r in records), 3),
               **summary_extra}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _refuse_existing(workspace: Workspace, force: bool) -> None:
    if workspace.exists() and not force:
        raise SisaError(f"{workspace.root} already holds a sisa workspace ({workspace.manifest_path}); "
                        f"pass --force to replace it")


def _write_and_train(workspace, dataset, settings, assignment, counts, labels, test_labels, dtype, *,
                     executor, progress, source):
    train, test = dataset.train, dataset.test
    _clear(workspace)
    try:
        shard_entries = []
        for s in range(settings.shards):
            rows = shard_order(assignment, s)
            name, sha = workspace.write_shard_file(s, rows_to_parquet(
                train.ids[rows], s, assignment.slice[rows], labels[rows], train.X[rows]))
            shard_entries.append({"shard": s, "file": name, "sha256": sha, "rows": int(len(rows)),
                                  "slice_rows": counts[s].tolist()})
        test_entry = None
        if test_labels is not None:
            order = id_order(test.ids)
            sha = workspace.write_data_file("test.parquet", rows_to_parquet(
                test.ids[order], None, None, test_labels[order], test.X[order].astype(dtype)))
            test_entry = {"file": "test.parquet", "sha256": sha, "rows": int(len(test))}

        spec = DataSpec(tuple(dataset.shape), dtype, float(dataset.scale), len(dataset.classes))
        evaluate = (test_entry["file"], test_entry["sha256"]) if test_entry else None
        jobs = [ShardJob(str(workspace.root.resolve()), e["shard"], settings, spec, e["file"], e["sha256"],
                         slice_rows=tuple(e["slice_rows"]), evaluate=evaluate)
                for e in shard_entries if e["rows"]]
        records, environments, test_probas = [], [], {}
        for result in (executor or make_executor("local")).run(jobs, progress):
            records.extend(result.checkpoints)
            environments.append(result.environment)
            test_probas[result.shard] = result.test_probas
        if any(env != environments[0] for env in environments):
            raise SisaError(f"shards were trained under different numerics environments: {environments}")
        records.sort(key=lambda r: (r["shard"], r["slice"]))
        workspace.write_json(workspace.checkpoints_manifest_path, {
            "format": CHECKPOINTS_FORMAT, "environment": environments[0], "checkpoints": records})
        manifest = {
            "format": WORKSPACE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": settings.to_dict(),
            "data": {
                "spec": dataset.spec, "shape": list(dataset.shape), "dtype": dtype,
                "scale": float(dataset.scale), "classes": list(dataset.classes),
                "feature_names": dataset.feature_names, "id_kind": dataset.id_kind,
                "n_train": int(len(train)), "n_test": int(len(test)) if test_labels is not None else 0,
                # with the ledger, these show whether rows went missing without a deletion
                "n_train_initial": int(len(train)),
                "n_test_initial": int(len(test)) if test_labels is not None else 0,
                **(source or {}),
            },
            "shards": shard_entries,
            "test": test_entry,
        }
        workspace.write_json(workspace.manifest_path, manifest)  # the commit point
    except BaseException:
        _clear(workspace)
        raise
    if test_entry is None:
        return records, {}
    ensemble = Ensemble(workspace)
    probas = np.stack([test_probas[r["shard"]] for r in ensemble.final_records()])
    return records, ensemble.evaluate(probas)


def _clear(workspace: Workspace) -> None:
    """Remove what sisa keeps in a workspace (manifest first), leaving other files alone."""
    for path in (workspace.manifest_path, workspace.checkpoints_manifest_path):
        path.unlink(missing_ok=True)
    for suffix in ("", "-wal", "-shm"):  # the ledger belongs to the workspace it replaces
        Path(f"{workspace.ledger_path}{suffix}").unlink(missing_ok=True)
    if workspace.shards_dir.is_dir():
        for path in list(workspace.shards_dir.glob("shard-*.parquet")) + \
                list(workspace.shards_dir.glob("test*.parquet")) + list(workspace.shards_dir.glob(".*.tmp-*")):
            path.unlink()
    if workspace.checkpoints_dir.is_dir():
        for path in workspace.checkpoints_dir.glob("shard-*"):
            if path.is_dir():
                shutil.rmtree(path)


class SISAClassifier:
    """SISA ensemble classifier backed by a workspace folder.

    Settings are those of :class:`sisa.settings.Settings`; ``fit`` partitions the rows into
    ``workdir/shards``, trains every shard slice by slice into ``workdir/checkpoints`` and
    returns ``self``.

    >>> import tempfile
    >>> from sisa.data import load
    >>> digits = load("digits")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     clf = SISAClassifier(tmp, shards=2, slices=2, epochs=10).fit(digits)
    ...     clf.predict_proba(digits.test.X).shape, clf.score(digits.test.X, digits.test.y) > 0.9
    ((346, 10), True)
    """

    def __init__(self, workdir: str | Path = ".", *, executor: str = "local", **settings: Any) -> None:
        self.workdir = Path(workdir)
        self.executor = executor
        self.settings = Settings(**settings)

    def fit(self, X: Dataset | np.ndarray, y: Optional[Sequence] = None, *,
            ids: Optional[Sequence] = None, force: bool = False,
            progress: Optional[Progress] = None) -> "SISAClassifier":
        """Train on a :class:`sisa.data.Dataset`, or on arrays ``X``, ``y`` with optional ids
        (default: row numbers)."""
        if isinstance(X, Dataset):
            dataset = X
        else:
            X = np.asarray(X)
            if y is None:
                raise SisaError("fit needs labels y")
            y = np.asarray(y)
            if len(X) != len(y):
                raise SisaError(f"X has {len(X)} rows but y has {len(y)}")
            ids = np.arange(len(X), dtype=np.int64) if ids is None else np.asarray(ids)
            if len(ids) != len(X) or len(np.unique(ids)) != len(ids):
                raise SisaError("ids must be unique, one per row")
            dtype = X.dtype if X.dtype.kind in "uf" else np.float32
            dataset = Dataset("array", Table(ids, X.astype(dtype), y), None, tuple(X.shape[1:]),
                              sorted({v.item() if hasattr(v, "item") else v for v in y}))
        self.dataset_ = dataset
        self.summary_ = train_workspace(self.workdir, dataset, self.settings, force=force,
                                        executor=make_executor(self.executor), progress=progress)
        return self._loaded()

    @classmethod
    def load(cls, workdir: str | Path = ".") -> "SISAClassifier":
        """The trained classifier of an existing workspace."""
        ensemble = Ensemble(Workspace(workdir))
        clf = cls(workdir, **ensemble.settings.to_dict())
        return clf._loaded(ensemble)

    def _loaded(self, ensemble: Optional[Ensemble] = None) -> "SISAClassifier":
        self.ensemble_ = ensemble or Ensemble(Workspace(self.workdir))
        self.classes_ = np.asarray(self.ensemble_.classes)
        return self

    def _fitted(self) -> Ensemble:
        if not hasattr(self, "ensemble_"):
            raise SisaError("this SISAClassifier is not fitted; call fit or SISAClassifier.load")
        return self.ensemble_

    def delete(self, ids: Sequence, *, ignore_missing: bool = False,
               progress: Optional[Progress] = None) -> dict[str, Any]:
        """Forget training rows exactly (as ``sisa delete``); returns what was done."""
        from sisa.unlearn import delete

        self._fitted()
        result = delete(Workspace(self.workdir), list(ids), ignore_missing=ignore_missing,
                        executor=make_executor(self.executor), progress=progress)
        self._loaded(Ensemble(Workspace(self.workdir)))
        return result

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Aggregated class probabilities, shape (rows, classes), columns in ``classes_`` order."""
        return self._fitted().predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X: np.ndarray, y: Sequence) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))
