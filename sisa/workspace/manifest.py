"""The workspace's two manifests, typed: what was trained on what, and where it lies.

``shards/manifest.json`` (:class:`WorkspaceManifest`) holds the settings, the description of the
data, and one :class:`DataFile` per shard plus one for the test rows. ``checkpoints/manifest.json``
(:class:`CheckpointsManifest`) holds the numerics environment and one :class:`CheckpointRecord`
per checkpoint. Both are frozen dataclasses; this module is the only place that turns them into
JSON and back, checks their format, and knows their field names. The JSON is written sorted and
sealed with a checksum by :meth:`sisa.workspace.files.Workspace.write_json`.

A workspace records the format and the sisa version that wrote it. This sisa reads format 1; a
manifest of any other format is refused with a message that names both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from sisa.errors import SisaError
from sisa.settings import Settings

WORKSPACE_FORMAT = "sisa-workspace/2"
"""2: a shard's rows are one file per slice (:class:`ShardData`). Format 1 manifests (one file
per shard) are read, and written back as format 2 by the next command that writes."""
READABLE_WORKSPACE_FORMATS = ("sisa-workspace/1", WORKSPACE_FORMAT)
CHECKPOINTS_FORMAT = "sisa-checkpoints/2"
"""2: a checkpoint may be two files, the model's weights apart from the rest of the training
state (:attr:`CheckpointRecord.weights`). Format 1 manifests are read (their checkpoints are one
file each) and written back as format 2, which sisa before 0.x refuses by name."""
READABLE_CHECKPOINTS_FORMATS = ("sisa-checkpoints/1", CHECKPOINTS_FORMAT)


def check_format(found: Any, expected: str, where: str, version: Any = None,
                 readable: Sequence[str] = ()) -> None:
    """Refuse a manifest this sisa cannot read (neither ``expected`` nor one of ``readable``),
    saying which format and sisa wrote it."""
    if found == expected or found in readable:
        return
    kind = expected.split("/")[0]
    if isinstance(found, str) and found.startswith(kind + "/"):
        writer = f" (written by sisa {version})" if version else ""
        raise SisaError(f"{where} is in format {found}{writer}; this sisa reads {expected}"
                        f"{''.join(f' and {r}' for r in readable if r != expected)}. "
                        f"Use the sisa version that wrote it, or retrain with 'sisa train --force'")
    raise SisaError(f"{where} is not a {expected} manifest")


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of rows: a shard's (``shard`` and ``slice_rows`` set) or the test rows'."""

    file: str
    sha256: str
    rows: int
    ids_sha256: str
    shard: Optional[int] = None
    slice_rows: Optional[tuple[int, ...]] = None

    def slice_ends(self) -> np.ndarray:
        """Row count up to and including each slice (rows are stored in slice order)."""
        return np.cumsum(self.slice_rows or ())

    def to_json(self) -> dict[str, Any]:
        out = {"file": self.file, "sha256": self.sha256, "rows": self.rows}
        if self.ids_sha256:  # absent in workspaces written before it was recorded
            out["ids_sha256"] = self.ids_sha256
        if self.shard is not None:
            out.update(shard=self.shard, slice_rows=list(self.slice_rows or ()))
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "DataFile":
        slice_rows = obj.get("slice_rows")
        return cls(file=obj["file"], sha256=obj["sha256"], rows=int(obj["rows"]),
                   ids_sha256=obj.get("ids_sha256", ""), shard=obj.get("shard"),
                   slice_rows=None if slice_rows is None else tuple(int(n) for n in slice_rows))


