"""What every benchmark script shares: the run record (date, command, machine) and plotting."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def run_record() -> dict:
    """When, where and how a result was made; every published figure states them."""
    import torch

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()}}


def pyplot():
    """matplotlib's pyplot without a display, or None (with a message) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'sisa[plots]')", file=sys.stderr)
        return None
    return plt


def checkpoints(workdir: Path) -> tuple:
    """The workspace's checkpoint records, read and checked through sisa's workspace layer."""
    from sisa.workspace.files import Workspace

    return Workspace(workdir).checkpoints().checkpoints


def checkpoint_shas(workdir: Path) -> dict:
    """(shard, slice) -> sha256 of every checkpoint of the workspace."""
    return {(r.shard, r.slice): r.sha256 for r in checkpoints(workdir)}


def retrained_seconds(workdir: Path, result: dict) -> float:
    """Training seconds of the slices a deletion (its ``--json`` result) retrained."""
    starts = {r["shard"]: r["from_slice"] for r in result["retrained"]}
    return sum(r.seconds for r in checkpoints(workdir) if r.shard in starts and r.slice >= starts[r.shard])
