"""The scikit-learn-style facade: SISAClassifier and array input."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from sisa.data.sources import Dataset, Table
from sisa.errors import SisaError
from sisa.ops.ensemble import Ensemble
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import make_executor
from sisa.training.jobs import Progress
from sisa.workspace.files import Workspace


def array_dataset(X: Any, y: Any, ids: Any = None) -> Dataset:
    """Arrays as a :class:`Dataset`, with the checks and messages the CLI gives a table."""
    from sisa.data.sources import check_features, integral_labels

    X = np.asarray(X)
    if X.ndim < 2:
        raise SisaError(f"X must have one row per sample and at least one feature (2-D or more), "
                        f"got shape {X.shape}; reshape a single feature with X.reshape(-1, 1)")
    if X.dtype.kind not in "uifb":
        raise SisaError(f"X must be numeric, got dtype {X.dtype}")
    if y is None:
        raise SisaError("fit needs labels y")
    y = np.asarray(y)
    if y.ndim != 1:
        raise SisaError(f"y must be one label per row (1-D), got shape {y.shape}")
    if len(X) != len(y):
        raise SisaError(f"X has {len(X)} rows but y has {len(y)}")
    if y.dtype.kind in "fc":
        y = integral_labels(y.real if y.dtype.kind == "c" else y, "y")
    elif y.dtype.kind == "O" and any(isinstance(v, float) for v in y.tolist()):
        raise SisaError("y mixes numbers and other values; labels must be classes (integers or text)")
    elif y.dtype.kind not in "iubUO":
        raise SisaError(f"y must hold classes (integers or text), got dtype {y.dtype}")
    ids = np.arange(len(X), dtype=np.int64) if ids is None else np.asarray(ids)
    if ids.dtype.kind == "U":
        ids = ids.astype(object)
    if len(ids) != len(X) or len(np.unique(ids)) != len(ids):
        raise SisaError("ids must be unique, one per row")
    dtype = X.dtype if X.dtype.kind in "uf" and X.dtype != np.float16 else np.float32
    X = X.astype(dtype)
    check_features(X, "X")
    classes = sorted({v.item() if hasattr(v, "item") else v for v in y})
    if len({type(c) for c in classes}) > 1:
        raise SisaError("y mixes numbers and text; labels must all be integers or all text")
    return Dataset("array", Table(ids, X, y), None, tuple(X.shape[1:]), classes)


class SISAClassifier:
    """SISA ensemble classifier backed by a workspace folder.

    Settings are those of :class:`sisa.settings.Settings`; ``fit`` partitions the rows into
    ``workdir/shards``, trains every shard slice by slice into ``workdir/checkpoints`` and
    returns ``self``.

    >>> import tempfile
    >>> from sisa.data.sources import load
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
        """Train on a :class:`sisa.data.sources.Dataset`, or on arrays ``X``, ``y`` with optional ids
        (default: row numbers)."""
        dataset = X if isinstance(X, Dataset) else array_dataset(X, y, ids)
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

    def delete(self, ids: Sequence, *, ignore_missing: bool = False, reference: Optional[str] = None,
               progress: Optional[Progress] = None) -> dict[str, Any]:
        """Forget training rows exactly (as ``sisa delete``); returns what was done, with the
        ledger's ``request`` number for its receipt."""
        from sisa.ops.delete import delete

        self._fitted()
        result = delete(Workspace(self.workdir), list(ids), ignore_missing=ignore_missing,
                        executor=make_executor(self.executor), progress=progress, reference=reference)
        self._loaded(Ensemble(Workspace(self.workdir)))
        return result

    def add(self, X: Dataset | Table | np.ndarray, y: Optional[Sequence] = None, *, ids: Optional[Sequence] = None,
            slices: int = 1, epochs: Optional[int] = None, progress: Optional[Progress] = None) -> dict[str, Any]:
        """Take in new rows (as ``sisa add``): a Dataset's training rows, a Table, or arrays with
        ids that are new to the workspace; they become ``slices`` new slices of every shard."""
        from sisa.ops.lifecycle import add_rows

        self._fitted()
        if isinstance(X, Dataset):
            batch = X.train
        elif isinstance(X, Table):
            batch = X
        else:
            if ids is None:
                raise SisaError("add needs the new rows' ids (ids=...), new to the workspace")
            batch = array_dataset(X, y, ids).train
        result = add_rows(Workspace(self.workdir), batch, slices=slices, epochs=epochs,
                          executor=make_executor(self.executor), progress=progress)
        self._loaded(Ensemble(Workspace(self.workdir)))
        return result

    def revert(self, to: int) -> dict[str, Any]:
        """Take out every row added after version ``to`` (as ``sisa revert``)."""
        from sisa.ops.lifecycle import revert

        self._fitted()
        result = revert(Workspace(self.workdir), to)
        self._loaded(Ensemble(Workspace(self.workdir)))
        return result

    def history(self) -> list[dict[str, Any]]:
        """Every version and deletion request, oldest first (as ``sisa history --json``)."""
        from sisa.ops.history import history

        return history(Workspace(self.workdir))["events"]

    def receipt(self, request: int, *, ids_as: str = "plain") -> dict[str, Any]:
        """The deletion receipt of ``request`` (as ``sisa receipt``)."""
        from sisa.ops.history import receipt

        return receipt(Workspace(self.workdir), request, ids_as=ids_as)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Aggregated class probabilities, shape (rows, classes), columns in ``classes_`` order."""
        return self._fitted().predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X: np.ndarray, y: Sequence) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))

