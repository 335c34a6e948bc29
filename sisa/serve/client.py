"""The client half of ``sisa serve``: find this user's server of a workspace and forward a command.

Light on purpose: a forwarded ``sisa delete`` imports this module, never torch (nor numpy).

The client forwards only to a socket file that is a socket (not a symbolic link), owned by
its own user with no access for group or others, and served by a process of its own user
(``SO_PEERCRED``); anything else at ``serve.sock`` is refused with an error (exit 1), never
sent the ids nor silently bypassed: whoever could put it there can write into the workspace.

Protocol: one JSON line from the client, ``{"argv": [...], "cwd": "...", "env": {...}}`` (the
command line, the client's folder, which relative paths of the command line name files in,
and the client's ``SISA_*`` settings); the server answers with JSON lines ``{"stderr": "..."}``
while the command runs, then ``{"exit": N, "stdout": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional

from sisa.errors import SisaError

SOCKET_NAME = "serve.sock"
FORWARDED = ("delete",)
"""Commands a client forwards to a running server."""


def socket_path(workdir: os.PathLike | str) -> Path:
    return Path(workdir) / SOCKET_NAME


@dataclass(frozen=True)
class Request:
    """One forwarded command: its command line, the client's working folder (absolute) and
    the client's settings from its environment (``SISA_*`` names and their text)."""

    argv: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"argv": self.argv, "cwd": self.cwd, "env": self.env}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> "Request":
        """The request of a client's line; ValueError (or KeyError, TypeError) if malformed."""
        message = json.loads(line)
        argv, cwd, env = list(message["argv"]), message["cwd"], message.get("env", {})
        if not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise ValueError("cwd must be an absolute path")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("env must map names to strings")
        return cls(argv, cwd, dict(env))


@contextlib.contextmanager
def short_address(path: Path) -> Iterator[str]:
    """An address for ``path`` within AF_UNIX's ~107-byte limit: the path itself, or its name
    under ``/proc/self/fd/N``, N a descriptor of its folder (Linux; no change of the process's
    working folder, which would be every thread's)."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    folder = os.open(path.parent, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


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


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


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
        with short_address(path) as address:
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


def forward(workdir: os.PathLike | str, argv: list[str], *,
            env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Run ``sisa argv`` on the server of ``workdir``, printing what it prints; returns its
    exit status, or None when no server answers (the caller then runs the command itself);
    raises :class:`SisaError`, sending nothing, when ``serve.sock`` is not this user's (see
    :func:`connect`). ``env``: the settings the command runs with (``SISA_*`` names)."""
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
                  file=sys.stderr, flush=True)
        return None
    with sock:
        return _exchange(sock, Request(list(argv), cwd, dict(env or {})))


def _exchange(sock: socket.socket, request: Request) -> int:
    """Send ``request``, relay the server's output as it comes; returns the exit status."""
    stdout, stderr = sys.stdout, sys.stderr
    try:
        sock.sendall(request.encode())
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
        print(f"sisa {request.argv[0]}: interrupted; the sisa serve process finishes the request "
              f"(sisa status shows the deletions)", file=stderr, flush=True)
        return 130
    except (OSError, ValueError):  # the connection broke, or a reply was cut short
        pass
    print(f"sisa {request.argv[0]}: error: the sisa serve process stopped before answering; the request "
          f"is not acknowledged (if it was recorded, the next command on the workspace finishes it)",
          file=stderr, flush=True)
    return 1
