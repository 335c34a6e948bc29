"""A trained workspace as a predictor: shard models, aggregation, evaluation and status."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from sisa.aggregation import aggregate
from sisa.errors import SisaError
from sisa.models import check_source
from sisa.settings import Settings
from sisa.training.jobs import DataSpec
from sisa.training.numerics import deterministic_torch
from sisa.training.slices import predict_probas
from sisa.workspace.files import Workspace, checked_data
from sisa.workspace.manifest import CheckpointRecord, DataFile, by_position
from sisa.workspace.rows import ShardRows, parquet_batches

EVAL_BATCH_ROWS = 65536
"""Test rows :meth:`Ensemble.evaluate` scores at a time."""


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
        self.manifest = workspace.manifest()
        self.checkpoints = workspace.checkpoints()
        self.settings = self.manifest.settings
        self.classes: list = list(self.manifest.data.classes)
        self.data = DataSpec.from_info(self.manifest.data)
        self.records = by_position(self.checkpoints.checkpoints)
        self.pending_shards = _pending_shards(workspace)

    @property
    def feature_names(self) -> Optional[list[str]]:
        names = self.manifest.data.feature_names
        return None if names is None else list(names)

    def final_records(self) -> list[CheckpointRecord]:
        """The checkpoint after the last slice of each shard that has one, in shard order.

        A shard without one (emptied by deletions, or waiting to be retrained) is left out.
        """
        last = {}
        for record in self.records:
            if record.slice == self.manifest.n_slices - 1 and record.shard not in self.pending_shards:
                last[record.shard] = record
        if not last:
            raise SisaError("no shard has a trained model: every shard is empty or waiting for retraining")
        return [last[s] for s in sorted(last)]

    def shard_sizes(self) -> list[int]:
        return [entry.rows for entry in self.manifest.shards]

    def shard_probas(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of every shard model, shape (shards, rows, classes)."""
        X = check_rows(X, self.data.shape)
        check_source(self.settings.model, self.manifest.model_source)
        with deterministic_torch(self.settings):
            weights = [self.workspace.load_weights(record) for record in self.final_records()]
            return stacked_probas(weights, X, settings=self.settings, data=self.data)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        sizes = [self.shard_sizes()[r.shard] for r in self.final_records()]
        return aggregate(self.settings.aggregation, self.shard_probas(X), sizes)

    def test_rows(self) -> ShardRows:
        """The test rows, all at once (:meth:`evaluate` reads them a batch at a time)."""
        test = self._test_file()
        return self.workspace.read_data_file(test.file, test.sha256, self.data.shape, self.data.dtype)

    def _test_file(self) -> DataFile:
        if not self.manifest.test:
            raise SisaError("this workspace holds no test data; train with --test-data or evaluate "
                            "with predict")
        return self.manifest.test

    def evaluate(self, *, batch_rows: int = EVAL_BATCH_ROWS) -> dict[str, Any]:
        """Test accuracy of the ensemble and of each shard model. The test rows are read
        ``batch_rows`` at a time, so memory holds a batch's class probabilities of every shard,
        never the test set's times the shards."""
        records = self.final_records()
        check_source(self.settings.model, self.manifest.model_source)
        sizes = [self.shard_sizes()[r.shard] for r in records]
        n, right, shard_right = 0, 0, np.zeros(len(records), dtype=np.int64)
        with deterministic_torch(self.settings):
            weights = [self.workspace.load_weights(record) for record in records]
            test = self._test_file()
            data = checked_data(self.workspace.read_data_bytes(test.file), test.sha256,
                                self.workspace.shards_dir / test.file)
            for rows in parquet_batches(data, self.data.shape, self.data.dtype, batch_rows):
                # predict_probas copies each batch it scores
                probas = stacked_probas(weights, rows.X, settings=self.settings, data=self.data)
                ensemble = aggregate(self.settings.aggregation, probas, sizes)
                n += len(rows.label)
                right += int(np.count_nonzero(ensemble.argmax(1) == rows.label))
                shard_right += np.count_nonzero(probas.argmax(2) == rows.label, axis=1)
        if n == 0:
            raise SisaError("this workspace's test file holds no rows")
        return {
            "accuracy": right / n,
            "shard_accuracy": [int(k) / n for k in shard_right],
            "n_test": n,
            "shards_used": [r.shard for r in records],
            "aggregation": self.settings.aggregation,
        }


def check_rows(X: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Rows ``X`` as the models take them: shaped ``shape`` (flat rows of as many values are
    reshaped), finite numbers, in fresh writable memory. Shared by :class:`Ensemble` and the
    exported bundle (:mod:`sisa.ops.bundle`), so both accept and refuse the same rows."""
    X = np.asarray(X)
    if X.dtype.kind == "b":  # trained as 0.0 and 1.0 (arrays of bools are stored as float32)
        X = X.astype(np.float32)
    if X.shape[1:] != shape:
        if X.ndim == 2 and X.shape[1] == int(np.prod(shape)):
            X = X.reshape((len(X),) + shape)
        else:
            raise SisaError(f"rows have shape {X.shape[1:]}, but the model was trained on {shape}")
    if X.dtype.kind not in "iuf" or not np.all(np.isfinite(X)):
        raise SisaError("features must be finite numbers")
    return np.array(X, copy=True, order="C")  # torch wants writable memory


def stacked_probas(weights: Sequence[dict[str, Any]], X: np.ndarray, *, settings: Settings,
                   data: DataSpec) -> np.ndarray:
    """Class probabilities of each model in ``weights`` on rows ``X``, shape (models, rows,
    classes): what aggregation takes, computed the same way wherever the weights come from."""
    return np.stack([predict_probas(w, X, settings=settings, data=data) for w in weights])


def _pending_shards(workspace: Workspace) -> set[int]:
    """Shards with deletions recorded but not committed: their checkpoints may have seen
    deleted rows, so they are never used until retrained."""
    from sisa.workspace.ledger import read_pending

    return {shard for shard, _ in read_pending(workspace.ledger_path).values() if shard >= 0}


