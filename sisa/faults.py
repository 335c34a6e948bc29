"""Fault injection for sisa's own crash and retry tests; inert unless SISA_CRASH_AT is set.

Points: after-ledger, after-purge-file, before-retrain, mid-slice, mid-retrain (after a
retrained slice's checkpoint), before-commit, worker-mid-shard, raise-in-slice.

``SISA_CRASH_AT=name`` kills the process with SIGKILL at the point called ``name`` (or, for
``raise-in-slice``, raises an error there). With ``SISA_CRASH_ONCE=PATH`` it fires only
while PATH does not exist, creating it first, so a retried task then succeeds.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def crash_point(name: str) -> None:
    if os.environ.get("SISA_CRASH_AT") != name:
        return
    once = os.environ.get("SISA_CRASH_ONCE")
    if once:
        marker = Path(once)
        if marker.exists():
            return
        marker.touch()
    if name == "raise-in-slice":
        raise RuntimeError("injected failure")
    os.kill(os.getpid(), signal.SIGKILL)
