"""The workspace lock: one writer at a time, and readers never see a write half done.

A ``flock`` on the workspace folder itself (no lock file to leave behind): exclusive for
commands that change the workspace (train, delete, recover), shared for those that only read
it. The kernel drops the lock when its process dies, so a crash never leaves a workspace
locked. Locks are re-entrant within a process (a delete that finishes a pending request holds
the one lock it took).
"""

from __future__ import annotations

import contextvars
import fcntl
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sisa.errors import SisaError

WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("sisa_lock_wait", default=True)
"""False: fail at once instead of waiting when another process holds the workspace."""

_held: dict[str, list] = {}   # folder -> [exclusive, depth]
_guard = threading.Lock()


@contextmanager
def workspace_lock(root: os.PathLike | str, *, exclusive: bool) -> Iterator[None]:
    """Hold the lock of the workspace folder ``root`` (exclusive for writers).

    A writer creates the folder; a reader of a folder that does not exist holds nothing (it
    will find no workspace there).
    """
    root = Path(root)
    if exclusive:
        root.mkdir(parents=True, exist_ok=True)
    elif not root.is_dir():
        yield
        return
    key = str(root.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            if exclusive and not entry[0]:
                raise RuntimeError("a shared workspace lock cannot be upgraded; take the exclusive one first")
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _guard:
                _held[key][1] -= 1
        return
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _acquire(fd, exclusive, root)
        with _guard:
            _held[key] = [exclusive, 1]
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, exclusive: bool, root: Path) -> None:
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if not WAIT.get():
        raise SisaError(f"the workspace {root} is in use by another sisa process; try again later, "
                        f"or drop --no-wait to wait for it")
    print(f"sisa: waiting for another sisa process to finish with {root} ...", file=sys.stderr, flush=True)
    fcntl.flock(fd, mode)
