import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from sisa.errors import SisaError
from sisa.store import Workspace, atomic_write, ids_digest, sha256_bytes


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "f.bin"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old contents")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_at == "write":
        real_open = open

        class Full(io.FileIO):
            def write(self, data):
                boom()

        monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k:
                            Full(p, "w") if "w" in mode else real_open(p, mode, *a, **k))
    else:
        monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, b"new contents that never land")
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_checkpoint_round_trip_and_tamper_detection(tmp_path):
    ws = Workspace(tmp_path)
    state = {"model": {"w": torch.arange(4.0)}, "counters": {"epochs": 3}}
    name = ws.checkpoint_name(0, 1, "ab" * 32)
    sha = ws.write_checkpoint(name, state)
    record = {"file": name, "sha256": sha, "shard": 0, "slice": 1}
    assert torch.equal(ws.load_checkpoint(record)["model"]["w"], torch.arange(4.0))
    assert ws.verify_checkpoint(record)
    path = ws.checkpoints_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert not ws.verify_checkpoint(record)
    with pytest.raises(SisaError, match="does not match its recorded sha256"):
        ws.load_checkpoint(record)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    ws = Workspace(tmp_path)
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"x": 1}, buffer)
    payload = pickle.dumps({"model": _Payload(marker)})
    # a torch.save archive whose data.pkl is the malicious pickle, recorded with its true sha256
    import zipfile
    raw = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(raw, "w") as dst:
        for item in src.infolist():
            data = payload if item.filename.endswith("data.pkl") else src.read(item)
            dst.writestr(item, data)
    name = "shard-000/slice-00-evil.pt"
    (ws.checkpoints_dir / "shard-000").mkdir(parents=True)
    (ws.checkpoints_dir / name).write_bytes(raw.getvalue())
    record = {"file": name, "sha256": sha256_bytes(raw.getvalue()), "shard": 0, "slice": 0}
    with pytest.raises(SisaError, match="refusing to load checkpoint"):
        ws.load_checkpoint(record)
    assert not marker.exists()


def test_ids_digest_is_a_set_hash():
    assert ids_digest([1, 2, 3]) == ids_digest([3, 2, 1])
    assert ids_digest([1, 2]) != ids_digest(["1", "2"])
    assert ids_digest(["a", "bc"]) != ids_digest(["ab", "c"])
