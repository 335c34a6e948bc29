"""``sisa serve``: one warm process per workspace, so that ``sisa delete`` skips torch's start-up.

A ``sisa delete`` process spends about 3.5 s importing torch (and ``torch._dynamo``, which
every torch optimizer imports on its first step) before it does any work; on small shards
that is most of a deletion. ``sisa serve`` pays it once: it listens on a Unix socket inside
the workspace (``<workdir>/serve.sock``, mode 0600, callers of another user refused), and a
``sisa delete`` that finds the socket sends its command line there instead of running it
(:mod:`sisa.serve.client`, which also describes the protocol).

Both ends check the other's user (see :mod:`sisa.serve.client` for the client's checks). The
server's log names each request by number, its command and how many ids it carried, its exit
status and seconds, never the ids; what the command prints goes to the client only.

The server does not know the command line: whoever starts it passes a :data:`Runner`, the
function that runs one forwarded :class:`~sisa.serve.client.Request` (the CLI passes the very
code that runs the command in process: the same lock, ledger, files, messages and exit status,
with the client's relative paths resolved against the client's folder and the client's
settings). One request at a time, every file read afresh (so commands run in process beside it
stay safe). A request is acknowledged only when the command has returned; if the server dies
first the client says so and exits 1, and the ledger completes the request on the next
command, as after any crash.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from sisa.errors import SisaError
from sisa.serve.client import (  # noqa: F401  - connect, peer_uid, socket_path: also this module's API
    FORWARDED,
    Request,
    UntrustedSocket,
    connect,
    peer_uid,
    short_address,
    socket_path,
)

REQUEST_TIMEOUT = 10.0
"""Seconds a server waits for a connected client's request line."""

Runner = Callable[[Request, Path], "tuple[int, str]"]
"""Runs one forwarded request for the workspace at the given (resolved) folder, printing to
``sys.stdout`` and ``sys.stderr`` (the server sends both to the client); returns the exit
status and a line for the server's log that names no ids."""


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


class Server:
    """Serves forwarded commands for the workspace at ``workdir`` until stopped, each run by ``run``."""

    def __init__(self, workdir: os.PathLike | str, run: Runner) -> None:
        from sisa.workspace.files import Workspace

        self.root = Path(workdir).resolve()
        Workspace(self.root).manifest()  # refuse a folder that holds no workspace
        self.path = socket_path(self.root)
        self.runner = run
        self._busy = False
        self._stopping = False
        self.sock: Optional[socket.socket] = None
        self.served = 0

    def warm(self) -> float:
        """Import what a deletion needs, once; returns the seconds it took."""
        started = time.perf_counter()
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401  - what every optimizer's first step imports

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
            with short_address(self.path) as address:
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
            request = Request.decode(conn.makefile("rb").readline())
            conn.settimeout(None)
            if not request.argv or request.argv[0] not in FORWARDED:
                raise ValueError(f"only {', '.join(FORWARDED)} is served")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            reply(exit=2, stderr=f"sisa serve: bad request: {exc}\n")
            return
        started = time.perf_counter()
        status, stdout, summary = self.run(conn, request)
        reply(exit=status, stdout=stdout)
        self.served += 1
        # the request's number and size, never its ids (nor the path of an ids file)
        _log(f"sisa serve: request {self.served}: {summary} -> exit {status} "
             f"in {time.perf_counter() - started:.2f} s")

    def run(self, conn: socket.socket, request: Request) -> tuple[int, str, str]:
        """Run ``request`` with the runner, its output going to the client; returns its exit
        status, what it printed, and a line for the log that names no ids."""
        stdout = io.StringIO()
        stderr = _Stream(conn)
        summary = f"{request.argv[0]}, command line refused"
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status, summary = self.runner(request, self.root)
        except SystemExit as exc:  # a runner that let argparse's exit through
            status = exc.code if isinstance(exc.code, int) else 2
        except Exception as exc:  # a defect: report it, keep serving
            import traceback

            # the log gets where it failed, not the message (it may name ids); the client gets both
            _log("".join(traceback.format_tb(exc.__traceback__))
                 + f"{type(exc).__name__} (its message went to the client only)")
            stderr.write(f"sisa {request.argv[0]}: internal error: {exc!r}\n")
            status = 1
        return status, stdout.getvalue(), summary


class _Stop(Exception):
    pass


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def serve(workdir: os.PathLike | str, *, run: Runner) -> int:
    """Run a server for ``workdir`` until SIGINT or SIGTERM, each request run by ``run``;
    returns the requests served."""
    server = Server(workdir, run)
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
