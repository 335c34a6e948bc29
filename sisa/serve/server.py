"""``sisa serve``: one warm process per workspace, so that ``sisa delete`` skips torch's start-up.

A ``sisa delete`` process spends about 3.5 s importing torch (and ``torch._dynamo``, which
every torch optimizer imports on its first step) before it does any work; on small shards
that is most of a deletion. ``sisa serve`` pays it once: it listens on a Unix socket inside
the workspace (``<workdir>/serve.sock``, mode 0600, callers of another user refused), and a
``sisa delete`` that finds the socket sends its command line there instead of running it.

Both ends check the other's user. The client forwards only to a socket file that is a socket
(not a symbolic link), owned by its own user with no access for group or others, and served
by a process of its own user (``SO_PEERCRED``); anything else at ``serve.sock`` is refused
with an error (exit 1), never sent the ids nor silently bypassed: whoever could put it there
can write into the workspace. The server's log names each request by number, its command and
how many ids it carried, its exit status and seconds, never the ids; what the command prints
goes to the client only.

The server runs the forwarded command with the very code that runs it in process: the same
lock, ledger, files, messages and exit status, one request at a time, every file read afresh
(so commands run in process beside it stay safe). A request is acknowledged only when the
command has returned; if the server dies first the client says so and exits 1, and the
ledger completes the request on the next command, as after any crash.

Protocol: one JSON line from the client, ``{"argv": [...], "cwd": "..."}``; the server
answers with JSON lines ``{"stderr": "..."}`` while the command runs, then
``{"exit": N, "stdout": "..."}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from sisa.errors import SisaError

SOCKET_NAME = "serve.sock"
FORWARDED = ("delete",)
"""Commands a client forwards to a running server."""
REQUEST_TIMEOUT = 10.0
"""Seconds a server waits for a connected client's request line."""


def socket_path(workdir: os.PathLike | str) -> Path:
    return Path(workdir) / SOCKET_NAME


