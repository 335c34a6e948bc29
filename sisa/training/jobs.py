"""What a shard job is: its data description, rows, settings, and what it returns."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from sisa.settings import Settings
from sisa.workspace.manifest import (
    CheckpointRecord,
    DataInfo,
    ShardData,
    WorkspaceManifest,
)


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch of one slice of one shard: what a progress bar and a loss curve show.

    Never persisted (a checkpoint's record says what it was trained on; this says how the
    training went), so adding a field changes no workspace file.
    """

    shard: int
    slice: int
    epoch: int
    """The epoch within its slice, from 0 (as :func:`derive_seed` numbers it)."""
    loss: float
    """Mean training loss over the epoch's rows, from the losses its steps computed anyway."""
    samples: int
    """Rows the epoch trained on: those of slices 0..slice."""
    seconds: float


@runtime_checkable
class ProgressObserver(Protocol):
    """Watches training as it runs, at finer grain than the per-slice callback: ``planned``
    once per executor run with its jobs (before any trains, so a bar knows its total),
    ``epoch_done`` per finished epoch (as it happens in this process; when a Ray task's result
    comes back otherwise) and ``slice_done`` per checkpoint written. Calling it is
    ``slice_done``, so an executor that knows only the callback still reports slices."""

    def planned(self, jobs: Sequence["ShardJob"], *, concurrent: bool) -> None: ...

    def epoch_done(self, report: EpochReport) -> None: ...

    def slice_done(self, record: CheckpointRecord) -> None: ...

    def __call__(self, record: CheckpointRecord) -> None: ...


Progress = Union[Callable[[CheckpointRecord], None], ProgressObserver]
"""What training reports to: a callback per slice's checkpoint, or a :class:`ProgressObserver`."""


class Observers:
    """Several :data:`Progress` receivers as one :class:`ProgressObserver`; plain callbacks
    hear of slices only. None entries are skipped, so ``Observers(progress)`` works whether
    or not the caller gave one.

    >>> seen = []
    >>> Observers(None, seen.append).slice_done("record")
    >>> seen
    ['record']
    """

    def __init__(self, *receivers: Optional[Progress]) -> None:
        self.receivers = tuple(r for r in receivers if r is not None)

    def planned(self, jobs: Sequence["ShardJob"], *, concurrent: bool) -> None:
        for receiver in self.receivers:
            if isinstance(receiver, ProgressObserver):
                receiver.planned(jobs, concurrent=concurrent)

    def epoch_done(self, report: EpochReport) -> None:
        for receiver in self.receivers:
            if isinstance(receiver, ProgressObserver):
                receiver.epoch_done(report)

    def slice_done(self, record: CheckpointRecord) -> None:
        for receiver in self.receivers:
            if isinstance(receiver, ProgressObserver):
                receiver.slice_done(record)
            else:
                receiver(record)

    __call__ = slice_done


class StepObserver(Protocol):
    """Sees every optimizer step of :func:`train_slice`: ``before_step`` just before the
    optimizer updates the weights, ``after_step`` just after, each with the positions of the
    batch's rows. Amnesiac unlearning logs updates this way."""

    def before_step(self, batch: Any) -> None: ...

    def after_step(self, batch: Any) -> None: ...


