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
