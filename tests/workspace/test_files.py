"""Workspace files: atomic writes, checksummed checkpoints, and no link ever followed."""

import io
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from helpers import SECRET

from sisa.errors import SisaError
from sisa.workspace.files import Workspace, atomic_write, checkpoint_bytes, sha256_bytes
from sisa.workspace.manifest import CheckpointRecord


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
        monkeypatch.setattr(os, "write", boom)
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
    data = checkpoint_bytes(state)
    ws.write_checkpoint(name, data)
    sha = sha256_bytes(data)
    assert checkpoint_bytes(state) == data  # the same state, the same bytes
    record = CheckpointRecord(shard=0, slice=1, file=name, sha256=sha)
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
    record = CheckpointRecord(shard=0, slice=0, file=name, sha256=sha256_bytes(raw.getvalue()))
    with pytest.raises(SisaError, match="refusing to load checkpoint"):
        ws.load_checkpoint(record)
    assert not marker.exists()


# -- a hostile file system (issue 14)

def test_os_replace_replaces_a_link_itself_never_its_target(tmp_path, victim):
    """What atomic_write relies on: rename() swaps the directory entry, a link included."""
    link, new = tmp_path / "link", tmp_path / "new"
    link.symlink_to(victim)
    new.write_bytes(b"new")
    os.replace(new, link)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert victim.read_bytes() == SECRET


def test_atomic_write_never_writes_through_a_planted_temporary_name(tmp_path, victim):
    path = tmp_path / "ws" / "manifest.json"
    path.parent.mkdir()
    for pid in range(max(2, os.getpid() - 5), os.getpid() + 5):
        (path.parent / f".manifest.json.tmp-{pid}").symlink_to(victim)
    atomic_write(path, b"{}")
    assert victim.read_bytes() == SECRET
    assert not path.is_symlink() and path.read_bytes() == b"{}"
    leftovers = [p.name for p in path.parent.iterdir() if not p.is_symlink() and p != path]
    assert leftovers == []


def test_atomic_write_refuses_a_link_at_the_destination(tmp_path, victim):
    path = tmp_path / "manifest.json"
    path.symlink_to(victim)
    with pytest.raises(SisaError, match="manifest.json.*symbolic link"):
        atomic_write(path, b"{}")
    assert victim.read_bytes() == SECRET and path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "victim"]


def test_atomic_write_makes_private_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("SISA_FILE_MODE", raising=False)
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new" / "deeper" / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "deeper" / "f.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new" / "deeper").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_workspace_writes_never_follow_a_linked_folder(tmp_path):
    ws = Workspace(tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    ws.checkpoints_dir.mkdir(parents=True)
    (ws.checkpoints_dir / "shard-000").symlink_to(outside)
    with pytest.raises(SisaError, match="shard-000.*symbolic link"):
        ws.write_checkpoint(ws.checkpoint_name(0, 0, "ab" * 32), checkpoint_bytes({"w": torch.zeros(2)}))
    assert list(outside.iterdir()) == []
    ws.shards_dir.symlink_to(outside)
    with pytest.raises(SisaError, match="shards.*symbolic link"):
        ws.write_data_file("test.parquet", b"rows")
    assert list(outside.iterdir()) == []


def test_workspace_reads_never_follow_a_link(tmp_path):
    ws = Workspace(tmp_path / "ws")
    name = ws.checkpoint_name(0, 0, "ab" * 32)
    ws.write_checkpoint(name, checkpoint_bytes({"w": torch.zeros(2)}))
    sha = sha256_bytes(checkpoint_bytes({"w": torch.zeros(2)}))
    record = CheckpointRecord(shard=0, slice=0, file=name, sha256=sha)
    real = ws.checkpoints_dir / name
    elsewhere = tmp_path / "elsewhere.pt"
    os.rename(real, elsewhere)
    real.symlink_to(elsewhere)  # same bytes, so only the link itself is wrong
    with pytest.raises(SisaError, match="symbolic link"):
        ws.load_checkpoint(record)
    assert not ws.verify_checkpoint(record)


def test_ids_read_again_after_the_file_changed_in_the_same_process(small_trained, tmp_path):
    from helpers import copy_workspace

    from sisa.workspace.files import file_ids

    ws = Workspace(copy_workspace(small_trained, tmp_path))
    part = ws.manifest().shards[0].parts[0]
    ids, _ = file_ids(ws, part)
    assert len(ids) == part.rows and file_ids(ws, part)[0] is ids  # checked once, then remembered
    path = ws.shards_dir / part.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))  # another size or mtime: read and checked again
    with pytest.raises(SisaError, match="does not match its recorded sha256"):
        file_ids(ws, part)