class JobFiles(Protocol):
    """What a job reads and writes: a :class:`~sisa.workspace.files.Workspace`, or the
    :class:`~sisa.workspace.carried.CarriedFiles` a job on a Ray worker gets."""

    def read_data_file(self, name: str, sha256: str, shape, dtype: str) -> Any: ...

    def load_checkpoint(self, record: CheckpointRecord, map_location: str = "cpu") -> dict[str, Any]: ...

    def write_checkpoint(self, name: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class DataSpec:
    """How to read stored rows: feature shape and dtype, fixed scale, number of classes."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    n_classes: int

    @classmethod
    def from_info(cls, info: DataInfo) -> "DataSpec":
        return cls(tuple(info.shape), info.dtype, info.scale, len(info.classes))


@dataclass(frozen=True)
class ShardJob:
    """Train ``shard`` of the workspace at ``workdir`` from slice ``from_slice`` to the last.

    ``start`` is the checkpoint record of slice ``from_slice - 1`` (None from slice 0).
    """

    workdir: str
    shard: int
    settings: Settings
    data: DataSpec
    shard_files: tuple[tuple[str, str], ...]
    """(file, sha256) of each of the shard's data files, in slice order."""
    from_slice: int = 0
    start: Optional[CheckpointRecord] = None
    slice_rows: tuple[int, ...] = ()
    epochs: tuple[int, ...] = ()
    """Epochs of every slice (:meth:`WorkspaceManifest.schedule`); empty: the settings' slices."""
    import_root: Optional[str] = None
    """Folder a worker imports a model of the user's own from (where the driver found it)."""

    @classmethod
    def for_shard(cls, workdir: str, manifest: WorkspaceManifest, entry: ShardData, **options: Any) -> "ShardJob":
        """The job that trains ``entry``'s shard of the workspace ``manifest`` describes."""
        from sisa.models import import_root

        return cls(workdir, entry.shard, manifest.settings, DataSpec.from_info(manifest.data),
                   tuple((p.file, p.sha256) for p in entry.parts), slice_rows=entry.slice_rows, epochs=manifest.schedule(),
                   import_root=import_root(manifest.settings.model), **options)

    def read_rows(self, files: "JobFiles") -> Any:
        """The shard's rows (:class:`~sisa.workspace.rows.ShardRows`), from all its files, which
        must hold the rows of its slices in slice order (``slice_rows`` of each, when given)."""
        from sisa.errors import SisaError
        from sisa.workspace.files import check_slices
        from sisa.workspace.rows import concat_rows

        names = ", ".join(name for name, _ in self.shard_files)
        parts = (files.read_data_file(name, sha256, self.data.shape, self.data.dtype) for name, sha256 in self.shard_files)
        if not self.slice_rows:
            return concat_rows(parts)
        try:
            rows = concat_rows(parts, sum(self.slice_rows))
        except ValueError as exc:
            raise SisaError(f"shard {self.shard}'s files ({names}) do not hold the rows the manifest gives "
                            f"their slices: {exc}") from None
        check_slices(self.shard, names, rows.slice, 0, self.slice_rows)
        return rows

    def schedule(self) -> tuple[int, ...]:
        return self.epochs or tuple(self.settings.slice_epochs())

    def epochs_of(self, slice_: int, rows: int, own_rows: int) -> int:
        """Epochs slice ``slice_`` trains (:func:`slice_epochs_of`)."""
        return slice_epochs_of(self.schedule(), self.settings.slices, slice_, rows, own_rows)

    def slice_work(self) -> list[tuple[int, int, int]]:
        """(slice, rows it trains on, epochs) of every slice the job will train, in the order it
        trains them; empty when ``slice_rows`` is not given."""
        own = self.slice_rows or ()
        rows = np.cumsum(own) if own else []
        return [(r, int(rows[r]), self.epochs_of(r, int(rows[r]), int(own[r])))
                for r in range(self.from_slice, len(rows))]

    def sample_passes(self) -> int:
        """Rows times epochs the job will train (0 when ``slice_rows`` is not given)."""
        return sum(rows * epochs for _, rows, epochs in self.slice_work())


@dataclass
class ShardResult:
    shard: int
    checkpoints: list[CheckpointRecord]
    environment: dict[str, Any]
    seconds: float = 0.0
    host: str = field(default_factory=platform.node)
    """The machine that trained the shard (a Ray worker node, or this one)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """The checkpoints' bytes by file name, when the job carried its files
    (:class:`~sisa.workspace.carried.CarriedFiles`) and the caller writes them."""
    epochs: list[EpochReport] = field(default_factory=list)
    """Every epoch the job trained, in order: how a Ray task's losses reach the driver (they
    are not in the checkpoint records, which the checkpoints manifest persists)."""


def slice_epochs_of(schedule: Sequence[int], base_slices: int, slice_: int, rows: int, own_rows: int) -> int:
    """Epochs slice ``slice_`` trains on its ``rows`` (those of slices 0..slice_), of which
    ``own_rows`` are its own; ``schedule`` gives every slice's epochs, ``base_slices`` is the
    training's R. None without rows. A slice added by ``sisa add`` (past R) without rows of
    its own trains none either: its checkpoint is the one before it again, so a batch that
    brings a shard nothing costs that shard nothing, and a deletion that empties such a slice
    gives what adding the batch without the row gives. (A slice of the training itself that is
    empty still trains its epochs on the rows before it, as it always has.)"""
    if not rows or (slice_ >= base_slices and not own_rows):
        return 0
    return schedule[slice_]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from its parts, e.g. (seed, shard, slice, epoch).

    >>> derive_seed(0, 1, 2, 3) == derive_seed(0, 1, 2, 3) != derive_seed(0, 1, 2, 4)
    True
    """
    text = ":".join(str(p) for p in ("sisa",) + parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1

