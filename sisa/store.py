"""The workspace on disk: shard data under ``shards/``, checkpoints under ``checkpoints/``.

Layout (see shards/README.md and checkpoints/README.md):

    shards/manifest.json        settings, data description, shard files with their sha256
    shards/shard-NNN-<sha>.parquet  the training rows of shard NNN (id, shard, slice, label,
                                features); <sha> starts the file's sha256
    shards/test.parquet         the evaluation rows
    checkpoints/manifest.json   every checkpoint with its sha256, id-set hash and timings, and the
                                numerics environment it was trained under
    checkpoints/shard-NNN/slice-RR-<idset>.pt

Every file is written atomically (temporary file, fsync, rename, fsync of the folder) and
recorded with its sha256; a file that no longer matches is reported, never used. The shards
manifest is written last by ``sisa train``: a folder without it holds no workspace.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from sisa.data import ARROW_THREADS, id_bytes
from sisa.errors import SisaError

WORKSPACE_FORMAT = "sisa-workspace/1"
CHECKPOINTS_FORMAT = "sisa-checkpoints/1"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(obj: dict[str, Any]) -> str:
    """Checksum of a manifest's contents (its own ``checksum`` field left out). It catches
    corruption and hand edits; a replay (``sisa audit --replay``) catches the rest."""
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> Optional[str]:
    """sha256 of a file, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def ids_digest(ids: Iterable) -> str:
    """sha256 of a set of ids, independent of their order.

    >>> ids_digest([3, 1, 2]) == ids_digest([1, 2, 3]) != ids_digest([1, 2])
    True
    """
    digest = hashlib.sha256()
    for b in sorted(id_bytes(i) for i in ids):
        digest.update(len(b).to_bytes(8, "little"))
        digest.update(b)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardRows:
    """The rows of one shard in canonical (slice, key) order."""

    ids: np.ndarray
    slice: np.ndarray
    label: np.ndarray
    X: np.ndarray


def rows_to_parquet(ids: np.ndarray, shard: Optional[int], slice_: Optional[np.ndarray],
                    label: np.ndarray, X: np.ndarray) -> bytes:
    """Serialise rows to Parquet bytes; features are one fixed-size list column, flattened."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = np.ascontiguousarray(X.reshape(len(X), int(np.prod(X.shape[1:]))))
    width = flat.shape[1]
    columns = {"id": pa.array(ids.tolist() if ids.dtype == object else ids)}
    if shard is not None:
        columns["shard"] = pa.array(np.full(len(ids), shard, dtype=np.int32))
        columns["slice"] = pa.array(slice_.astype(np.int32))
    columns["label"] = pa.array(label.astype(np.int64))
    columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, compression="zstd")
    return buffer.getvalue()


def id_order(ids: np.ndarray) -> np.ndarray:
    """A canonical order of rows by id, so a file's bytes never depend on the input order."""
    if ids.dtype == object:
        return np.argsort(np.array([str(i) for i in ids]), kind="stable")
    return np.argsort(ids, kind="stable")


def parquet_to_rows(data: bytes, shape: tuple[int, ...], dtype: str) -> ShardRows:
    import pyarrow.parquet as pq

    # read_table would import pyarrow.dataset (0.1-0.2 s)
    table = pq.ParquetFile(io.BytesIO(data)).read(use_threads=ARROW_THREADS)
    id_col = table.column("id")
    ids = np.asarray(id_col.to_pylist(), dtype=object) if id_col.type == "string" \
        else id_col.to_numpy().astype(np.int64)
    flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    X = flat.astype(dtype, copy=False).reshape((len(ids),) + tuple(shape))
    slice_ = table.column("slice").to_numpy().astype(np.int64) if "slice" in table.column_names \
        else np.zeros(len(ids), dtype=np.int64)
    return ShardRows(ids, slice_, table.column("label").to_numpy().astype(np.int64), X)


