"""Another local user: a socket planted where ``sisa delete`` looks for its server, and a
lock that anyone who can read the workspace could hold.

These tests act as a second user (uid 65534, ``nobody``) in a forked child of the test
process (that user may not be able to run this interpreter: it can live under /root), so they
need root and a kernel that lets root switch user; elsewhere they are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

OTHER = 65534  # nobody


def become_other() -> None:
    os.setgroups([])
    os.setgid(OTHER)
    os.setuid(OTHER)


class Child:
    """A forked copy of this process that runs ``target(out)`` (``out``: lines back to the
    test) and exits; it becomes uid 65534 first unless ``drop`` is False."""

    def __init__(self, target, *, drop: bool = True) -> None:
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 0
            try:
                os.close(read)
                with os.fdopen(write, "w", buffering=1) as out:
                    try:
                        if drop:
                            become_other()
                        target(out)
                    except BaseException as exc:  # noqa: BLE001 - reported to the test
                        out.write(f"child failed: {exc!r}\n")
                        code = 1
            finally:
                os._exit(code)
        os.close(write)
        self.out = os.fdopen(read)

    def readline(self) -> str:
        return self.out.readline().strip()

    def finish(self, kill: bool = True) -> str:
        """Stop the child (unless it ends by itself) and return what else it wrote."""
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        rest = self.out.read()
        self.out.close()
        return rest


def as_other(target) -> str:
    """Run ``target(out)`` as uid 65534 to its end; returns what it wrote."""
    return Child(target).finish(kill=False).strip()


@pytest.fixture(scope="module")
def other_user():
    """Skip unless this process can become uid 65534 in a child."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user (uid 65534)")
    answer = as_other(lambda out: out.write(f"{os.geteuid()}\n"))
    if answer != str(OTHER):
        pytest.skip(f"cannot switch to uid {OTHER}: {answer}")
    return OTHER


@pytest.fixture
def shared_folder():
    """A folder under /tmp (reachable by every user, unlike pytest's tmp_path), writable by all."""
    folder = Path(tempfile.mkdtemp(prefix="sisa-hostile-"))
    os.chmod(folder, 0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fake_server(folder: Path, *, bind_first: bool) -> Child:
    """What a hostile user runs: a server that writes down the request and claims success."""

    def target(out) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.umask(0o177)  # the socket file looks like a real server's: mode 0600
        if not bind_first:
            become_other()
        sock.bind(str(folder / "serve.sock"))
        if bind_first:  # bound as root, so the file is root's; served by another user
            become_other()
        sock.listen(8)
        out.write("ready\n")
        while True:
            conn, _ = sock.accept()
            with conn:
                line = conn.makefile("rb").readline()
                out.write(f"got {line.decode(errors='replace').strip()}\n")
                conn.sendall(json.dumps({"exit": 0, "stdout": "deleted 1 id(s) in 0.01 s\n"}).encode() + b"\n")

    child = Child(target, drop=False)
    first = child.readline()
    if first != "ready":
        raise AssertionError(f"the fake server did not start: {first} {child.finish()}")
    return child


@pytest.mark.parametrize("bind_first", [False, True], ids=["socket-of-another-user", "server-of-another-user"])
def test_the_client_refuses_a_server_of_another_user(other_user, shared_folder, bind_first):
    # socket-of-another-user: nobody binds serve.sock in a folder it can write (issue 14);
    # server-of-another-user: the socket file is root's, mode 0600, but nobody serves it
    fake = fake_server(shared_folder, bind_first=bind_first)
    try:
        result = subprocess.run([sys.executable, "-m", "sisa", "delete", "--workdir", str(shared_folder),
                                 "--ids", "4242"], capture_output=True, text=True, timeout=120)
    finally:
        received = fake.finish()
    print("client rc", result.returncode, "stdout", repr(result.stdout), "stderr", repr(result.stderr))
    print("fake server received", repr(received))
    assert "4242" not in received, "the ids reached a server of another user"
    assert result.returncode == 1 and result.stdout == ""
    assert f"refusing to forward to {shared_folder / 'serve.sock'}" in result.stderr
    assert f"uid {OTHER}" in result.stderr
    assert "running in this process" not in result.stderr  # a planted socket is an attack, not a stale file


def test_a_shared_flock_on_the_folder_blocks_no_writer(other_user, shared_folder):
    from sisa.workspace.lock import workspace_lock

    os.chmod(shared_folder, 0o755)  # readable by every user, writable by its owner only

    def hold(out) -> None:
        fd = os.open(shared_folder, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_SH)  # what any reader of the folder can do
        out.write("held\n")
        signal.pause()

    holder = Child(hold)
    assert holder.readline() == "held"
    try:  # wait=False (--no-wait): fail at once rather than wait forever
        with workspace_lock(shared_folder, exclusive=True, wait=False):
            pass
    finally:
        holder.finish()


def test_another_user_cannot_open_the_workspace_lock(other_user, shared_folder):
    from sisa.workspace.lock import lock_path, workspace_lock

    os.chmod(shared_folder, 0o755)
    (shared_folder / "shards").mkdir()  # a workspace's: the lock file stays between commands
    (shared_folder / "shards" / "manifest.json").touch()
    path = lock_path(shared_folder)

    def try_open(out) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except PermissionError:
            out.write("denied\n")
        else:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            out.write("opened and locked\n")

    with workspace_lock(shared_folder, exclusive=True):
        mode = os.lstat(path).st_mode
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600
        assert as_other(try_open) == "denied"
    assert as_other(try_open) == "denied"  # nor between commands, when nobody holds it


def test_a_lock_file_planted_by_another_user_is_refused(other_user, shared_folder):
    from sisa.errors import SisaError
    from sisa.workspace.lock import lock_path, workspace_lock

    path = lock_path(shared_folder)  # the folder is writable by all: nobody creates the lock first
    assert as_other(lambda out: os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))) == ""
    for exclusive in (True, False):
        with pytest.raises(SisaError, match=f"owned by uid {OTHER}"):
            with workspace_lock(shared_folder, exclusive=exclusive):
                pass
