"""Files a shard job carries with it instead of reading a workspace folder.

A Ray worker on another machine does not see the workspace. The driver sends such a job the
bytes of every file it reads (its shard's rows, the checkpoint it starts from, the test rows)
through Ray's object store, and the job keeps the checkpoints it makes in memory and returns
them; the driver checks their sha256 and writes them. The driver stays the only writer of the
workspace, and the job reads and writes through the same calls as it does on a
:class:`~sisa.workspace.files.Workspace`, with the same checks.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from sisa.errors import SisaError
from sisa.workspace.files import (
    Workspace,
    checkpoint_name,
    decode_checkpoint,
    decode_rows,
)
from sisa.workspace.manifest import CheckpointRecord
from sisa.workspace.rows import ShardRows


class CarriedFiles:
    """Data files and checkpoints by name (``data`` under ``shards/``, ``checkpoints`` under
    ``checkpoints/``); what the job writes is kept in :attr:`written`."""

    def __init__(self, data: Mapping[str, bytes], checkpoints: Mapping[str, bytes]) -> None:
        self.data = dict(data)
        self.checkpoints = dict(checkpoints)
        self.written: dict[str, bytes] = {}

    @classmethod
    def gather(cls, workspace: Workspace, data: Iterable[str], checkpoints: Iterable[CheckpointRecord]) -> "CarriedFiles":
        """The named files of ``workspace``, read for a job that cannot read them itself."""
        return cls({name: workspace.read_data_bytes(name) for name in set(data)},
                   {r.file: workspace.read_checkpoint_bytes(r) for r in checkpoints})

    def read_data_file(self, name: str, sha256: str, shape, dtype: str) -> ShardRows:
        return decode_rows(self._get(self.data, name, "shard file"), sha256, name, shape, dtype)

    def checkpoint_name(self, shard: int, slice_: int, ids_sha256: str) -> str:
        return checkpoint_name(shard, slice_, ids_sha256)

    def write_checkpoint(self, name: str, data: bytes) -> None:
        self.written[name] = data

    def load_checkpoint(self, record: CheckpointRecord, map_location: str = "cpu") -> dict[str, Any]:
        data = self.written.get(record.file) or self._get(self.checkpoints, record.file, "checkpoint")
        return decode_checkpoint(data, record, record.file, map_location)

    @staticmethod
    def _get(files: Mapping[str, bytes], name: str, what: str) -> bytes:
        try:
            return files[name]
        except KeyError:
            raise SisaError(f"{what} {name} was not sent with the job") from None
