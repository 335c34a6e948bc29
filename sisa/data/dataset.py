"""What every data source produces: rows with stable ids (:class:`Table`), a loaded source
(:class:`Dataset`), and the checks on features and labels that sources share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional, Sequence

import numpy as np

from sisa.errors import SisaError

DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Table:
    """Rows: ``ids`` (int64 or str objects), ``X`` (rows, *shape), ``y`` raw labels or None."""

    ids: np.ndarray
    X: np.ndarray
    y: Optional[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask_or_index: np.ndarray) -> "Table":
        return Table(self.ids[mask_or_index], self.X[mask_or_index],
                     None if self.y is None else self.y[mask_or_index])


@dataclass
class Dataset:
    """A loaded source: training rows, optional test rows, and what is needed to read them.

    ``classes`` lists the label values; models predict indices into it. ``scale`` multiplies
    the stored features at training and prediction time.
    """

    spec: str
    train: Table
    test: Optional[Table]
    shape: tuple[int, ...]
    classes: list
    scale: float = 1.0
    feature_names: Optional[list[str]] = None
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def id_kind(self) -> str:
        return "int" if self.train.ids.dtype.kind in "iu" else "str"

    def label_index(self, labels: np.ndarray, what: str) -> np.ndarray:
        """Map raw labels to class indices; labels outside ``classes`` are an error."""
        if type(labels) is np.ndarray and labels.ndim == 1 and labels.dtype.kind in "iu" \
                and labels.dtype != np.uint64 and self.classes and len(set(self.classes)) == len(self.classes) \
                and all(type(c) is int and -2**63 <= c < 2**63 for c in self.classes):
            # the same lookups as the dict's below, as array operations
            classes = np.asarray(self.classes, dtype=np.int64)
            order = np.argsort(classes, kind="stable")
            at = np.minimum(np.searchsorted(classes[order], labels), len(classes) - 1)
            found = classes[order][at] == labels
            if found.all():
                return order[at].astype(np.int64)
            self._unknown_label(labels[~found][0].item(), what)
        lookup = {value: i for i, value in enumerate(self.classes)}
        values = _plain_values(labels)
        try:
            if values is not None:  # the same lookups, without a Python call per row
                return np.fromiter(map(lookup.__getitem__, values), dtype=np.int64, count=len(values))
            return np.fromiter((lookup[plain(v)] for v in labels), dtype=np.int64, count=len(labels))
        except KeyError as exc:
            self._unknown_label(exc.args[0], what)

    def _unknown_label(self, label: Any, what: str) -> NoReturn:
        hint = ""
        if str(label) in {str(c) for c in self.classes}:
            hint = (f"; it is {type(label).__name__} where the training's labels are "
                    f"{type(self.classes[0]).__name__}: give labels of the same kind")
        raise SisaError(f"{what} has label {label!r}, which the training data does not have "
                        f"(classes: {preview(self.classes)}){hint}")


@dataclass(frozen=True)
class LoadOptions:
    id_col: str = "id"
    label_col: str = "label"
    test_fraction: float = DEFAULT_TEST_FRACTION
    image_size: Optional[tuple[int, int]] = None
    """(H, W) that ``imagefolder:`` resizes images to; None: the first image's size."""
    stream: bool = False
    """Leave a table's features in its file (:class:`~sisa.data.streaming.StreamedFeatures`)."""


def check_features(X: np.ndarray, what: str) -> None:
    """Features must be finite in float32, the type models train in (3.4e39 is finite as
    float64 and infinite as float32)."""
    if X.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = int(np.count_nonzero(~(np.abs(X) <= np.finfo(np.float32).max)))
        if bad:
            raise SisaError(f"{what} has {bad} NaN or infinite values, or values beyond float32's range "
                            f"(about 3.4e38; models train in float32)")


def integral_labels(values: np.ndarray, what: str) -> np.ndarray:
    """Class labels given as numbers: whole numbers within 2^53 (exact in float64), as int64."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise SisaError(f"{what} holds NaN or infinite labels; labels must be classes (integers or text)")
        if not np.all(values == np.round(values)):
            raise SisaError(f"{what} holds non-integer numbers (continuous targets?); labels must be "
                            f"classes (integers or text)")
        if len(values) and np.abs(values).max() > 2**53:
            raise SisaError(f"{what} holds labels beyond 2^53 in magnitude ({np.abs(values).max():g}); "
                            f"labels must be classes (integers or text)")
    return values.astype(np.int64)


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _plain_values(labels: Any) -> Optional[list]:
    """``[plain(v) for v in labels]`` built without a Python call per row, or None where that
    would take one (labels not a 1-D array or a list, numpy scalars among objects)."""
    if type(labels) is np.ndarray and labels.ndim == 1:  # not a subclass: a masked array's tolist differs
        values = labels.tolist()  # a numpy dtype's items as item() gives them, objects as they are
        if labels.dtype != object:
            return values
    elif type(labels) is list:
        values = labels
    else:
        return None
    if any(issubclass(t, np.generic) for t in set(map(type, values))):
        return None
    return values


def preview(values: Sequence[Any], limit: int = 10) -> str:
    """The first ``limit`` values for a message, and how many there are in all."""
    shown = ", ".join(repr(plain(v)) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
