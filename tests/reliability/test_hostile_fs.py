"""A hostile file system: symbolic links and other users' files planted in a workspace are never
followed or trusted, and sisa's copies of personal data are private to their owner."""

import json
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import SECRET, run_cli, tree

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")




def shard0_file(ws: Path) -> str:
    manifest = json.loads((ws / "shards" / "manifest.json").read_text())
    return next(e for e in manifest["shards"] if e["shard"] == 0)["files"][0]["file"]


def shard0_ids(ws: Path) -> str:
    ids = pq.read_table(ws / "shards" / shard0_file(ws), columns=["id"]).column("id").to_pylist()
    return ",".join(map(str, ids[:2]))


def shard0_checkpoint(ws: Path) -> str:
    manifest = json.loads((ws / "checkpoints" / "manifest.json").read_text())
    return next(r for r in manifest["checkpoints"] if r["shard"] == 0 and r["slice"] == 0)["file"]


# what a hostile owner of the folder swaps for a link, as a path relative to the workspace
TARGETS = {
    "shards manifest": lambda ws: "shards/manifest.json",
    "checkpoints manifest": lambda ws: "checkpoints/manifest.json",
    "shard file": lambda ws: f"shards/{shard0_file(ws)}",
    "checkpoint file": lambda ws: f"checkpoints/{shard0_checkpoint(ws)}",
    "shards folder": lambda ws: "shards",
    "checkpoints folder": lambda ws: "checkpoints",
    "checkpoint folder": lambda ws: "checkpoints/shard-000",
}


def test_planted_links_at_the_old_temporary_names_are_never_followed(ws, victim):
    """The attack of issue 14: links named like the temporary files of a range of process ids."""
    pid = os.getpid()
    for folder in (ws / "shards", ws / "checkpoints"):
        for p in range(max(2, pid - 20), pid + 20):
            (folder / f".manifest.json.tmp-{p}").symlink_to(victim)
    result = run_cli("delete", "--workdir", ws, "--ids", shard0_ids(ws))
    assert victim.read_bytes() == SECRET
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    for manifest in (ws / "shards" / "manifest.json", ws / "checkpoints" / "manifest.json"):
        assert not manifest.is_symlink()
    assert result.code == 1, result.err
    assert "symbolic link" in result.err and ".manifest.json.tmp-" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("allow_foreign", [False, True])
@pytest.mark.parametrize("target", list(TARGETS))
def test_a_workspace_file_swapped_for_a_link_outside_is_refused(ws, tmp_path, monkeypatch, target,
                                                                allow_foreign):
    if allow_foreign:  # the opt-out covers other users' files, never links
        monkeypatch.setenv("SISA_ALLOW_FOREIGN_OWNER", "1")
    ids = shard0_ids(ws)
    rel = TARGETS[target](ws)
    outside = tmp_path / "outside"
    outside.mkdir()
    moved = outside / Path(rel).name
    os.rename(ws / rel, moved)  # the real thing, so following the link would "work"
    (ws / rel).symlink_to(moved)
    before = tree(outside)
    for command in (["status"], ["delete", "--ids", ids]):
        result = run_cli(*command, "--workdir", ws)
        assert result.code == 1, (command, result.out, result.err)
        assert "symbolic link" in result.err and Path(rel).name in result.err, result.err
        assert "Traceback" not in result.err
    assert tree(outside) == before
    assert (ws / rel).is_symlink()


def test_a_ledger_linked_to_a_file_outside_is_never_written(ws, tmp_path):
    victim = tmp_path / "empty"  # SQLite would take an empty file for a new database
    victim.touch(mode=0o600)
    (ws / "shards" / "ledger.sqlite").symlink_to(victim)
    result = run_cli("delete", "--workdir", ws, "--ids", shard0_ids(ws))
    assert victim.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "ws"]
    assert result.code == 1 and "symbolic link" in result.err and "ledger.sqlite" in result.err


def test_train_force_never_clears_through_a_linked_folder(ws, tmp_path, source):
    outside = tmp_path / "outside"
    os.rename(ws / "shards", outside)
    (ws / "shards").symlink_to(outside)
    before = tree(outside)
    result = run_cli("train", "--data", f"parquet:{source}", "--workdir", ws, "--force",
                     "--shards", "2", "--slices", "2", "--epochs", "1")
    assert result.code == 1 and "symbolic link" in result.err and "shards" in result.err, result.err
    assert tree(outside) == before


@needs_root
@pytest.mark.parametrize("target", ["shards manifest", "checkpoints manifest", "shard file",
                                    "checkpoint file", "shards folder", "checkpoint folder"])
