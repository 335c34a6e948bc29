"""``sisa serve``: deletions forwarded to a warm process are the same deletions, exactly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import checkpoint_shas, make_table, run_cli, tree

FLAGS = ("--shards", "3", "--slices", "2", "--epochs", "3")


def sisa(*argv, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sisa", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


class ServerProcess:
    def __init__(self, workdir: Path, env=None, cwd=None) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, "-m", "sisa", "serve", "--workdir", str(workdir)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"sisa serve did not start: {self.proc.communicate()}")
            time.sleep(0.1)

    def answers(self) -> bool:
        from sisa.serve.client import connect

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
        assert re.match(r"deleted 1 (of 1 )?id\(s\)", first.stdout) and "retrained" in first.stdout and "from slice" in first.stdout
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
    from sisa.serve.client import peer_uid

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_uid(a) == os.getuid()


def test_the_server_runs_requests_with_the_function_it_is_given(workspace, monkeypatch):
    from sisa.serve.server import Server

    tmp_path, _ = workspace
    seen = []

    def runner(request, root):  # what the CLI passes in; the server knows no command line
        seen.append((request, root, os.getcwd()))
        print("ran it")
        print("progress", file=sys.stderr)
        server.stop()  # busy: stops after this request
        return 3, "delete, a summary"

    server = Server(tmp_path / "ws", runner)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("SISA_LOCK_TIMEOUT", "7")
        monkeypatch.setenv("SISA_EXECUTOR", "local")
        result = run_cli("delete", "--workdir", "ws", "--ids-file", "ids.txt")
        thread.join(timeout=30)
    finally:
        server.close()
    assert result.code == 3 and result.out == "ran it\n" and "progress" in result.err
    [(request, root, cwd)] = seen
    assert request.argv == ["delete", "--workdir", "ws", "--ids-file", "ids.txt"]  # parsed by the runner, once
    assert request.cwd == str(tmp_path) and root == (tmp_path / "ws").resolve()
    assert request.env == {"SISA_LOCK_TIMEOUT": "7", "SISA_EXECUTOR": "local"}  # the client's settings
    assert cwd == str(tmp_path) and server.served == 1


def test_a_forwarded_command_takes_its_paths_from_the_client_folder_without_changing_folder(workspace):
    from sisa.cli.app import run_request
    from sisa.serve.client import Request

    tmp_path, _ = workspace
    ids = train_ids(tmp_path / "ws")
    (tmp_path / "ids.txt").write_text(f"{ids[1]}\n{ids[2]}\n")
    before = os.getcwd()
    request = Request(["delete", "--workdir", "ws", "--ids-file", "ids.txt", "--dry-run", "--json"],
                      str(tmp_path), {"SISA_LOCK_TIMEOUT": "soon"})
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        status, summary = run_request(request, (tmp_path / "ws").resolve())
    assert os.getcwd() == before != str(tmp_path)
    # the client's SISA_LOCK_TIMEOUT is the one that counts, not this process's
    assert status == 1 and "SISA_LOCK_TIMEOUT" in err.getvalue(), err.getvalue()
    assert summary == "delete, 1 --ids-file (dry run)"
    request = Request(request.argv, str(tmp_path), {})
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status, _ = run_request(request, (tmp_path / "ws").resolve())
    assert status == 0 and sorted(json.loads(out.getvalue().splitlines()[-1])["deleted"]) == ids[1:3]
    other = Request(["delete", "--workdir", ".", "--ids", "1"], str(tmp_path), {})
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        assert run_request(other, (tmp_path / "ws").resolve())[0] == 1
    assert "this server serves" in err.getvalue()


def test_the_client_forwards_its_lock_settings(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    hold = ("import sys, time\nfrom sisa.workspace.lock import workspace_lock\n"
            "with workspace_lock(sys.argv[1], exclusive=True):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    server = ServerProcess(ws, env={k: v for k, v in os.environ.items() if k != "SISA_LOCK_TIMEOUT"})
    holder = subprocess.Popen([sys.executable, "-c", hold, str(ws)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        timed = sisa("delete", "--workdir", ws, "--ids", ids[0], env=dict(os.environ, SISA_LOCK_TIMEOUT="0.5"))
        assert timed.returncode == 1 and "gave up after 0.5 s" in timed.stderr, timed.stderr
        busy = sisa("delete", "--workdir", ws, "--ids", ids[0], "--no-wait")
        assert busy.returncode == 1 and "in use by another sisa process" in busy.stderr, busy.stderr
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait()
        code, _, log = server.stop()
    assert code == 0 and log.count("-> exit 1") == 2, log  # both ran in the server


def test_the_server_module_leaves_the_command_line_out():
    code = "import sys, sisa.serve.server; assert not [m for m in sys.modules if m.startswith('sisa.cli')]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_server_log_names_counts_not_ids(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    (tmp_path / "ids.txt").write_text(f"{ids[20]}\n{ids[21]}\n{ids[22]}\n")
    server = ServerProcess(ws)
    try:
        assert sisa("delete", "--workdir", ws, "--ids", f"{ids[3]},{ids[4]}", "--ids", ids[5]).returncode == 0
        assert sisa("delete", "--workdir", ws, "--ids-file", tmp_path / "ids.txt").returncode == 0
        unknown = sisa("delete", "--workdir", ws, "--ids", "987654321")
        assert unknown.returncode == 1 and "987654321" in unknown.stderr  # the client is told which
    finally:
        code, _, log = server.stop()
    print(log)
    assert code == 0
    for ident in [*ids, 987654321]:
        assert not re.search(rf"\b{ident}\b", log), f"id {ident} is in the server log"
    assert "ids.txt" not in log
    requests = [line for line in log.splitlines() if "-> exit" in line]
    assert len(requests) == 3, log
    assert "request 1: delete, 3 id(s)" in requests[0] and "-> exit 0" in requests[0]
    assert "request 2: delete, 1 --ids-file" in requests[1] and "-> exit 0" in requests[1]
    assert "request 3: delete, 1 id(s)" in requests[2] and "-> exit 1" in requests[2]
    assert all(re.search(r"in \d+\.\d\d s$", line) for line in requests)


def test_the_server_keeps_serving_when_its_start_folder_is_removed(workspace):
    tmp_path, _ = workspace
    ws = tmp_path / "ws"
    ids = train_ids(ws)
    (tmp_path / "start").mkdir()
    server = ServerProcess(ws, cwd=tmp_path / "start")
    try:
        (tmp_path / "start").rmdir()
        for ident in ids[:2]:
            result = sisa("delete", "--workdir", ws, "--ids", ident)
            print(result.returncode, result.stderr)
            assert result.returncode == 0 and result.stdout.startswith("deleted 1 "), result.stderr
        assert server.answers()
    finally:
        code, _, log = server.stop()
    assert code == 0 and log.count("-> exit 0") == 2, log
    assert run_cli("audit", "--workdir", ws).code == 0


class FakeServer:
    """A server that records what it is sent and answers every request with success."""

    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.received: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, mode)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self.received.append(conn.makefile("rb").readline())
                    conn.sendall(json.dumps({"exit": 0, "stdout": "deleted 1 id(s) in 0.01 s\n"}).encode() + b"\n")

    def close(self) -> None:
        self.done = True
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("plant", ["open-mode", "symlink", "not-a-socket"])
def test_the_client_refuses_a_socket_it_cannot_trust(tmp_path, capsys, plant):

    ws = tmp_path / "ws"
    ws.mkdir()
    fake = None
    if plant == "open-mode":  # anyone could connect to, or have bound, this one
        fake = FakeServer(ws / "serve.sock", mode=0o666)
    elif plant == "symlink":  # the socket of some other program, or of another workspace
        (tmp_path / "other").mkdir()
        fake = FakeServer(tmp_path / "other" / "real.sock")
        (ws / "serve.sock").symlink_to(tmp_path / "other" / "real.sock")
    else:
        (ws / "serve.sock").write_text("")
    try:
        result = run_cli("delete", "--workdir", str(ws), "--ids", "4242", "--json")
    finally:
        if fake is not None:
            fake.close()
    assert result.code == 1 and result.json["ok"] is False
    err = result.err
    assert f"refusing to forward to {ws / 'serve.sock'}" in err
    assert {"open-mode": "mode 0o666", "symlink": "symbolic link", "not-a-socket": "not a socket"}[plant] in err
    assert fake is None or fake.received == []


def test_the_client_forwards_to_its_own_server_with_a_long_path(tmp_path, capsys):
    from sisa.serve.client import forward

    ws = tmp_path / ("w" * 60) / ("s" * 60)  # longer than an AF_UNIX address
    ws.mkdir(parents=True)
    before = os.getcwd()
    os.chdir(ws.parent)
    try:
        fake = FakeServer(Path(ws.name) / "serve.sock")
    finally:
        os.chdir(before)
    try:
        status = forward(ws, ["delete", "--workdir", str(ws), "--ids", "4242"])
    finally:
        fake.close()
    out, err = capsys.readouterr()
    assert status == 0 and out.startswith("deleted 1 id(s)"), err
    assert json.loads(fake.received[0])["argv"][-1] == "4242"
    assert os.getcwd() == before


def test_a_model_of_ones_own_is_served(tmp_path):
    """The server imports the workspace's own model (from the folder it was started in) and a
    forwarded deletion gives the checkpoints an in-process one gives."""
    (tmp_path / "own_model.py").write_text(
        "from torch import nn\n\n\ndef net(shape, n_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))\n")
    for name in ("served", "local"):
        assert sisa("train", "--model", "own_model:net", "--workdir", name, *FLAGS, cwd=tmp_path).returncode == 0
    server = ServerProcess(tmp_path / "served", cwd=tmp_path)
    try:
        forwarded = sisa("delete", "--workdir", "served", "--ids", "5,40", cwd=tmp_path)
        assert forwarded.returncode == 0, forwarded.stderr
    finally:
        code, _, log = server.stop()
    assert "-> exit 0" in log
    assert sisa("delete", "--workdir", "local", "--ids", "5,40", "--no-serve", cwd=tmp_path).returncode == 0
    assert checkpoint_shas(tmp_path / "served") == checkpoint_shas(tmp_path / "local")
