"""The workspace on disk: shard data under ``shards/``, checkpoints under ``checkpoints/``.

Layout (see shards/README.md and checkpoints/README.md):

    shards/manifest.json        settings, data description, shard files with their sha256
    shards/shard-NNN-RRR-<sha>.parquet  the training rows of slice RRR of shard NNN (id, shard,
                                slice, label, features); <sha> starts the file's sha256 (a
                                workspace of format 1 has one shard-NNN-<sha>.parquet per shard)
    shards/test-<sha>.parquet   the evaluation rows
    checkpoints/manifest.json   every checkpoint with its sha256, id-set hash and timings, and the
                                numerics environment it was trained under
    checkpoints/shard-NNN/slice-RR-<idset>.pt          training state (optimizer, scheduler...)
    checkpoints/shard-NNN/slice-RR-<idset>.weights.pt  the model's weights

Every file is written atomically (temporary file, fsync, rename, fsync of the folder) and
recorded with its sha256; a file that no longer matches is reported, never used. The shards
manifest is written last by ``sisa train``: a folder without it holds no workspace.

Files hold personal data, so sisa creates them 0600 and its folders 0700 (``SISA_FILE_MODE=umask``:
0666 and 0777 less the umask, for shared setups). Nothing inside a workspace is reached through
a symbolic link: folders are opened one by one with ``O_NOFOLLOW``, temporary files get
unpredictable names and are created exclusively, a link where a file is to be replaced is
refused, and :meth:`Workspace.check_safe` refuses a workspace whose files are links or belong to
another user (``SISA_ALLOW_FOREIGN_OWNER=1`` allows the latter).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence

import numpy as np

from sisa.errors import SisaError
from sisa.ids import ids_digest
from sisa.workspace.manifest import (
    CheckpointRecord,
    CheckpointsManifest,
    DataFile,
    ShardData,
    WorkspaceManifest,
)
from sisa.workspace.rows import (
    ARROW_THREADS,
    ShardRows,
    parquet_to_rows,
    rows_to_parquet,
)

FILE_MODE_ENV = "SISA_FILE_MODE"
"""``private`` (default): files 0600, folders 0700. ``umask``: 0666 and 0777 less the umask."""
FOREIGN_OWNER_ENV = "SISA_ALLOW_FOREIGN_OWNER"
"""``1``: accept workspace files and folders owned by another user (links are refused anyway)."""

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # never hang on a FIFO planted where a file should be


def creation_modes() -> tuple[int, int]:
    """(file mode, folder mode) that sisa creates its files and folders with."""
    value = os.environ.get(FILE_MODE_ENV, "").strip().lower()
    if value in ("", "private"):
        return 0o600, 0o700
    if value == "umask":
        return 0o666, 0o777  # the umask takes its share at creation
    raise SisaError(f"{FILE_MODE_ENV}={os.environ[FILE_MODE_ENV]!r} is not a file mode setting: use 'private' "
                    f"(the default: files 0600, folders 0700) or 'umask' (0666 and 0777 less the umask)")


def _link_message(path: os.PathLike | str) -> str:
    return (f"{path} is a symbolic link; sisa never follows links in a workspace, so that nobody can "
            f"make it read or overwrite another file: remove the link (and check who planted it)")


def _check_owner(st: os.stat_result, path: os.PathLike | str) -> None:
    me = os.geteuid()
    if st.st_uid != me and os.environ.get(FOREIGN_OWNER_ENV, "").strip() != "1":
        raise SisaError(f"{path} is owned by uid {st.st_uid}, not by this user (uid {me}): another user "
                        f"could change it under sisa. Work on your own copy, or set "
                        f"{FOREIGN_OWNER_ENV}=1 if this is a shared setup you trust")


def check_entry(path: os.PathLike | str) -> Optional[os.stat_result]:
    """lstat of a sisa file or folder that must be neither a link nor another user's; None if
    it does not exist."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(st.st_mode):
        raise SisaError(_link_message(path))
    _check_owner(st, path)
    return st