def test_a_workspace_file_owned_by_another_user_is_refused_unless_allowed(ws, monkeypatch, target):
    monkeypatch.delenv("SISA_ALLOW_FOREIGN_OWNER", raising=False)
    ids = shard0_ids(ws)
    rel = TARGETS[target](ws)
    os.lchown(ws / rel, 65534, -1)
    before = tree(ws)
    for command in (["status"], ["delete", "--ids", ids]):
        result = run_cli(*command, "--workdir", ws)
        assert result.code == 1, (command, result.err)
        assert "owned by" in result.err and Path(rel).name in result.err, result.err
        assert "SISA_ALLOW_FOREIGN_OWNER" in result.err
    assert tree(ws) == before
    monkeypatch.setenv("SISA_ALLOW_FOREIGN_OWNER", "1")
    allowed = run_cli("status", "--workdir", ws, "--json")
    assert allowed.code == 0, allowed.err


@needs_root
def test_a_foreign_ledger_is_refused(ws, monkeypatch):
    monkeypatch.delenv("SISA_ALLOW_FOREIGN_OWNER", raising=False)
    assert run_cli("delete", "--workdir", ws, "--ids", shard0_ids(ws)).code == 0
    os.chown(ws / "shards" / "ledger.sqlite", 65534, -1)
    result = run_cli("status", "--workdir", ws)
    assert result.code == 1 and "owned by" in result.err and "ledger.sqlite" in result.err


# -- permissions


def modes(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return out


def train_and_delete(table_file, ws: Path) -> None:
    data = table_file()
    data.chmod(0o600)  # the user's private source
    trained = run_cli("train", "--data", f"parquet:{data}", "--workdir", ws, "--shards", "2",
                      "--slices", "2", "--epochs", "1")
    assert trained.code == 0, trained.err
    deleted = run_cli("delete", "--workdir", ws, "--ids", "1000,1001,1002")  # writes the ledger
    assert deleted.code == 0, deleted.err
    assert (ws / "shards" / "ledger.sqlite").is_file()
    assert list((ws / "checkpoints").glob("shard-*/*.pt")) and list((ws / "shards").glob("test*.parquet"))


def modes_after_use(table_file, ws: Path, *, umask: int) -> dict[str, tuple[str, int]]:
    """The modes of everything in ``ws`` after a train and a delete under ``umask``."""
    old = os.umask(umask)
    try:
        train_and_delete(table_file, ws)
    finally:
        os.umask(old)
    return modes(ws)


def wrong_modes(found: dict[str, tuple[str, int]], *, folders: int, files: int) -> dict:
    return {rel: (kind, oct(mode)) for rel, (kind, mode) in found.items()
            if kind == "other" or mode != (folders if kind == "dir" else files)}


def test_a_new_workspace_and_everything_in_it_is_private(tmp_path, table_file, monkeypatch):
    monkeypatch.delenv("SISA_FILE_MODE", raising=False)
    ws = tmp_path / "ws"
    found = modes_after_use(table_file, ws, umask=0o022)
    assert not wrong_modes(found, folders=0o700, files=0o600)
    assert {"shards", "checkpoints", "checkpoints/shard-000", "shards/ledger.sqlite"} <= set(found)


def test_the_shared_mode_follows_the_umask(tmp_path, table_file, monkeypatch):
    monkeypatch.setenv("SISA_FILE_MODE", "umask")
    ws = tmp_path / "ws"
    found = modes_after_use(table_file, ws, umask=0o027)
    found.pop(".sisa.lock", None)  # the lock file holds no data and is the lock's own business
    assert not wrong_modes(found, folders=0o750, files=0o640)


def test_an_unknown_file_mode_setting_is_refused(tmp_path, table_file, monkeypatch):
    monkeypatch.setenv("SISA_FILE_MODE", "world")
    result = run_cli("train", "--data", f"parquet:{table_file()}", "--workdir", tmp_path / "ws",
                     "--shards", "2", "--slices", "2", "--epochs", "1")
    assert result.code == 1 and "SISA_FILE_MODE" in result.err and "Traceback" not in result.err


def test_the_ledger_and_its_companions_are_private(tmp_path, monkeypatch):
    from sisa.workspace.ledger import Ledger

    monkeypatch.delenv("SISA_FILE_MODE", raising=False)
    old = os.umask(0o022)
    try:
        ledger = Ledger(tmp_path / "ledger.sqlite")
        try:
            ledger.add_request([("i:1", 0, 0)])
            files = sorted(tmp_path.iterdir())
            assert [p.name for p in files] == ["ledger.sqlite", "ledger.sqlite-shm", "ledger.sqlite-wal"]
            assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
                {p.name: "0o600" for p in files}
        finally:
            ledger.close()
    finally:
        os.umask(old)


def test_predict_output_is_the_users_file_and_follows_the_umask(ws, tmp_path, source, monkeypatch):
    monkeypatch.delenv("SISA_FILE_MODE", raising=False)
    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir()
    old = os.umask(0o022)
    try:
        result = run_cli("predict", "--workdir", ws, "--input", f"parquet:{source}", "--output", out)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["predictions.csv"]