@contextlib.contextmanager
def _working_in(folder: os.PathLike | str) -> Iterator[None]:
    """Work in ``folder``, then return to the folder worked in before, even if that one was
    removed meanwhile or before (held open, not named: ``os.getcwd()`` would fail then)."""
    home = os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(folder)
        try:
            yield
        finally:
            os.fchdir(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def _short_address(path: Path) -> Iterator[str]:
    """An address for ``path`` within AF_UNIX's ~107-byte limit: the path itself, or its
    name relative to its folder while the process works in that folder."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    with _working_in(path.parent):
        yield path.name


class UntrustedSocket(SisaError):
    """Something at ``serve.sock`` that is not a server of this user's."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _distrust(st: os.stat_result) -> Optional[str]:
    """Why the file ``st`` (from lstat) cannot be this user's server socket, or None."""
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link, not the socket of a sisa serve"
    if not stat.S_ISSOCK(st.st_mode):
        return "it is not a socket"
    if st.st_uid != me:
        return f"owned by uid {st.st_uid}, not by this user (uid {me})"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return (f"mode {oct(stat.S_IMODE(st.st_mode))} opens it to other users "
                f"(the socket of a sisa serve has mode 0o600)")
    return None


def connect(workdir: os.PathLike | str, timeout: Optional[float] = None) -> Optional[socket.socket]:
    """A connection to this user's server of ``workdir``, or None when none answers there.

    Raises :class:`UntrustedSocket` when ``serve.sock`` is not this user's private socket, or
    the process that answers on it runs as another user; nothing is sent then.
    """
    path = socket_path(workdir)
    try:
        st = os.lstat(path)
    except OSError:  # no socket (or no folder to look in): no server
        return None
    reason = _distrust(st)
    if reason is not None:
        raise UntrustedSocket(path, reason)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with _short_address(path) as address:
            sock.connect(address)
        sock.settimeout(None)
        uid = peer_uid(sock)  # the file may have been swapped since lstat: ask the kernel
    except OSError:
        sock.close()
        return None
    if uid != os.geteuid():
        sock.close()
        raise UntrustedSocket(path, f"it is served by a process of uid {uid}, not of this user "
                                    f"(uid {os.geteuid()})")
    return sock


# --- client -------------------------------------------------------------------------------

def forward(workdir: os.PathLike | str, argv: list[str]) -> Optional[int]:
    """Run ``sisa argv`` on the server of ``workdir``, printing what it prints; returns its
    exit status, or None when no server answers (the caller then runs the command itself);
    1, sending nothing, when ``serve.sock`` is not this user's (see :func:`connect`)."""
    stdout, stderr = sys.stdout, sys.stderr
    try:
        cwd = os.getcwd()
    except OSError:  # this folder was removed: the server could not resolve relative paths
        return None
    try:
        sock = connect(workdir, timeout=5.0)
    except UntrustedSocket as exc:
        raise SisaError(f"refusing to forward to {exc.path}: {exc.reason}. Another user may have put it "
                        f"there to read the ids; nothing was sent. Remove it if it is not your sisa "
                        f"serve's (check who can write to {exc.path.parent}), or pass --no-serve") from None
    if sock is None:
        if socket_path(workdir).exists():
            print(f"note: no sisa serve answers on {socket_path(workdir)}; running in this process",
                  file=stderr, flush=True)
        return None
    with sock:
        try:
            sock.sendall(json.dumps({"argv": argv, "cwd": cwd}).encode() + b"\n")
            for line in sock.makefile("rb"):
                message = json.loads(line)
                if "stderr" in message:
                    stderr.write(message["stderr"])
                    stderr.flush()
                if "exit" in message:
                    stdout.write(message.get("stdout", ""))
                    stdout.flush()
                    return int(message["exit"])
        except KeyboardInterrupt:
            print(f"sisa {argv[0]}: interrupted; the sisa serve process finishes the request "
                  f"(sisa status shows the deletions)", file=stderr, flush=True)
            return 130
        except (OSError, ValueError):  # the connection broke, or a reply was cut short
            pass
    print(f"sisa {argv[0]}: error: the sisa serve process stopped before answering; the request "
          f"is not acknowledged (if it was recorded, the next command on the workspace finishes it)",
          file=stderr, flush=True)
    return 1


# --- server -------------------------------------------------------------------------------

class _Stream(io.TextIOBase):
    """stderr of a forwarded command: each write goes to the client as it happens (not to the
    server's log: it names ids); a client that went away stops receiving, the command goes on."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn: Optional[socket.socket] = conn

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.conn is not None and text:
            try:
                self.conn.sendall(json.dumps({"stderr": text}).encode() + b"\n")
            except OSError:
                self.conn = None
        return len(text)


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class Server:
    """Serves forwarded commands for the workspace at ``workdir`` until stopped."""

    def __init__(self, workdir: os.PathLike | str) -> None:
        from sisa.workspace.files import Workspace

        self.root = Path(workdir).resolve()
        Workspace(self.root).read_manifest()  # refuse a folder that holds no workspace
        self.path = socket_path(self.root)
        self._busy = False
        self._stopping = False
        self.sock: Optional[socket.socket] = None
        self.served = 0

    def warm(self) -> float:
        """Import what a deletion needs, once; returns the seconds it took."""
        started = time.perf_counter()
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401  - what every optimizer's first step imports

        import sisa.cli  # noqa: F401
        import sisa.ops.audit  # noqa: F401
        import sisa.ops.delete  # noqa: F401
        import sisa.training.executors  # noqa: F401
        return time.perf_counter() - started

    def bind(self) -> None:
        try:
            probe = connect(self.root, timeout=2.0)
        except UntrustedSocket as exc:
            raise SisaError(f"refusing to serve on {exc.path}: {exc.reason}; remove it if it is not "
                            f"yours (check who can write to {self.root})") from None
        if probe is not None:
            probe.close()
            raise SisaError(f"a sisa serve process already serves {self.root} (socket {self.path})")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a server that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created with mode 0600: this user only
        try:
            with _short_address(self.path) as address:
                sock.bind(address)
        finally:
            os.umask(old)
        sock.listen(64)
        self.sock = sock
        self._inode = os.lstat(self.path).st_ino

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self._inode:  # not a newer server's socket
                    self.path.unlink()

    def stop(self, *_) -> None:
        """Stop after the request being served (at once when idle)."""
        self._stopping = True
        if not self._busy:
            raise _Stop

    def serve_forever(self) -> None:
        assert self.sock is not None, "bind() first"
        try:
            while not self._stopping:
                conn, _ = self.sock.accept()
                with conn:
                    self._busy = True
                    try:
                        self.handle(conn)
                    finally:
                        self._busy = False
        except _Stop:
            pass

    def handle(self, conn: socket.socket) -> None:
        def reply(**message) -> None:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(message).encode() + b"\n")

        uid = peer_uid(conn)
        if uid != os.geteuid():
            reply(exit=1, stderr=f"sisa serve: refused a request from another user (uid {uid})\n")
            _log(f"sisa serve: refused a request from another user (uid {uid})")
            return
        try:
            conn.settimeout(REQUEST_TIMEOUT)  # a client that connects and says nothing blocks no one
            request = json.loads(conn.makefile("rb").readline())
            conn.settimeout(None)
            argv, cwd = list(request["argv"]), str(request["cwd"])
            if not argv or argv[0] not in FORWARDED or not all(isinstance(a, str) for a in argv):
                raise ValueError(f"only {', '.join(FORWARDED)} is served")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            reply(exit=2, stderr=f"sisa serve: bad request: {exc}\n")
            return
        started = time.perf_counter()
        status, stdout, summary = self.run(conn, argv, cwd)
        reply(exit=status, stdout=stdout)
        self.served += 1
        # the request's number and size, never its ids (nor the path of an ids file)
        _log(f"sisa serve: request {self.served}: {summary} -> exit {status} "
             f"in {time.perf_counter() - started:.2f} s")

    def run(self, conn: socket.socket, argv: list[str], cwd: str) -> tuple[int, str, str]:
        """Run ``sisa argv`` as the client would have, from the client's folder; returns its
        exit status, what it printed, and a line for the log that names no ids."""
        from sisa import cli

        stdout = io.StringIO()
        stderr = _Stream(conn)
        summary = f"{argv[0]}, command line refused"
        try:
            with _working_in(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                args = cli.build_parser().parse_args(argv + ["--no-serve"])
                summary = _describe(args)
                if Path(args.workdir).resolve() != self.root:
                    stderr.write(f"sisa serve: this server serves {self.root}, not {args.workdir}\n")
                    return 1, "", summary
                status = cli.main(argv + ["--no-serve"])
        except SystemExit as exc:  # argparse refused the command line
            status = exc.code if isinstance(exc.code, int) else 2
        except FileNotFoundError as exc:
            stderr.write(f"sisa serve: {exc}\n")
            status = 1
        except Exception as exc:  # a defect: report it, keep serving
            import traceback

            # the log gets where it failed, not the message (it may name ids); the client gets both
            _log("".join(traceback.format_tb(exc.__traceback__))
                 + f"{type(exc).__name__} (its message went to the client only)")
            stderr.write(f"sisa {argv[0]}: internal error: {exc!r}\n")
            status = 1
        return status, stdout.getvalue(), summary


def _describe(args) -> str:
    """A served command for the log: its name and how many ids it names, not which."""
    from sisa.cli.delete import split_ids

    parts = []
    if getattr(args, "ids", None):
        parts.append(f"{sum(len(split_ids(text)) for text in args.ids)} id(s)")
    if getattr(args, "ids_file", None):
        parts.append(f"{len(args.ids_file)} --ids-file")
    summary = f"{args.command}, {' and '.join(parts) or 'no ids'}"
    return summary + (" (dry run)" if getattr(args, "dry_run", False) else "")


class _Stop(Exception):
    pass


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def serve(workdir: os.PathLike | str) -> int:
    """Run a server for ``workdir`` until SIGINT or SIGTERM; returns the requests served."""
    server = Server(workdir)
    seconds = server.warm()
    server.bind()
    previous = {sig: signal.signal(sig, server.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _log(f"sisa serve: serving {server.root} on {server.path} (warmed up in {seconds:.1f} s); "
             f"sisa delete --workdir {server.root} now runs here")
        server.serve_forever()
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.served
