"""The scikit-learn estimator: :class:`SISAClassifier`, and arrays as a :class:`Dataset`."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from sisa.data.sources import Dataset, Table
from sisa.errors import SisaError
from sisa.ops.ensemble import Ensemble
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import make_executor
from sisa.training.jobs import Progress
from sisa.workspace.files import Workspace

SETTINGS = tuple(field.name for field in dataclasses.fields(Settings))
"""The estimator's parameters that are training settings (the rest say where and how it runs)."""


def array_dataset(X: Any, y: Any, ids: Any = None, feature_names: Optional[Sequence[str]] = None) -> Dataset:
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
    if ids.ndim != 1 or len(ids) != len(X):
        raise SisaError(f"ids must be one per row: X has {len(X)} rows, ids has shape {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise SisaError("ids must be unique: two rows share an id")
    dtype = X.dtype if X.dtype.kind in "uf" and X.dtype != np.float16 else np.float32
    X = X.astype(dtype)
    check_features(X, "X")
    classes = sorted({v.item() if hasattr(v, "item") else v for v in y})
    if len({type(c) for c in classes}) > 1:
        raise SisaError("y mixes numbers and text; labels must all be integers or all text")
    names = None if feature_names is None else [str(name) for name in feature_names]
    return Dataset("array", Table(ids, X, y), None, tuple(X.shape[1:]), classes, feature_names=names)


class SISAClassifier(ClassifierMixin, BaseEstimator):
    """A SISA ensemble as a scikit-learn classifier: it works in Pipeline, GridSearchCV,
    cross_val_score and clone, and forgets training rows exactly with :meth:`delete`.

    The parameters are those of :class:`sisa.settings.Settings`, checked by ``fit`` (scikit-learn
    keeps ``__init__`` to storing them), and:

    Args:
        workdir: the workspace folder that ``fit`` trains into (``shards/``, ``checkpoints/``,
            the deletion ledger). ``None`` (the default): a new temporary folder per fit, removed
            when the estimator is garbage-collected, or kept with ``keep_workdir=True``
            (``workdir_`` names it). A folder that already holds a workspace this estimator did
            not train is replaced only by ``fit(..., force=True)``; its deletion ledger carries
            over, so ids deleted there are left out of the new training.
        executor: ``local`` (in this process, the default), ``ray`` or ``auto``.
        keep_workdir: keep the temporary workspace of ``workdir=None``.

    Fitted attributes: ``classes_``, ``n_features_in_`` (``feature_names_in_`` when fitted on a
    table with column names), ``workdir_`` and ``summary_`` (what training reported).

    Pickling a fitted estimator keeps the workspace's path; one with a temporary workspace
    carries its shard models' weights instead (never training rows), so the copy predicts after
    the original and its folder are gone; the copy cannot delete: the workspace is the
    original's.

    >>> from sisa.data.sources import load
    >>> digits = load("digits")
    >>> clf = SISAClassifier(shards=2, slices=2, epochs=10).fit(digits)
    >>> clf.predict_proba(digits.test.X).shape, clf.score(digits.test.X, digits.test.y) > 0.9
    ((346, 10), True)
    """

    def __init__(self, workdir: Optional[str | Path] = None, *, shards: int = 5, slices: int = 4,
                 model: str = "mlp", epochs: int = 30, batch_size: int = 32, lr: float = 1e-3,
                 optimizer: str = "adam", weight_decay: float = 0.0, scheduler: str = "none",
                 epoch_schedule: str = "recalibrated", seed: int = 0, threads: int = 1, device: str = "cpu",
                 aggregation: str = "mean-proba", vectorise: int = 1, executor: str = "local",
                 keep_workdir: bool = False) -> None:
        self.workdir = workdir
        self.shards = shards
        self.slices = slices
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.scheduler = scheduler
        self.epoch_schedule = epoch_schedule
        self.seed = seed
        self.threads = threads
        self.device = device
        self.aggregation = aggregation
        self.vectorise = vectorise
        self.executor = executor
        self.keep_workdir = keep_workdir

    @property
    def settings(self) -> Settings:
        """The training settings of the parameters (checked: a bad value raises SisaError)."""
        return Settings(**{name: _plain(getattr(self, name)) for name in SETTINGS})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = self.device == "cuda"
        return tags

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, X: Dataset | Any, y: Optional[Sequence] = None, *, ids: Optional[Sequence] = None,
            force: bool = False, progress: Optional[Progress] = None) -> "SISAClassifier":
        """Train on arrays ``X``, ``y`` (ids: one per row, default the row numbers), or on a
        :class:`sisa.data.sources.Dataset` (its train split; ``y`` None). Fitting again trains
        a new workspace. Returns the estimator."""
        settings = self.settings
        if self.executor not in ("local", "ray", "auto"):
            raise SisaError(f"unknown executor {self.executor!r}; choose one of: local, ray, auto")
        if isinstance(X, Dataset):
            if y is not None:
                raise SisaError("fit(dataset) takes its labels from the dataset; pass y=None")
            dataset = X
            self.n_features_in_ = int(dataset.shape[0]) if dataset.shape else 1  # X.shape[1], as arrays'
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            X, y = validate_data(self, X, y, allow_nd=True, dtype="numeric", y_numeric=False)
            check_classification_targets(y)
            names = getattr(self, "feature_names_in_", None)
            dataset = array_dataset(X, y, ids, None if names is None else list(names))
            if len(X) < settings.shards:
                raise SisaError(f"n_samples={len(X)} is fewer than shards={settings.shards}: every shard "
                                f"trains on rows of its own; use fewer shards")
        workdir = self._workdir_for_fit(force)
        if ids is None and not isinstance(X, Dataset):
            _refuse_row_numbers_against_a_ledger(workdir)
        try:
            self.summary_ = train_workspace(workdir, dataset, settings, force=force or self._owns(workdir),
                                            executor=make_executor(self.executor), progress=progress,
                                            announce=_warn_small_slices)
        except BaseException:
            if self.workdir is None:
                _remove_temporary(workdir)
            raise
        self._take(workdir)
        if self.summary_.get("excluded_deleted"):
            warnings.warn(f"{self.summary_['excluded_deleted']} row(s) were left out: their ids were deleted "
                          f"earlier in {workdir} (its deletion ledger carries over)", stacklevel=2)
        return self._opened(Ensemble(Workspace(workdir)))

    def _workdir_for_fit(self, force: bool) -> Path:
        if self.workdir is None:
            return Path(tempfile.mkdtemp(prefix="sisa-"))
        path = Path(self.workdir).absolute()  # a later chdir must not point it at another workspace
        if Workspace(path).manifest_path.exists() and not (force or self._owns(path)):
            raise SisaError(f"workdir {path} already holds a sisa workspace that this estimator did not train; "
                            f"fit(..., force=True) replaces it (ids deleted there stay deleted), or leave "
                            f"workdir=None for a temporary workspace per fit (what GridSearchCV and "
                            f"cross_val_score need, since they fit many copies)")
        return path

    def _owns(self, path: Path) -> bool:
        """Whether ``fit`` trained the workspace at ``path`` (``load`` does not make it ours)."""
        mine = getattr(self, "_trained", None)
        return mine is not None and mine.resolve() == path.resolve()

    def _take(self, workdir: Path) -> None:
        """Record the new workspace, removing the temporary one of an earlier fit."""
        finalizer = self.__dict__.pop("_finalizer", None)
        if finalizer is not None and self.workdir_ != workdir:
            finalizer()
        self.workdir_ = workdir
        self._trained = workdir
        self._snapshot = None
        if self.workdir is None and not self.keep_workdir:
            self._finalizer = weakref.finalize(self, _remove_temporary, workdir)

    @classmethod
    def load(cls, workdir: str | Path) -> "SISAClassifier":
        """The fitted estimator of an existing workspace (its settings become the parameters)."""
        ensemble = Ensemble(Workspace(workdir))
        clf = cls(workdir, **ensemble.settings.to_dict())
        clf.workdir_ = Path(workdir).absolute()
        shape = ensemble.data.shape
        clf.n_features_in_ = int(shape[0]) if shape else 1
        if ensemble.feature_names is not None:  # a table's columns: predict checks them by name
            clf.feature_names_in_ = np.asarray(ensemble.feature_names, dtype=object)
        return clf._opened(ensemble)

    def _opened(self, ensemble: Ensemble) -> "SISAClassifier":
        self.classes_ = np.asarray(ensemble.classes)
        return self

    # -- predicting ----------------------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "workdir_")

    def _predictor(self):
        check_is_fitted(self)
        if getattr(self, "_snapshot", None) is not None:
            return self._snapshot
        # read afresh each time: another process (sisa delete, add) may have changed the models
        return Ensemble(Workspace(self.workdir_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Aggregated class probabilities, shape (rows, classes), columns in ``classes_`` order."""
        predictor = self._predictor()
        X = validate_data(self, X, reset=False, allow_nd=True, dtype="numeric")
        return predictor.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    # -- the workspace's lifecycle -------------------------------------------------------------

    def _workspace(self) -> Workspace:
        check_is_fitted(self)
        if getattr(self, "_snapshot", None) is not None:
            raise SisaError("this estimator is a copy (unpickled) of one that trained in a temporary workspace, "
                            "which stays with the original: the copy predicts but cannot change the models; "
                            "fit with workdir=... to keep a workspace that deletions can reach")
        return Workspace(self.workdir_)

    def _reopened(self, result: dict[str, Any]) -> dict[str, Any]:
        self._opened(Ensemble(Workspace(self.workdir_)))
        return result

    def delete(self, ids: Sequence, *, ignore_missing: bool = False, reference: Optional[str] = None,
               progress: Optional[Progress] = None) -> dict[str, Any]:
        """Forget training rows exactly (as ``sisa delete``); returns what was done, with the
        ledger's ``request`` number for its receipt."""
        from sisa.ops.delete import delete

        workspace = self._workspace()
        return self._reopened(delete(workspace, list(ids), ignore_missing=ignore_missing,
                                     executor=make_executor(self.executor), progress=progress,
                                     reference=reference))

    def add(self, X: Dataset | Table | Any, y: Optional[Sequence] = None, *, ids: Optional[Sequence] = None,
            slices: int = 1, epochs: Optional[int] = None, progress: Optional[Progress] = None) -> dict[str, Any]:
        """Take in new rows (as ``sisa add``): a Dataset's training rows, a Table, or arrays with
        ids that are new to the workspace; they become ``slices`` new slices of every shard."""
        from sisa.ops.lifecycle import add_rows

        workspace = self._workspace()
        if isinstance(X, Dataset):
            batch = X.train
        elif isinstance(X, Table):
            batch = X
        else:
            if ids is None:
                raise SisaError("add needs the new rows' ids (ids=...), new to the workspace")
            batch = array_dataset(X, y, ids).train
        return self._reopened(add_rows(workspace, batch, slices=slices, epochs=epochs,
                                       executor=make_executor(self.executor), progress=progress))

    def revert(self, to: int) -> dict[str, Any]:
        """Take out every row added after version ``to`` (as ``sisa revert``)."""
        from sisa.ops.lifecycle import revert

        return self._reopened(revert(self._workspace(), to))

    def history(self) -> list[dict[str, Any]]:
        """Every version and deletion request, oldest first (as ``sisa history --json``)."""
        from sisa.ops.history import history

        return history(self._workspace())["events"]

    def receipt(self, request: int, *, ids_as: str = "plain") -> dict[str, Any]:
        """The deletion receipt of ``request`` (as ``sisa receipt``)."""
        from sisa.ops.history import receipt

        return receipt(self._workspace(), request, ids_as=ids_as)

    # -- pickling ------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # object's is the instance's own __dict__
        state.pop("_finalizer", None)
        if "_finalizer" in self.__dict__ and state.get("_snapshot") is None:
            state["_snapshot"] = _snapshot(self._predictor())
        return state


class SmallSlicesWarning(UserWarning):
    """Slices hold fewer rows than one batch (``sisa train`` prints the same warning)."""


def _warn_small_slices(plan: dict[str, Any]) -> None:
    if plan["small"]:
        warnings.warn(plan["small"], SmallSlicesWarning, stacklevel=5)  # at the caller of fit


def _snapshot(ensemble: Ensemble):
    """The shard models of a temporary workspace, held in memory (see ``SISAClassifier``)."""
    from sisa.ops.bundle import Bundle

    return Bundle.from_ensemble(ensemble)


def _refuse_row_numbers_against_a_ledger(workdir: Path) -> None:
    """Row numbers are not people: refitting a workspace whose ledger holds deleted ids with
    the default ids (0, 1, ...) would leave out whichever new rows carry those numbers."""
    from sisa.workspace.ledger import read_ledger

    deleted = read_ledger(Workspace(workdir).ledger_path)[0]
    if deleted:
        raise SisaError(f"{workdir}'s deletion ledger holds {len(deleted)} deleted id(s), which fit leaves out of "
                        f"the new training; with no ids given, the ids would be row numbers, which name other "
                        f"people in new data: pass ids=... (the rows' own ids), or leave workdir=None")


def _plain(value: Any) -> Any:
    """numpy scalars (as GridSearchCV's grids give them) as Python's, which Settings checks."""
    return value.item() if isinstance(value, np.generic) else value


def _remove_temporary(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