class Workspace:
    """Files of one workspace folder (``root``), read and written with integrity checks."""

    def __init__(self, root: os.PathLike | str = ".") -> None:
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.checkpoints_dir = self.root / "checkpoints"
        self.manifest_path = self.shards_dir / "manifest.json"
        self.checkpoints_manifest_path = self.checkpoints_dir / "manifest.json"

    # -- manifests
    def exists(self) -> bool:
        return self.manifest_path.exists()

    def read_manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise SisaError(f"no sisa workspace in {self.root} (no {self.manifest_path}); "
                            f"run 'sisa train' first or pass --workdir")
        manifest = self._read_json(self.manifest_path)
        if manifest.get("format") != WORKSPACE_FORMAT:
            raise SisaError(f"{self.manifest_path} is not a {WORKSPACE_FORMAT} manifest")
        return manifest

    def read_checkpoints_manifest(self) -> dict[str, Any]:
        manifest = self._read_json(self.checkpoints_manifest_path)
        if manifest.get("format") != CHECKPOINTS_FORMAT:
            raise SisaError(f"{self.checkpoints_manifest_path} is not a {CHECKPOINTS_FORMAT} manifest")
        return manifest

    def write_json(self, path: Path, obj: dict[str, Any]) -> None:
        """Write a manifest atomically, sealed with a checksum of its contents."""
        sealed = dict(obj, checksum=_seal(obj))
        atomic_write(path, (json.dumps(sealed, indent=1, sort_keys=True) + "\n").encode())

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SisaError(f"missing {path}: the workspace is incomplete") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SisaError(f"cannot read {path}: {exc}") from None
        if not isinstance(obj, dict):
            raise SisaError(f"{path} is not a JSON object")
        if obj.get("checksum") != _seal(obj):
            raise SisaError(f"{path} was edited or damaged: its checksum does not match its contents")
        return obj

    # -- data files
    def write_data_file(self, name: str, data: bytes) -> str:
        atomic_write(self.shards_dir / name, data)
        return sha256_bytes(data)

    def write_versioned(self, prefix: str, data: bytes) -> tuple[str, str]:
        """Write Parquet bytes under a name carrying their sha256, so a new version never
        overwrites the file the manifest still points to. Returns (name, sha256)."""
        sha = sha256_bytes(data)
        name = f"{prefix}-{sha[:12]}.parquet"
        atomic_write(self.shards_dir / name, data)
        return name, sha

    def write_shard_file(self, shard: int, data: bytes) -> tuple[str, str]:
        return self.write_versioned(f"shard-{shard:03d}", data)

    def read_data_file(self, name: str, sha256: str, shape, dtype: str) -> ShardRows:
        path = self.shards_dir / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SisaError(f"cannot read shard file {path}: {exc}") from None
        if sha256_bytes(data) != sha256:
            raise SisaError(f"shard file {path} does not match its recorded sha256: "
                            f"it was changed or damaged")
        return parquet_to_rows(data, tuple(shape), dtype)

    # -- checkpoints
    @property
    def ledger_path(self) -> Path:
        return self.shards_dir / "ledger.sqlite"

    def checkpoint_name(self, shard: int, slice_: int, ids_sha256: str) -> str:
        return f"shard-{shard:03d}/slice-{slice_:02d}-{ids_sha256[:16]}.pt"

    def write_checkpoint(self, name: str, state: dict[str, Any]) -> str:
        """Save ``state`` atomically; returns the sha256 of the bytes written."""
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        atomic_write(self.checkpoints_dir / name, data)
        return sha256_bytes(data)

    def load_checkpoint(self, record: dict[str, Any], map_location: str = "cpu") -> dict[str, Any]:
        """Load a checkpoint after checking its sha256; never unpickles arbitrary objects."""
        import torch

        path = self.checkpoints_dir / record["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SisaError(f"cannot read checkpoint {path}: {exc}") from None
        if sha256_bytes(data) != record["sha256"]:
            raise SisaError(f"checkpoint {path} (shard {record['shard']}, slice {record['slice']}) "
                            f"does not match its recorded sha256: it was changed or damaged")
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as exc:  # weights_only refuses anything but tensors and plain containers
            raise SisaError(f"refusing to load checkpoint {path}: {exc}") from None

    def verify_checkpoint(self, record: dict[str, Any]) -> bool:
        return sha256_file(self.checkpoints_dir / record["file"]) == record["sha256"]
