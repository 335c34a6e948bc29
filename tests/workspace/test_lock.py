"""One writer at a time: concurrent sisa processes never lose or mix up a deletion."""

import errno
import os
import shutil
import stat
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from helpers import checkpoint_shas, make_table, run_cli, tree, without

from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.workspace.files import Workspace
from sisa.workspace.ledger import Ledger
from sisa.workspace.lock import lock_path, workspace_lock

SETTINGS = Settings(shards=4, slices=2, epochs=2, batch_size=32)

HOLD = """
import sys, time
from sisa.workspace.lock import workspace_lock
with workspace_lock(sys.argv[1], exclusive=True):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""

TRY_LOCK = """
import sys
from sisa.errors import SisaError
from sisa.workspace.lock import workspace_lock
try:
    with workspace_lock(sys.argv[1], exclusive=False, wait=False):
        print("free")
except SisaError:
    print("busy")
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.parquet"
    pq.write_table(make_table(n=400, features=4), path)
    dataset = load(f"parquet:{path}")
    ws = tmp_path_factory.mktemp("base") / "ws"
    train_workspace(ws, dataset, SETTINGS)
    return dataset, ws


def holder(ws, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ws), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_no_wait_fails_fast_and_changes_nothing(trained, tmp_path):
    dataset, base = trained
    shutil.copytree(base, tmp_path / "ws")
    before = tree(tmp_path / "ws")
    proc = holder(tmp_path / "ws", 30)
    try:
        started = time.perf_counter()
        result = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", str(dataset.train.ids[0]), "--no-wait")
        assert time.perf_counter() - started < 10
        assert result.code == 1 and "in use by another sisa process" in result.err
        assert tree(tmp_path / "ws") == before
        for command in (("status",), ("eval",), ("train", "--force", "--epochs", "1")):
            busy = run_cli(*command, "--workdir", tmp_path / "ws", "--no-wait")
            assert busy.code == 1 and "in use by another sisa process" in busy.err, command
    finally:
        proc.kill()
        proc.wait()
    assert run_cli("status", "--workdir", tmp_path / "ws", "--no-wait").code == 0


def test_a_writer_waits_for_the_lock_then_proceeds(trained, tmp_path):
    dataset, base = trained
    shutil.copytree(base, tmp_path / "ws")
    proc = holder(tmp_path / "ws", 2)
    result = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", str(dataset.train.ids[0]), "--json")
    proc.wait()
    assert result.code == 0 and "waiting for another sisa process" in result.err
    assert result.json["deleted"] == [int(dataset.train.ids[0])]


