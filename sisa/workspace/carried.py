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
from sisa.workspace.files import Workspace, decode_rows, load_state
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
                   {name: workspace.read_checkpoint_file(name) for r in checkpoints for name, _, _ in r.files()})

    def read_data_file(self, name: str, sha256: str, shape, dtype: str) -> ShardRows:
        return decode_rows(self._get(self.data, name, "shard file"), sha256, name, shape, dtype)

    def write_checkpoint(self, name: str, data: bytes) -> None:
        self.written[name] = data

    def load_checkpoint(self, record: CheckpointRecord, map_location: str = "cpu") -> dict[str, Any]:
        return load_state(self._checkpoint, record, "", map_location)

    def _checkpoint(self, name: str) -> bytes:
        return self.written[name] if name in self.written else self._get(self.checkpoints, name, "checkpoint")

    @staticmethod
    def _get(files: Mapping[str, bytes], name: str, what: str) -> bytes:
        try:
            return files[name]
        except KeyError:
            raise SisaError(f"{what} {name} was not sent with the job") from None