@dataclass(frozen=True)
class ShardData:
    """One shard's rows on disk: ``parts``, Parquet files in slice order, each holding the rows
    of the slices its ``slice_rows`` counts, in (slice, key) order. sisa writes one file per
    slice, so that a deletion rewrites only the slice that held the row; a shard of a format 1
    workspace is one file for all its slices until a command rewrites it."""

    shard: int
    parts: tuple[DataFile, ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def slice_rows(self) -> tuple[int, ...]:
        return tuple(n for p in self.parts for n in (p.slice_rows or ()))

    def slice_ends(self) -> np.ndarray:
        """Row count up to and including each slice (rows are stored in slice order)."""
        return np.cumsum(self.slice_rows)

    def first_slices(self) -> list[int]:
        """The first slice each part holds."""
        return [int(n) for n in np.cumsum([0] + [len(p.slice_rows or ()) for p in self.parts])[:-1]]

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "rows": self.rows, "slice_rows": list(self.slice_rows),
                "files": [p.to_json() for p in self.parts]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ShardData":
        if "files" not in obj:  # format 1: the entry is the shard's one file
            part = DataFile.from_json(obj)
            return cls(shard=int(obj["shard"]), parts=(part,))
        parts = tuple(DataFile.from_json(p) for p in obj["files"])
        entry = cls(shard=int(obj["shard"]), parts=parts)
        if any(p.shard != entry.shard or p.slice_rows is None or p.rows != sum(p.slice_rows) for p in parts) \
                or list(entry.slice_rows) != list(obj.get("slice_rows", entry.slice_rows)):
            raise ValueError(f"shard {entry.shard}'s files do not add up to its rows per slice")
        return entry


SOURCE_FIELDS = ("spec", "test_spec", "test_fraction", "id_col", "label_col", "image_size", "config_file",
                 "config_sha256")
"""Where the rows came from; recorded by the CLI (``repair --data`` reloads from them), absent
for arrays passed in Python. ``config_file`` and its ``config_sha256``: the ``train --config``
file the workspace was trained from, when one was (absent in workspaces from before)."""


@dataclass(frozen=True)
class DataInfo:
    """The rows' shape, type and classes, their counts, and where they came from."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    classes: tuple
    id_kind: str
    n_train: int
    n_test: int
    n_train_initial: Optional[int] = None
    """Rows at training time (absent in early workspaces): with the ledger they show whether
    rows went missing without a deletion."""
    n_test_initial: Optional[int] = None
    feature_names: Optional[tuple[str, ...]] = None
    n_test_deleted_as_training: int = 0
    """Test rows removed because a training deletion named their id (train and test ids must
    differ, so these were requests for a training id that also sat in the test rows)."""
    source: Optional[dict[str, Any]] = None
    """The :data:`SOURCE_FIELDS` as recorded, or None."""
    carried_deletions: Optional[int] = None
    """Ledger rows carried over from the workspace this one replaced (``train --force``)."""

    def source_value(self, name: str, default: Any = None) -> Any:
        return (self.source or {}).get(name, default)

    def to_json(self) -> dict[str, Any]:
        out = {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale,
               "classes": list(self.classes), "id_kind": self.id_kind,
               "feature_names": None if self.feature_names is None else list(self.feature_names),
               "n_train": self.n_train, "n_test": self.n_test, **(self.source or {})}
        for name in ("n_train_initial", "n_test_initial"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.n_test_deleted_as_training:
            out["n_test_deleted_as_training"] = self.n_test_deleted_as_training
        if self.carried_deletions is not None:
            out["carried_deletions"] = self.carried_deletions
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "DataInfo":
        source = {k: obj[k] for k in SOURCE_FIELDS if k in obj} or None
        names = obj.get("feature_names")
        return cls(shape=tuple(int(d) for d in obj["shape"]), dtype=obj["dtype"], scale=obj["scale"],
                   classes=tuple(obj["classes"]), id_kind=obj.get("id_kind", "int"),
                   n_train=int(obj["n_train"]), n_test=int(obj["n_test"]),
                   n_train_initial=obj.get("n_train_initial"), n_test_initial=obj.get("n_test_initial"),
                   feature_names=None if names is None else tuple(names),
                   n_test_deleted_as_training=int(obj.get("n_test_deleted_as_training", 0)), source=source,
                   carried_deletions=obj.get("carried_deletions"))


@dataclass(frozen=True)
class Batch:
    """Rows taken in by ``sisa add`` as workspace ``version``: ``len(epochs)`` slices at the end
    of every shard, slice i of them trained ``epochs[i]`` epochs."""

    version: int
    epochs: tuple[int, ...]
    rows: int
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "epochs": list(self.epochs), "rows": self.rows, "created": self.created}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Batch":
        return cls(version=int(obj["version"]), epochs=tuple(int(e) for e in obj["epochs"]),
                   rows=int(obj["rows"]), created=obj.get("created", ""))


@dataclass(frozen=True)
class WorkspaceManifest:
    """``shards/manifest.json``: settings, data description, shard files and the test file.

    ``version`` is the workspace version these files are (1 for the first training; every
    train, add and revert makes a new one, recorded in the ledger). The first training's
    ``settings.slices`` slices come first in every shard, then each added :class:`Batch`'s.
    """

    settings: Settings
    data: DataInfo
    shards: tuple[ShardData, ...]
    test: Optional[DataFile]
    created: str
    sisa_version: Optional[str] = None
    format: str = WORKSPACE_FORMAT
    version: int = 1
    base_version: int = 1
    """The version of the training the batches were added to."""
    batches: tuple[Batch, ...] = ()
    model_source: Optional[dict[str, Any]] = None
    """A model of the user's own (``package.module:factory``): its module file and that file's
    sha256 when the workspace was trained (or a change was accepted); None for built-in models."""

    def schedule(self) -> tuple[int, ...]:
        """Epochs of every slice: the training's, then each added batch's."""
        return tuple(self.settings.slice_epochs()) + tuple(e for b in self.batches for e in b.epochs)

    @property
    def n_slices(self) -> int:
        return self.settings.slices + sum(len(b.epochs) for b in self.batches)

    def slice_versions(self) -> list[int]:
        """The version that brought in each slice's rows."""
        return [self.base_version] * self.settings.slices + [b.version for b in self.batches for _ in b.epochs]

    def shard(self, shard: int) -> ShardData:
        """The entry of ``shard`` (entries are indexed by shard number)."""
        entry = self.shards[shard]
        if entry.shard != shard:
            raise SisaError(f"the shards manifest lists shard {entry.shard} where shard {shard} belongs")
        return entry

    def files(self) -> list[DataFile]:
        """Every data file: the shards' (each shard's in slice order), then the test file."""
        return [p for e in self.shards for p in e.parts] + ([self.test] if self.test else [])

    def with_shard(self, entry: ShardData) -> "WorkspaceManifest":
        shards = tuple(entry if e.shard == entry.shard else e for e in self.shards)
        return dataclasses.replace(self, shards=shards)

    def replace(self, **changes: Any) -> "WorkspaceManifest":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = {"format": self.format, "created": self.created, "settings": self.settings.to_dict(),
               "data": self.data.to_json(), "shards": [e.to_json() for e in self.shards],
               "test": self.test.to_json() if self.test else None}
        if self.sisa_version is not None:
            out["sisa_version"] = self.sisa_version
        if self.model_source is not None:
            out["model_source"] = self.model_source
        if self.version != 1 or self.base_version != 1 or self.batches:  # as early workspaces, else
            out.update(version=self.version, base_version=self.base_version,
                       batches=[b.to_json() for b in self.batches])
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "the shards manifest") -> "WorkspaceManifest":
        check_format(obj.get("format"), WORKSPACE_FORMAT, where, obj.get("sisa_version"),
                     readable=READABLE_WORKSPACE_FORMATS)
        try:
            # a format 1 manifest is written back as format 2 (its shard entries are valid in both)
            return cls(settings=Settings.from_dict(obj["settings"]), data=DataInfo.from_json(obj["data"]),
                       shards=tuple(ShardData.from_json(e) for e in obj["shards"]),
                       test=DataFile.from_json(obj["test"]) if obj.get("test") else None,
                       created=obj.get("created", ""), sisa_version=obj.get("sisa_version"),
                       version=int(obj.get("version", 1)),
                       base_version=int(obj.get("base_version", 1)),
                       batches=tuple(Batch.from_json(b) for b in obj.get("batches", ())),
                       model_source=obj.get("model_source"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SisaError):
                raise
            raise SisaError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint: the model after ``slice`` of ``shard``, trained on the ids hashed as
    ``ids_sha256``; ``samples`` rows, ``epochs`` epochs on this slice, ``seconds`` to train.

    ``file`` holds the training state (optimizer, scheduler, counters); the model's weights are
    in ``weights`` apart, so that inference reads only them. A checkpoint of format 1 has no
    ``weights``: ``file`` then holds the whole state, weights included."""

    shard: int
    slice: int
    file: str
    sha256: str
    ids_sha256: str = ""
    samples: int = 0
    epochs: int = 0
    bytes: Optional[int] = None
    seconds: float = 0.0
    shared_by: Optional[int] = None
    """Shards trained together in one vectorised step; ``seconds`` is then the group's time."""
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None
    weights_bytes: Optional[int] = None

    def timed(self, seconds: float) -> "CheckpointRecord":
        return dataclasses.replace(self, seconds=round(seconds, 4))

    def files(self) -> tuple[tuple[str, str, Optional[int]], ...]:
        """(name under ``checkpoints/``, sha256, size) of each file of the checkpoint."""
        if self.weights is None:
            return ((self.file, self.sha256, self.bytes),)
        return ((self.file, self.sha256, self.bytes), (self.weights, self.weights_sha256 or "", self.weights_bytes))

    def total_bytes(self) -> Optional[int]:
        sizes = [size for _, _, size in self.files()]
        return None if None in sizes else sum(sizes)

    def to_json(self) -> dict[str, Any]:
        out = {"shard": self.shard, "slice": self.slice, "file": self.file, "sha256": self.sha256,
               "ids_sha256": self.ids_sha256, "samples": self.samples, "epochs": self.epochs,
               "seconds": self.seconds}
        for name in ("bytes", "shared_by", "weights", "weights_sha256", "weights_bytes"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "CheckpointRecord":
        weights = obj.get("weights")
        if weights is not None and not (isinstance(weights, str) and isinstance(obj.get("weights_sha256"), str)):
            raise ValueError("a checkpoint's weights need a file name and a sha256")
        return cls(shard=int(obj["shard"]), slice=int(obj["slice"]), file=obj["file"], sha256=obj["sha256"],
                   ids_sha256=obj.get("ids_sha256", ""), samples=int(obj.get("samples", 0)),
                   epochs=int(obj.get("epochs", 0)), bytes=obj.get("bytes"), seconds=obj.get("seconds", 0.0),
                   shared_by=obj.get("shared_by"), weights=weights, weights_sha256=obj.get("weights_sha256"),
                   weights_bytes=obj.get("weights_bytes"))


def by_position(records: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
    return sorted(records, key=lambda r: (r.shard, r.slice))


@dataclass(frozen=True)
class CheckpointsManifest:
    """``checkpoints/manifest.json``: the numerics environment and every checkpoint record."""

    checkpoints: tuple[CheckpointRecord, ...] = ()
    environment: dict[str, Any] = field(default_factory=dict)
    format: str = CHECKPOINTS_FORMAT

    def of_shard(self, shard: int) -> list[CheckpointRecord]:
        return [r for r in self.checkpoints if r.shard == shard]

    def final(self) -> dict[int, CheckpointRecord]:
        """The last checkpoint of each shard that has one."""
        last: dict[int, CheckpointRecord] = {}
        for r in by_position(self.checkpoints):
            last[r.shard] = r
        return last

    def without_shards(self, shards: set[int]) -> "CheckpointsManifest":
        return dataclasses.replace(self, checkpoints=tuple(r for r in self.checkpoints if r.shard not in shards))

    def without_records(self, records: Sequence[CheckpointRecord]) -> "CheckpointsManifest":
        return dataclasses.replace(self, checkpoints=tuple(r for r in self.checkpoints if r not in records))

    def with_records(self, records: Sequence[CheckpointRecord]) -> "CheckpointsManifest":
        return dataclasses.replace(self, checkpoints=tuple(by_position(list(self.checkpoints) + list(records))))

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "environment": self.environment,
                "checkpoints": [r.to_json() for r in self.checkpoints]}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "the checkpoints manifest") -> "CheckpointsManifest":
        check_format(obj.get("format"), CHECKPOINTS_FORMAT, where, readable=READABLE_CHECKPOINTS_FORMATS)
        try:
            # a format 1 manifest is written back as format 2 (its records are valid in both)
            return cls(checkpoints=tuple(CheckpointRecord.from_json(r) for r in obj["checkpoints"]),
                       environment=obj.get("environment") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise SisaError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