def test_four_processes_deleting_at_once_lose_nothing(trained, tmp_path):
    dataset, base = trained
    shutil.copytree(base, tmp_path / "ws")
    ids = [int(i) for i in dataset.train.ids]
    batches = [ids[k::37][:4] for k in range(4)]
    procs = [subprocess.Popen([sys.executable, "-m", "sisa", "delete", "--workdir", str(tmp_path / "ws"),
                               "--ids", ",".join(map(str, batch)), "--executor", "local"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for batch in batches]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    removed = {i for batch in batches for i in batch}
    ledger = Ledger(Workspace(tmp_path / "ws").ledger_path)
    try:
        assert len(ledger.deleted()) == len(removed) and ledger.open_requests() == []
        assert ledger.counts()["committed"] == 4
    finally:
        ledger.close()
    train_workspace(tmp_path / "fresh", without(dataset, removed), SETTINGS)
    assert checkpoint_shas(tmp_path / "ws") == checkpoint_shas(tmp_path / "fresh")
    assert run_cli("audit", "--workdir", tmp_path / "ws", "--replay").code == 0


def test_a_wait_times_out_naming_the_holder(tmp_path, monkeypatch):
    (tmp_path / "ws").mkdir()
    proc = holder(tmp_path / "ws", 30)
    try:
        started = time.perf_counter()
        with pytest.raises(SisaError) as info:
            with workspace_lock(tmp_path / "ws", exclusive=True, timeout=0.5):
                pass
        print("timeout parameter:", info.value)
        assert time.perf_counter() - started < 10
        assert f"pid {proc.pid}" in str(info.value) and "0.5 s" in str(info.value)
        # the environment sets the default wait of every command
        monkeypatch.setenv("SISA_LOCK_TIMEOUT", "0.5")
        result = run_cli("status", "--workdir", tmp_path / "ws")
        print("SISA_LOCK_TIMEOUT:", result.code, result.err)
        assert result.code == 1 and f"pid {proc.pid}" in result.err
        assert "waiting for another sisa process" in result.err
        # --no-wait names the holder too
        monkeypatch.delenv("SISA_LOCK_TIMEOUT")
        busy = run_cli("status", "--workdir", tmp_path / "ws", "--no-wait")
        assert busy.code == 1 and "in use by another sisa process" in busy.err and f"pid {proc.pid}" in busy.err
        monkeypatch.setenv("SISA_LOCK_TIMEOUT", "soon")
        bad = run_cli("status", "--workdir", tmp_path / "ws")
        assert bad.code == 1 and "SISA_LOCK_TIMEOUT" in bad.err
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_a_private_file_and_a_new_folder_gets_one(tmp_path):
    ws = tmp_path / "new" / "ws"
    with workspace_lock(ws, exclusive=True):  # what train does with a folder that does not exist yet
        st = os.lstat(lock_path(ws))
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert lock_path(ws).parent == ws
    with workspace_lock(tmp_path / "absent", exclusive=False):  # a reader creates nothing
        pass
    assert not (tmp_path / "absent").exists()


def test_locks_stay_re_entrant_within_a_process(tmp_path):
    with workspace_lock(tmp_path, exclusive=True, wait=False):
        with workspace_lock(tmp_path, exclusive=True, wait=False), workspace_lock(tmp_path, exclusive=False):
            pass
    with workspace_lock(tmp_path, exclusive=False, wait=False):
        with workspace_lock(tmp_path, exclusive=False, wait=False):
            pass
        with pytest.raises(RuntimeError, match="cannot be upgraded"):
            with workspace_lock(tmp_path, exclusive=True, wait=False):
                pass
    with workspace_lock(tmp_path, exclusive=True, wait=False):  # every one was released
        pass


def test_a_symlinked_or_open_lock_file_is_refused_or_closed(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").touch()  # a workspace's folder: its lock file stays
    (tmp_path / "elsewhere").touch()
    lock_path(tmp_path).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SisaError, match="not a regular file"):
        with workspace_lock(tmp_path, exclusive=True):
            pass
    lock_path(tmp_path).unlink()
    lock_path(tmp_path).touch(mode=0o644)
    os.chmod(lock_path(tmp_path), 0o644)  # made by some copy tool: other users could open it
    with workspace_lock(tmp_path, exclusive=False):
        pass
    assert stat.S_IMODE(os.lstat(lock_path(tmp_path)).st_mode) == 0o600


def test_a_reader_of_a_read_only_folder_proceeds_without_a_lock(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # what a read-only mount answers
        if str(path) == str(lock_path(tmp_path.resolve())) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with workspace_lock(tmp_path, exclusive=False):
        pass
    with pytest.raises(OSError):
        with workspace_lock(tmp_path, exclusive=True):
            pass


def test_a_lock_file_alone_in_its_folder_is_removed_and_waiters_follow(tmp_path):
    (tmp_path / "ws").mkdir()
    with workspace_lock(tmp_path / "ws", exclusive=False):
        assert lock_path(tmp_path / "ws").exists()
    assert list((tmp_path / "ws").iterdir()) == []  # a command on an empty folder leaves it empty
    proc = holder(tmp_path / "ws", 1.5)  # removes the lock file when it lets go
    with workspace_lock(tmp_path / "ws", exclusive=True, timeout=30):
        # this process holds the file now at the path, not the one removed under its wait
        assert proc.wait(timeout=30) == 0
        probe = subprocess.run([sys.executable, "-c", TRY_LOCK, str(tmp_path / "ws")], capture_output=True,
                               text=True, timeout=60)
        assert probe.stdout.strip() == "busy", probe.stderr
    assert list((tmp_path / "ws").iterdir()) == []
