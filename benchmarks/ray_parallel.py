"""Full SISA training, Ray against in-process, for S = 2, 4, 8 (cnn on Fashion-MNIST by default).

Each run is its own `sisa train` process, timed end to end (start-up, data loading, Ray's
start-up and training included). Parallel efficiency = in-process time / (Ray time x cores
used), where cores used = min(S, CPUs). Writes benchmarks/results/ray_parallel.json.

    python benchmarks/ray_parallel.py
    python benchmarks/ray_parallel.py --data digits --model mlp      # a quick version
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

from _common import checkpoint_shas  # benchmarks/ is the script's folder


def train(data: str, model: str, shards: int, executor: str) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as workdir:
        command = ["sisa", "train", "--data", data, "--model", model, "--shards", str(shards),
                   "--executor", executor, "--workdir", workdir, "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
        shas = sorted(checkpoint_shas(Path(workdir)).values())
    return {**json.loads(done.stdout), "checkpoint_sha256s": shas}, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--shards", default="2,4,8")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_parallel.json"))
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for shards in [int(s) for s in args.shards.split(",")]:
        local, local_wall = train(args.data, args.model, shards, "local")
        ray, ray_wall = train(args.data, args.model, shards, "ray")
        cores = min(shards, cpus)
        row = {"shards": shards, "local_seconds": round(local_wall, 2), "ray_seconds": round(ray_wall, 2),
               "ray_over_local": round(ray_wall / local_wall, 3),
               "parallel_efficiency": round(local_wall / (ray_wall * cores), 3), "cores_used": cores,
               "accuracy": local["accuracy"],
               "identical_checkpoints": local["checkpoint_sha256s"] == ray["checkpoint_sha256s"]}
        rows.append(row)
        print(f"S={shards}: in-process {local_wall:.1f} s, Ray {ray_wall:.1f} s "
              f"(x{row['ray_over_local']:.2f}), efficiency {row['parallel_efficiency']:.2f} on {cores} cores, "
              f"identical checkpoints: {row['identical_checkpoints']}", flush=True)
    import torch

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/ray_parallel.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpus": cpus, "torch": torch.__version__},
              "data": args.data, "model": args.model, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