def make_folder(path: os.PathLike | str) -> None:
    """Create the folder ``path`` and missing parents with sisa's folder mode (0700 by default)."""
    path = Path(path)
    if path.is_dir():
        return
    if path.parent != path:
        make_folder(path.parent)
    try:
        os.mkdir(path, creation_modes()[1])
    except FileExistsError:
        if not path.is_dir():
            raise


def _check_name(name: str, where: os.PathLike | str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise SisaError(f"{name!r} in {where} is not a plain file name; refusing to leave the workspace folder")


def _is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_folder_at(dir_fd: int, name: str, shown: Path, *, create: bool, mode: int) -> int:
    """Open the folder ``name`` in ``dir_fd`` without following a link (creating it first)."""
    if create:
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
    try:
        return os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link_at(dir_fd, name):
            raise SisaError(_link_message(shown)) from None
        raise


def _create_temporary(dir_fd: int, name: str, mode: int) -> tuple[str, int]:
    """A new file ``.<name>.tmp-<random>`` created exclusively (never through a link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    for _ in range(100):
        tmp = f".{name}.tmp-{secrets.token_hex(8)}"
        try:
            return tmp, os.open(tmp, flags, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", name)


class _HashingSink(io.RawIOBase):
    """A write-only file over ``fd`` that keeps the sha256 of what was written."""

    def __init__(self, fd: int) -> None:
        self.fd, self.digest, self.size = fd, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += len(view)
        _write_all(self.fd, view)
        return len(view)

    def tell(self) -> int:
        return self.size


def _refuse_link_at(dir_fd: int, name: str, shown: os.PathLike | str) -> None:
    if _is_link_at(dir_fd, name):
        raise SisaError(_link_message(shown))


def _write_at(dir_fd: int, name: str, data: bytes, mode: int, shown: os.PathLike | str) -> None:
    """Write ``data`` to ``name`` in the folder ``dir_fd`` atomically: a new temporary file,
    fsync, rename over ``name`` (never a link), fsync of the folder."""
    _commit_at(dir_fd, name, lambda fd: _write_all(fd, data), lambda: name, mode, Path(shown).parent)


def _commit_at(dir_fd: int, temporary: str, write: Callable[[int], None], final_name: Callable[[], str],
               mode: int, folder: os.PathLike | str) -> str:
    """Write a new temporary file in the folder ``dir_fd`` with ``write``, fsync it, rename it to
    ``final_name()`` (asked once it is written; never over a link) and fsync the folder."""
    tmp, fd = _create_temporary(dir_fd, temporary, mode)
    try:
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        name = final_name()
        _refuse_link_at(dir_fd, name, Path(folder) / name)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # renames a link, never its target
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.fsync(dir_fd)
    return name


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, data: bytes, *, private: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, whole.

    ``private`` (sisa's own files): the file gets mode 0600 and folders it creates 0700 (see
    :func:`creation_modes`); otherwise, for a file the user named, 0666 and 0777 less the umask.
    A link at ``path`` is refused, never followed or replaced."""
    path = Path(path)
    file_mode, folder_mode = creation_modes() if private else (0o666, 0o777)
    if private:
        make_folder(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        _write_at(fd, path.name, data, file_mode, path)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_regular(path: os.PathLike | str, *, dir_fd: Optional[int] = None,
                  shown: Optional[os.PathLike | str] = None) -> int:
    """Open a file for reading without following a link; only a regular file is accepted.
    ``shown`` names the file in messages (``path`` may be relative to ``dir_fd``)."""
    shown = path if shown is None else shown
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise SisaError(_link_message(shown)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SisaError(f"{shown} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int) -> bytes:
    # FileIO sizes its buffer from fstat: one copy of the file in memory, not two while joined
    with io.FileIO(fd, closefd=False) as f:
        return f.readall()


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: os.read(fd, 1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def json_checksum(obj: dict[str, Any]) -> str:
    """Checksum of a manifest's (or an exported bundle's) contents, its own ``checksum`` field
    left out. It catches corruption and hand edits; a replay (``sisa audit --replay``) catches
    the rest."""
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> Optional[str]:
    """sha256 of a file, or None when it cannot be read (or is a link)."""
    return _sha256_of(lambda: _open_regular(path))


def _sha256_of(opener) -> Optional[str]:
    """sha256 of the file ``opener()`` opens, or None when it cannot be opened or read."""
    try:
        fd = opener()
    except (OSError, SisaError):  # missing, unreadable, a link or not a file
        return None
    try:
        return _sha256_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)












# sisa's own names in shards/ and checkpoints/ (other files there, a README say, are left alone)
_SHARDS_NAMES = ("manifest.json", "ledger.sqlite", "ledger.sqlite-*", "*.parquet", ".*.tmp-*")
_CHECKPOINTS_NAMES = ("manifest.json", "shard-*", ".*.tmp-*")


class Workspace:
    """Files of one workspace folder (``root``), read and written with integrity checks.

    ``root`` is the folder the user named (a link there is the user's choice); below it, sisa
    follows no link, and every file it writes is created 0600 (see :func:`creation_modes`)."""

    def __init__(self, root: os.PathLike | str = ".") -> None:
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.checkpoints_dir = self.root / "checkpoints"
        self.manifest_path = self.shards_dir / "manifest.json"
        self.checkpoints_manifest_path = self.checkpoints_dir / "manifest.json"

    # -- safety
    def check_safe(self) -> None:
        """Refuse (SisaError naming the file) a workspace whose sisa files or folders (shards/,
        checkpoints/, manifests, ledger, shard and checkpoint files, temporary files) are
        symbolic links, or belong to another user unless ``SISA_ALLOW_FOREIGN_OWNER=1``.

        A workspace that another user can change is one where that user can point sisa's
        writes at any file the person running sisa may write (issue 14)."""
        creation_modes()  # a bad setting is refused before anything is written
        for _ in self._sisa_entries():
            pass

    def _sisa_entries(self) -> Iterator[tuple[Path, os.stat_result]]:
        for folder, names in ((self.shards_dir, _SHARDS_NAMES), (self.checkpoints_dir, _CHECKPOINTS_NAMES)):
            st = check_entry(folder)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            yield folder, st
            with os.scandir(folder) as entries:
                found = sorted((e.name for e in entries), key=str)
            for name in found:
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in names):
                    continue
                path = folder / name
                st = check_entry(path)
                if st is None:
                    continue
                yield path, st
                if folder == self.checkpoints_dir and stat.S_ISDIR(st.st_mode):
                    with os.scandir(path) as entries:  # a shard's folder holds only sisa's files
                        inner = sorted(e.name for e in entries)
                    for sub in inner:
                        st_sub = check_entry(path / sub)
                        if st_sub is not None:
                            yield path / sub, st_sub

    def _parts(self, path: os.PathLike | str) -> Optional[tuple[str, ...]]:
        """``path`` as names below ``root``, or None when it is not below it."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return None
        return parts or None

    def _open_folder(self, parts: Sequence[str], *, create: bool) -> int:
        """A descriptor of the folder ``root/parts...``, each part opened without following a
        link (and created with sisa's folder mode when ``create``)."""
        folder_mode = creation_modes()[1]
        if create:
            make_folder(self.root)
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        shown = self.root
        try:
            for part in parts:
                _check_name(part, shown)
                shown = shown / part
                child = _open_folder_at(fd, part, shown, create=create, mode=folder_mode)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _write(self, parts: Sequence[str], data: bytes) -> None:
        *folders, name = parts
        _check_name(name, self.root.joinpath(*folders))
        fd = self._open_folder(folders, create=True)
        try:
            _write_at(fd, name, data, creation_modes()[0], self.root.joinpath(*parts))
        finally:
            os.close(fd)

    def _open_file(self, parts: Sequence[str]) -> int:
        *folders, name = parts
        _check_name(name, self.root.joinpath(*folders))
        folder = self._open_folder(folders, create=False)
        try:
            return _open_regular(name, dir_fd=folder, shown=self.root.joinpath(*parts))
        finally:
            os.close(folder)

    def _read(self, parts: Sequence[str]) -> bytes:
        fd = self._open_file(parts)
        try:
            return _read_all(fd)
        finally:
            os.close(fd)

    def _sha256(self, parts: Sequence[str]) -> Optional[str]:
        return _sha256_of(lambda: self._open_file(parts))

    def move_in(self, source_root: os.PathLike | str, rel: str) -> bool:
        """Move the file ``source_root/rel`` to ``root/rel`` (a rename, both within this
        workspace's folder), creating folders with sisa's mode and following no link on either
        side. False when the source is not a regular file."""
        parts = tuple(rel.split("/"))
        *folders, name = parts
        _check_name(name, Path(source_root).joinpath(*folders))
        inside = self._parts(source_root)  # then no link is followed from root on
        src_fd = self._open_folder((*inside, *folders), create=False) if inside \
            else Workspace(source_root)._open_folder(folders, create=False)
        try:
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=src_fd, follow_symlinks=False).st_mode):
                    return False
            except FileNotFoundError:
                return False
            dst_fd = self._open_folder(folders, create=True)
            try:
                _refuse_link_at(dst_fd, name, self.root.joinpath(*parts))
                os.replace(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return True

    # -- manifests
    def exists(self) -> bool:
        """True when ``root`` holds a workspace; refuses an unsafe one (:meth:`check_safe`)."""
        self.check_safe()
        return self.manifest_path.exists()

    def manifest(self) -> WorkspaceManifest:
        """The shards manifest, checked against its checksum and format."""
        if not self.exists():
            raise SisaError(f"no sisa workspace in {self.root} (no {self.manifest_path}); "
                            f"run 'sisa train' first or pass --workdir")
        return WorkspaceManifest.from_json(self._read_json(self.manifest_path), str(self.manifest_path))

    def checkpoints(self) -> CheckpointsManifest:
        """The checkpoints manifest, checked against its checksum and format."""
        path = self.checkpoints_manifest_path
        return CheckpointsManifest.from_json(self._read_json(path), str(path))

    def save(self, manifest: WorkspaceManifest | CheckpointsManifest) -> None:
        """Write a manifest atomically to its place, sealed with a checksum."""
        path = self.manifest_path if isinstance(manifest, WorkspaceManifest) else self.checkpoints_manifest_path
        self.write_json(path, manifest.to_json())

    def write_json(self, path: Path, obj: dict[str, Any]) -> None:
        """Write a manifest atomically, sealed with a checksum of its contents."""
        sealed = dict(obj, checksum=json_checksum(obj))
        data = (json.dumps(sealed, indent=1, sort_keys=True) + "\n").encode()
        parts = self._parts(path)
        if parts is None:
            atomic_write(path, data)
        else:
            self._write(parts, data)

    def _read_json(self, path: Path) -> dict[str, Any]:
        parts = self._parts(path)
        try:
            if parts is None:
                fd = _open_regular(path)
                try:
                    raw = _read_all(fd)
                finally:
                    os.close(fd)
            else:
                raw = self._read(parts)
            obj = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise SisaError(f"missing {path}: the workspace is incomplete") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SisaError(f"cannot read {path}: {exc}") from None
        if not isinstance(obj, dict):
            raise SisaError(f"{path} is not a JSON object")
        if obj.get("checksum") != json_checksum(obj):
            raise SisaError(f"{path} was edited or damaged: its checksum does not match its contents")
        return obj

    # -- data files
    def write_data_file(self, name: str, data: bytes) -> str:
        self._write(("shards", name), data)
        return sha256_bytes(data)

    def write_versioned(self, prefix: str, data: bytes) -> tuple[str, str]:
        """Write Parquet bytes under a name carrying their sha256, so a new version never
        overwrites the file the manifest still points to. Returns (name, sha256)."""
        sha = sha256_bytes(data)
        name = f"{prefix}-{sha[:12]}.parquet"
        self._write(("shards", name), data)
        return name, sha

    def write_versioned_stream(self, prefix: str, write: Callable[[BinaryIO], None]) -> tuple[str, str]:
        """:meth:`write_versioned` for a file too large to hold in memory: ``write`` writes it
        to the file object it is given (a temporary file, renamed once its sha256 is known)."""
        sinks: list[_HashingSink] = []

        def write_to(fd: int) -> None:
            sinks.append(_HashingSink(fd))
            write(sinks[0])

        fd_dir = self._open_folder(("shards",), create=True)
        try:
            name = _commit_at(fd_dir, prefix, write_to, lambda: f"{prefix}-{sinks[0].digest.hexdigest()[:12]}.parquet",
                              creation_modes()[0], self.shards_dir)
        finally:
            os.close(fd_dir)
        return name, sinks[0].digest.hexdigest()

    def write_shard_slices(self, shard: int, slices: range, rows: ShardRows) -> tuple[DataFile, ...]:
        """Write one file per slice of ``slices`` with ``rows``' rows of that slice (rows in
        (slice, key) order; a slice without rows gets a file without rows); returns them."""
        parts = []
        ends = np.searchsorted(rows.slice, [slices.start, *(s + 1 for s in slices)], side="left")
        for slice_, lo, hi in zip(slices, ends[:-1], ends[1:]):
            part = rows.take(np.arange(lo, hi))
            name, sha = self.write_versioned(f"shard-{shard:03d}-{slice_:03d}", rows_to_parquet(
                part.ids, shard, part.slice, part.label, part.X))
            parts.append(DataFile(file=name, sha256=sha, rows=int(hi - lo), ids_sha256=ids_digest(part.ids),
                                  shard=shard, slice_rows=(int(hi - lo),)))
        if sum(p.rows for p in parts) != len(rows.ids):
            raise SisaError(f"shard {shard}: rows outside slices {slices.start}..{slices.stop - 1} were to be "
                            f"written as those slices' files; nothing was written to the manifest")
        return tuple(parts)

    def read_data_file(self, name: str, sha256: str, shape, dtype: str) -> ShardRows:
        return decode_rows(self.read_data_bytes(name), sha256, self.shards_dir / name, shape, dtype)

    def read_data_bytes(self, name: str) -> bytes:
        """The bytes of data file ``name`` (unchecked: :func:`decode_rows` checks them)."""
        try:
            return self._read(("shards", name))
        except OSError as exc:
            raise SisaError(f"cannot read shard file {self.shards_dir / name}: {exc}") from None

    # -- checkpoints
    @property
    def ledger_path(self) -> Path:
        return self.shards_dir / "ledger.sqlite"

    def checkpoint_name(self, shard: int, slice_: int, ids_sha256: str) -> str:
        return checkpoint_name(shard, slice_, ids_sha256)

    def write_checkpoint(self, name: str, data: bytes) -> None:
        """Write a checkpoint file's bytes (:func:`checkpoint_bytes`) atomically."""
        self._write(("checkpoints", *name.split("/")), data)

    def read_checkpoint_file(self, name: str) -> bytes:
        """The bytes of checkpoint file ``name`` (unchecked: :func:`decode_checkpoint` checks them)."""
        try:
            return self._read(("checkpoints", *name.split("/")))
        except OSError as exc:
            raise SisaError(f"cannot read checkpoint {self.checkpoints_dir / name}: {exc}") from None

    def load_checkpoint(self, record: CheckpointRecord, map_location: str = "cpu") -> dict[str, Any]:
        """The whole state of a checkpoint (weights and training state), every file checked
        against its sha256; never unpickles arbitrary objects."""
        return load_state(self.read_checkpoint_file, record, str(self.checkpoints_dir), map_location)

    def load_weights(self, record: CheckpointRecord, map_location: str = "cpu") -> dict[str, Any]:
        """The model weights of a checkpoint, reading only its weights file (the whole file of
        a format 1 checkpoint), checked against its sha256."""
        return load_model_weights(self.read_checkpoint_file, record, str(self.checkpoints_dir), map_location)

    def verify_checkpoint(self, record: CheckpointRecord) -> bool:
        """Whether every file of the checkpoint is here and matches its sha256."""
        return all(self._sha256(("checkpoints", *name.split("/"))) == sha for name, sha, _ in record.files())


def checkpoint_name(shard: int, slice_: int, ids_sha256: str) -> str:
    """Where the training state of ``shard`` after ``slice_`` on the ids with digest
    ``ids_sha256`` lives, under ``checkpoints/``; :func:`weights_name` gives its weights'."""
    return f"shard-{shard:03d}/slice-{slice_:02d}-{ids_sha256[:16]}.pt"


def weights_name(name: str) -> str:
    """The weights file beside the training-state file ``name``."""
    return name[:-len(".pt")] + ".weights.pt"


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """A checkpoint file's bytes: ``state`` (tensors and plain containers) as ``torch.save``
    writes it, always the same bytes for the same state."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def split_state(state: dict[str, Any]) -> tuple[bytes, bytes]:
    """The bytes of the training-state file and of the weights file of ``state``. The
    training state names its weights file's sha256, so the sha256 of the training-state file
    identifies the whole checkpoint (as receipts, replays and exactness checks use it)."""
    weights = checkpoint_bytes(state["model"])
    rest = {k: v for k, v in state.items() if k != "model"}
    return checkpoint_bytes(dict(rest, weights_sha256=sha256_bytes(weights))), weights


def legacy_checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """The bytes sisa wrote for ``state`` as a checkpoint of format 1 (one file, weights
    inside), to compare a replay with such a checkpoint."""
    return checkpoint_bytes({k: state[k] for k in ("model", "optimizer", "scheduler", "counters")})


def load_state(read, record: CheckpointRecord, where: str, map_location: str = "cpu") -> dict[str, Any]:
    """The whole state of ``record``'s checkpoint; ``read(name)`` gives a file's bytes."""
    state = decode_checkpoint(read(record.file), record.file, record.sha256, record, where, map_location)
    if record.weights is not None:
        if not isinstance(state, dict) or "model" in state or state.get("weights_sha256") != record.weights_sha256:
            raise SisaError(f"checkpoint {where}/{record.file} (shard {record.shard}, slice {record.slice}) does not "
                            f"name the weights its record names: it was changed or damaged")
        state = dict(state, model=load_model_weights(read, record, where, map_location))
        del state["weights_sha256"]
    return state


def load_model_weights(read, record: CheckpointRecord, where: str, map_location: str = "cpu") -> dict[str, Any]:
    """The model weights of ``record``'s checkpoint; ``read(name)`` gives a file's bytes."""
    if record.weights is None:
        state = decode_checkpoint(read(record.file), record.file, record.sha256, record, where, map_location)
        return state["model"]
    return decode_checkpoint(read(record.weights), record.weights, record.weights_sha256 or "", record, where,
                             map_location)


def decode_checkpoint(data: bytes, name: str, sha256: str, record: CheckpointRecord, where: str,
                      map_location: str = "cpu") -> Any:
    """What checkpoint file ``name`` (of ``record``, in folder ``where``) holds, after checking
    its bytes against ``sha256``; never unpickles arbitrary objects."""
    import torch

    shown = f"{where}/{name}" if where else name
    if sha256_bytes(data) != sha256:
        raise SisaError(f"checkpoint {shown} (shard {record.shard}, slice {record.slice}) "
                        f"does not match its recorded sha256: it was changed or damaged")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        # torch's own message advises weights_only=False, i.e. running the file's code: keep
        # only its first line, which says what was refused
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in reason:
            reason = "it holds objects other than tensors and plain containers"
        raise SisaError(f"refusing to load checkpoint {shown}: {reason}. Never unpickle it; restore it "
                        f"with 'sisa repair'") from None


def decode_rows(data: bytes, sha256: str, shown: os.PathLike | str, shape, dtype: str) -> ShardRows:
    """The rows in a data file's bytes, after checking them against ``sha256``."""
    return parquet_to_rows(checked_data(data, sha256, shown), tuple(shape), dtype)


def checked_data(data: bytes, sha256: str, shown: os.PathLike | str) -> bytes:
    """A data file's bytes, refused unless they match ``sha256``."""
    if sha256_bytes(data) != sha256:
        raise SisaError(f"shard file {shown} does not match its recorded sha256: it was changed or damaged")
    return data


def file_ids(workspace: Workspace, entry: DataFile | ShardData) -> tuple[np.ndarray, np.ndarray]:
    """Ids and slices of a data file (or of all a shard's files), read without the features."""
    import pyarrow.parquet as pq

    if isinstance(entry, ShardData):
        found = [file_ids(workspace, part) for part in entry.parts]
        for part, first, (_, slices) in zip(entry.parts, entry.first_slices(), found):
            check_slices(entry.shard, part.file, slices, first, part.slice_rows or ())
        if len(found) == 1:
            return found[0]
        return np.concatenate([ids for ids, _ in found]), np.concatenate([s for _, s in found])
    path = workspace.shards_dir / entry.file
    try:
        st = os.lstat(path)
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    known = _IDS_READ.get((str(path), entry.sha256))
    if known is not None and stamp is not None and known[0] == stamp:
        return known[1], known[2]
    data = workspace.read_data_bytes(entry.file)
    if sha256_bytes(data) != entry.sha256:
        raise SisaError(f"shard file {path} does not match its recorded sha256: it was changed or damaged")
    parquet = pq.ParquetFile(io.BytesIO(data))  # the bytes checked, not the file opened again
    table = parquet.read(columns=[c for c in ("id", "slice") if c in parquet.schema_arrow.names],
                         use_threads=ARROW_THREADS)
    column = table.column("id")
    ids = np.asarray(column.to_pylist(), dtype=object) if str(column.type) == "string" \
        else column.to_numpy().astype(np.int64)
    slices = table.column("slice").to_numpy() if "slice" in table.column_names else np.zeros(len(ids), int)
    ids.flags.writeable = slices.flags.writeable = False
    if len(_IDS_READ) >= 1024:
        _IDS_READ.clear()
    _IDS_READ[(str(path), entry.sha256)] = (stamp, ids, slices)
    return ids, slices


def check_slices(shard: int, name: str, slices: np.ndarray, first: int, counts) -> None:
    """Refuse a shard's data file whose rows are not those of the slices the manifest gives it
    (``counts`` rows of each slice from ``first`` on, in slice order): files reordered or
    swapped in the manifest would otherwise be trained as other slices."""
    expected = np.repeat(np.arange(first, first + len(counts)), counts)
    if len(slices) != len(expected) or not np.array_equal(slices, expected):
        raise SisaError(f"shard {shard}'s data file {name} does not hold the rows of slice(s) "
                        f"{first}..{first + len(counts) - 1} that the shards manifest gives it: the manifest "
                        f"or the file was changed outside sisa. Restore them from a backup, or retrain with "
                        f"'sisa train --force'")


_IDS_READ: dict[tuple[str, str], tuple] = {}
"""Ids and slices of data files this process has read and checked, by (path, sha256), with the
file's (device, inode, size, mtime) then: a deletion reads a shard's ids several times (plan,
purge, stale checkpoints), and hashing a large shard's files each time cost seconds. A file
changed since (another inode, size or mtime) is read and checked again."""

