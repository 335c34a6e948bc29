"""The workspace lock: one writer at a time, and readers never see a write half done.

A ``flock`` on ``<workdir>/.sisa.lock``, a file only its owner can open (mode 0600, created
without following a symbolic link): exclusive for commands that change the workspace (train,
delete, recover), shared for those that only read it. Not the folder itself: any user who can
read a folder can flock it, and one who held it would block every deletion. The kernel drops
the lock when its process dies, so a crash never leaves a workspace locked. The file stays,
empty, beside a workspace; in a folder where it is all there is (a train that failed into an
empty folder, a reader of one) the last holder removes it, so the folder is left as it was.
That is safe because whoever takes the lock checks, once it holds it, that the path still
names the file it locked, and locks the new one otherwise. Locks are re-entrant within a process (a delete that finishes a pending
request holds the one lock it took).

A wait for the lock ends after the ``timeout`` argument's seconds (by default
``$SISA_LOCK_TIMEOUT``, else :data:`LOCK_TIMEOUT`) with an error naming the process that holds
it; ``wait=False`` fails at once instead. Both are arguments of each call, never process-wide
state: the command line passes its ``--no-wait`` and its environment's timeout where it takes
the lock, and the library's own (re-entrant) locks inside take no second wait.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from sisa.errors import SisaError

LOCK_NAME = ".sisa.lock"
LOCK_TIMEOUT = 600.0
"""Seconds a command waits for another sisa process before it gives up (``$SISA_LOCK_TIMEOUT``)."""
TIMEOUT_ENV = "SISA_LOCK_TIMEOUT"

_held: dict[str, list] = {}   # folder -> [exclusive, depth]
_guard = threading.Lock()


def lock_path(root: os.PathLike | str) -> Path:
    """The file whose flock is the lock of the workspace folder ``root``."""
    return Path(root) / LOCK_NAME


def lock_timeout() -> float:
    """Seconds to wait for the lock by default: ``$SISA_LOCK_TIMEOUT`` if set, else :data:`LOCK_TIMEOUT`."""
    return parse_timeout(os.environ.get(TIMEOUT_ENV))


def parse_timeout(text: Optional[str]) -> float:
    """Seconds from the text of a ``SISA_LOCK_TIMEOUT`` setting; :data:`LOCK_TIMEOUT` when unset or blank."""
    text = (text or "").strip()
    if not text:
        return LOCK_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:  # also refuses nan
        raise SisaError(f"{TIMEOUT_ENV} must be a number of seconds >= 0, not {text!r}")
    return seconds


@contextmanager
def workspace_lock(root: os.PathLike | str, *, exclusive: bool, wait: bool = True,
                   timeout: Optional[float] = None) -> Iterator[None]:
    """Hold the lock of the workspace folder ``root`` (exclusive for writers).

    A writer creates the folder; a reader of a folder that does not exist holds nothing (it
    will find no workspace there). ``timeout``: seconds to wait for another process's lock
    (default :func:`lock_timeout`); ``wait`` False (--no-wait) waits none. A lock this process
    already holds is re-entered at once, whatever ``wait`` and ``timeout`` say.
    """
    root = Path(root)
    if exclusive:
        from sisa.workspace.files import make_folder

        make_folder(root)  # 0700 (see sisa.workspace.files.creation_modes)
    elif not root.is_dir():
        yield
        return
    key = str(root.resolve())
    if _reenter(key, exclusive):
        try:
            yield
        finally:
            with _guard:
                _held[key][1] -= 1
        return
    fd = _lock_file(Path(key), root, exclusive, wait, lock_timeout() if timeout is None else timeout)
    if fd is None:  # a reader of a read-only folder: see _open
        yield
        return
    try:
        with _guard:
            _held[key] = [exclusive, 1]
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            _remove_if_alone(fd, Path(key))
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _reenter(key: str, exclusive: bool) -> bool:
    """Count one more hold of a lock this process holds already; False if it holds none."""
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return False
        if exclusive and not entry[0]:
            raise RuntimeError("a shared workspace lock cannot be upgraded; take the exclusive one first")
        entry[1] += 1
        return True


def _lock_file(folder: Path, root: Path, exclusive: bool, wait: bool, timeout: float) -> Optional[int]:
    """Open and flock the lock file of ``folder``; returns its descriptor (None: see _open)."""
    deadline = time.monotonic() + timeout
    while True:
        fd = _open(folder, exclusive)
        if fd is None:
            return None
        try:
            _acquire(fd, exclusive, root, wait, deadline, timeout)
        except BaseException:
            os.close(fd)
            raise
        if _still_there(fd, lock_path(folder)):
            return fd
        os.close(fd)  # removed (or replaced) while this process waited: lock the file there now


def _still_there(fd: int, path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _remove_if_alone(fd: int, folder: Path) -> None:
    """Remove the lock file when the folder holds no workspace (a command that failed before
    it wrote one leaves the folder as it was) and no other process holds the lock."""
    try:
        if os.path.lexists(folder / "shards" / "manifest.json") or os.path.lexists(folder / ".sisa-swap.json"):
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while readers share it
        if _still_there(fd, lock_path(folder)):
            os.unlink(lock_path(folder))
    except OSError:  # held by others, or not ours to remove: it stays, which is harmless
        pass


def _open(folder: Path, exclusive: bool) -> Optional[int]:
    """Open (creating if need be) the lock file of ``folder``, refusing one that others could
    open; None for a reader when the file cannot be created because the folder is read-only."""
    path = lock_path(folder)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY  # flock needs no write access
    try:
        try:
            fd = os.open(path, flags)  # no O_CREAT first: a read-only mount still opens an existing file
        except FileNotFoundError:
            fd = os.open(path, flags | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SisaError(f"the workspace lock {path} is not a regular file (a symbolic link); "
                            f"remove it") from None
        if not exclusive and (exc.errno == errno.EROFS or (exc.errno == errno.EACCES and _unwritable(folder))):
            # A reader needs no lock where nobody can write: on a read-only mount, or in a
            # folder without write permission for anyone, no sisa process can change the
            # workspace while this one reads it (it could not create this file either).
            return None
        raise
    try:
        _check(fd, path, folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unwritable(folder: Path) -> bool:
    try:
        return stat.S_IMODE(os.stat(folder).st_mode) & 0o222 == 0
    except OSError:
        return False


def _check(fd: int, path: Path, folder: Path) -> None:
    """Refuse a lock file that another user planted; close one that others could open."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SisaError(f"the workspace lock {path} is not a regular file; remove it")
    me = os.geteuid()
    if st.st_uid != me and st.st_uid != os.stat(folder).st_uid:
        raise SisaError(f"the workspace lock {path} is owned by uid {st.st_uid}, neither this user "
                        f"(uid {me}) nor the folder's owner; another user may have planted it to "
                        f"block this workspace: check and remove it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        if st.st_uid != me:
            raise SisaError(f"the workspace lock {path} has mode {oct(stat.S_IMODE(st.st_mode))}: other "
                            f"users can open it; its owner (uid {st.st_uid}) should chmod 600 it")
        os.fchmod(fd, 0o600)


def _acquire(fd: int, exclusive: bool, root: Path, wait: bool, deadline: float, timeout: float) -> None:
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if not wait:
        raise SisaError(f"the workspace {root} is in use by another sisa process{_holder(fd)}; try again "
                        f"later, or drop --no-wait to wait for it")
    print(f"sisa: waiting for another sisa process{_holder(fd)} to finish with {root} "
          f"(at most {timeout:g} s) ...", file=sys.stderr, flush=True)
    pause = 0.02
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise SisaError(f"gave up after {timeout:g} s waiting for the workspace {root}: another sisa "
                            f"process{_holder(fd)} still holds it (set SISA_LOCK_TIMEOUT to wait longer)")
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)


def _holder(fd: int) -> str:
    """`` (pid N)`` for the process(es) holding the lock of ``fd``, where that can be known."""
    pids = _holders(fd)
    if not pids:
        return ""
    return f" (pid {', '.join(map(str, pids))})"


def _holders(fd: int) -> list[int]:
    """Pids holding a flock on the file of ``fd``, from Linux's /proc/locks (none elsewhere).

    The lock file holds no pid of its own: it stays empty, so a workspace's files read the
    same before and after any command, and a crash leaves no stale pid to mislead anyone."""
    st = os.fstat(fd)
    pids: list[int] = []
    try:  # Linux lists every lock with its holder's pid, device and inode
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
                    continue  # a blocked waiter, or a POSIX lock
                pid, where = fields[4], fields[5].split(":")
                if len(where) == 3 and where[2] == str(st.st_ino) and pid.isdigit() and int(pid) > 0 \
                        and (int(where[0], 16), int(where[1], 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
                    pids.append(int(pid))
    except (OSError, ValueError):
        pass
    return sorted(set(pids))
