"""Training time and test accuracy of `sisa train` for a few configurations.

Runs each configuration as its own `sisa train --json` process (so start-up is included, as a
user sees it) and writes benchmarks/results/train_figures.json with the machine, the commands
and the date.

    python benchmarks/train_figures.py                      # digits and Fashion-MNIST
    python benchmarks/train_figures.py --only digits        # digits rows only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

CONFIGS = [
    ("digits", []),
    ("digits", ["--shards", "1", "--slices", "1"]),
    ("fashion-mnist", ["--model", "mlp", "--shards", "1", "--slices", "1"]),
    ("fashion-mnist", ["--model", "mlp", "--shards", "8"]),
    ("fashion-mnist", ["--model", "cnn", "--shards", "1", "--slices", "1"]),
    ("fashion-mnist", ["--model", "cnn", "--shards", "8"]),
]


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only configurations on this dataset")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_figures.json"))
    args = parser.parse_args()
    rows = []
    for data, flags in CONFIGS:
        if args.only and data != args.only:
            continue
        with tempfile.TemporaryDirectory() as workdir:
            command = ["sisa", "train", "--data", data, *flags, "--workdir", workdir, "--json"]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            summary = json.loads(done.stdout)
            settings = json.loads((Path(workdir) / "shards" / "manifest.json").read_text())["settings"]
        row = {"data": data, "command": " ".join(command[:-3] + ["--json"]), "settings": settings,
               "accuracy": summary["accuracy"], "shard_accuracy": summary["shard_accuracy"],
               "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 2)}
        rows.append(row)
        print(f"{data:14s} {settings['model']:6s} S={settings['shards']:<2d} R={settings['slices']:<2d} "
              f"acc {row['accuracy']:.4f}  training {row['train_seconds']:7.1f} s  "
              f"wall {row['wall_seconds']:7.1f} s", flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
