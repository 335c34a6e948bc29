"""``sisa serve``: deletions forwarded to a warm process are the same deletions, exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import checkpoint_shas, make_table, run_cli, tree

FLAGS = ("--shards", "3", "--slices", "2", "--epochs", "3")


def sisa(*argv, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sisa", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


class ServerProcess:
    def __init__(self, workdir: Path, env=None) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-m", "sisa", "serve", "--workdir", str(workdir)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"sisa serve did not start: {self.proc.communicate()}")
            time.sleep(0.1)

    def answers(self) -> bool:
        from sisa.serve import connect

        sock = connect(self.workdir, timeout=1.0)
        if sock is not None:
            sock.close()
        return sock is not None

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


@pytest.fixture
def workspace(tmp_path):
    table = make_table(n=300)
    pq.write_table(table, tmp_path / "all.parquet")
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'all.parquet'}", "--workdir", tmp_path / "ws",
                   *FLAGS).code == 0
    return tmp_path, table


def train_ids(ws: Path) -> list[int]:
    import pyarrow as pa

    tables = [pq.read_table(p, columns=["id"]) for p in sorted((ws / "shards").glob("shard-*.parquet"))]
    return sorted(pa.concat_tables(tables).column("id").to_pylist())


def test_forwarded_deletions_are_exact_and_print_what_the_command_prints(workspace):
    tmp_path, table = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    server = ServerProcess(ws)
    try:
        assert (ws / "serve.sock").stat().st_mode & 0o777 == 0o600
        first = sisa("delete", "--workdir", ws, "--ids", ids[3])
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("deleted 1 id(s) in ") and "retrained from slice" in first.stdout
        assert "slice" in first.stderr  # the retraining progress reaches the client as it happens
        # relative paths are the client's: an ids file next to the client, --workdir relative too
        (tmp_path / "ids.txt").write_text(f"{ids[10]}\n{ids[40]}\n")
        second = sisa("delete", "--workdir", "ws", "--ids-file", "ids.txt", "--json", cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert sorted(json.loads(second.stdout)["deleted"]) == [ids[10], ids[40]]
        # errors keep their message and exit status, and change nothing
        before = tree(ws / "checkpoints")
        bad = sisa("delete", "--workdir", ws, "--ids", "123456789")
        assert bad.returncode == 1 and "not in the training data" in bad.stderr and bad.stdout == ""
        assert sisa("delete", "--workdir", ws).returncode == 1
        assert tree(ws / "checkpoints") == before
    finally:
        code, _, log = server.stop()
    assert code == 0 and not (ws / "serve.sock").exists()
    assert log.count("-> exit 0") == 2 and log.count("-> exit 1") == 2  # all four ran in the server

    forget = {ids[3], ids[10], ids[40]}
    kept = table.filter([i not in forget for i in table.column("id").to_pylist()])
    pq.write_table(kept, tmp_path / "kept.parquet")
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'kept.parquet'}", "--workdir", tmp_path / "fresh",
                   *FLAGS).code == 0
    assert checkpoint_shas(ws) == checkpoint_shas(tmp_path / "fresh")
    assert run_cli("audit", "--workdir", ws).code == 0


def test_the_client_imports_neither_torch_nor_numpy(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    server = ServerProcess(ws)
    try:
        probe = ("import sys; from sisa.cli import main; code = main(sys.argv[1:]); "
                 "print(sorted(m for m in ('torch', 'numpy', 'pyarrow') if m in sys.modules)); sys.exit(code)")
        result = subprocess.run([sys.executable, "-c", probe, "delete", "--workdir", str(ws), "--ids", str(ids[0])],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "[]"
    finally:
        server.stop()


def test_a_killed_server_leaves_a_socket_that_clients_and_servers_get_past(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    server = ServerProcess(ws)
    again = None
    try:
        assert sisa("serve", "--workdir", ws).returncode == 1  # one server per workspace
        server.proc.kill()
        server.proc.wait()
        assert (ws / "serve.sock").exists()
        result = sisa("delete", "--workdir", ws, "--ids", ids[5])
        assert result.returncode == 0 and "running in this process" in result.stderr
        again = ServerProcess(ws)  # replaces the stale socket
        assert sisa("delete", "--workdir", ws, "--ids", ids[6]).returncode == 0
        assert sisa("delete", "--workdir", ws, "--ids", ids[7], "--no-serve").returncode == 0
    finally:
        if again is not None:
            code, _, log = again.stop()
            assert code == 0 and log.count("-> exit 0") == 1  # --no-serve ran in its own process
    assert run_cli("audit", "--workdir", ws).code == 0


def test_a_server_that_dies_mid_request_leaves_it_unacknowledged_and_recoverable(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    env = dict(os.environ, SISA_CRASH_AT="before-commit")
    server = ServerProcess(ws, env=env)
    result = sisa("delete", "--workdir", ws, "--ids", ids[8])
    assert result.returncode == 1 and "stopped before answering" in result.stderr
    assert server.proc.wait(timeout=30) == -signal.SIGKILL
    status = run_cli("status", "--workdir", ws, "--json")
    assert status.json["deletions"]["pending"] == 1
    # the next command finishes the recorded request
    assert run_cli("recover", "--workdir", ws).code == 0
    status = run_cli("status", "--workdir", ws, "--json").json
    assert status["deletions"] == {"deleted_ids": 1, "pending": 0}
    assert ids[8] not in train_ids(ws)


def test_only_delete_is_served_and_bad_requests_are_refused(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    server = ServerProcess(ws)
    try:
        def ask(payload: bytes) -> dict:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(ws / "serve.sock"))
            with sock:
                sock.sendall(payload)
                return json.loads(sock.makefile("rb").readlines()[-1])

        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(str(ws / "serve.sock"))  # connects and says nothing: dropped after a while
        with silent:
            started = time.monotonic()
            assert ask(json.dumps({"argv": ["train", "--force"], "cwd": "/"}).encode() + b"\n")["exit"] == 2
            assert time.monotonic() - started < 30
            assert json.loads(silent.makefile("rb").readline())["exit"] == 2
        assert ask(b"not json\n")["exit"] == 2
        other = ask(json.dumps({"argv": ["delete", "--workdir", str(tmp_path), "--ids", "1"],
                                "cwd": "/"}).encode() + b"\n")
        assert other["exit"] == 1
        assert server.answers()  # still serving after all of them
    finally:
        server.stop()
    assert not list(tmp_path.glob("*.sock"))


def test_serve_refuses_a_folder_without_a_workspace(tmp_path):
    result = sisa("serve", "--workdir", tmp_path)
    assert result.returncode == 1 and "sisa serve: error:" in result.stderr
    assert not (tmp_path / "serve.sock").exists()


def test_peer_uid_reads_the_other_end(tmp_path):
    from sisa.serve import peer_uid

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == os.getuid()
