"""Arguments and output shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=".", metavar="DIR",
                        help="workspace folder holding shards/ and checkpoints/ (default: .)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of text")


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print ``result`` as JSON with --json, else the human ``text``."""
    if args.json:
        json.dump(result, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(text)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def recover_first(workdir: str) -> None:
    """Finish deletions a crash interrupted before a command reads the models."""
    from sisa.store import Workspace
    from sisa.unlearn import complete_pending

    workspace = Workspace(workdir)
    workspace.read_manifest()
    shards = complete_pending(workspace, progress=retrain_progress)
    if shards:
        info(f"finished pending deletions first: retrained shard(s) {', '.join(map(str, shards))}")


def retrain_progress(record: dict[str, Any]) -> None:
    info(f"shard {record['shard']} slice {record['slice']}: {record['samples']} samples, "
         f"{record['epochs']} epochs, {fmt_seconds(record['seconds'])}")
