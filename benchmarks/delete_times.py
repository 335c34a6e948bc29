"""Training and deletion times: `sisa delete` against retraining from scratch.

For each configuration: train a monolithic model (S = 1, R = 1) and the SISA ensemble, then time
`sisa delete` as a separate process (start-up included, as a user sees it) for one id and for
ten ids spread across shards, each in a fresh copy of the trained workspace. "Compute" is the
retraining time alone (the sum of the retrained slices' seconds). Writes
benchmarks/results/delete_times.json with the machine, the commands and the date.

    python benchmarks/delete_times.py                 # digits, then Fashion-MNIST (mlp, cnn)
    python benchmarks/delete_times.py --only digits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _common import retrained_seconds  # benchmarks/ is the script's folder

CONFIGS = [
    ("digits", "mlp", 5),
    ("fashion-mnist", "mlp", 8),
    ("fashion-mnist", "cnn", 8),
]


def sisa(*args: str) -> tuple[dict, float]:
    started = time.perf_counter()
    # in-process executor: the figures are for one process training shards one after another
    done = subprocess.run(["sisa", *args, "--executor", "local", "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"sisa {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout), wall


def shard_ids(workdir: Path) -> dict[int, list[int]]:
    import pyarrow.parquet as pq

    out: dict[int, list[int]] = {}
    for path in sorted((workdir / "shards").glob("shard-*.parquet")):
        table = pq.read_table(path, columns=["id", "shard"])
        for i, s in zip(table.column("id").to_pylist(), table.column("shard").to_pylist()):
            out.setdefault(s, []).append(i)
    return out


def timed_delete(trained: Path, scratch: Path, ids: list[int]) -> dict:
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(trained, scratch)
    result, wall = sisa("delete", "--workdir", str(scratch), "--ids", ",".join(map(str, ids)))
    compute = retrained_seconds(scratch, result)
    return {"ids": ids, "wall_seconds": round(wall, 2), "command_seconds": result["seconds"],
            "compute_seconds": round(compute, 2), "retrained": result["retrained"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only configurations on this dataset")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "delete_times.json"))
    args = parser.parse_args()
    import torch

    rows = []
    rng = np.random.default_rng(0)
    for data, model, shards in CONFIGS:
        if args.only and data != args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            mono, mono_wall = sisa("train", "--data", data, "--model", model, "--shards", "1", "--slices", "1",
                                   "--workdir", str(tmp / "mono"))
            ens, ens_wall = sisa("train", "--data", data, "--model", model, "--shards", str(shards),
                                 "--workdir", str(tmp / "sisa"))
            by_shard = shard_ids(tmp / "sisa")
            everyone = sorted(i for ids in by_shard.values() for i in ids)
            one = [int(rng.choice(everyone))]
            ten = [int(rng.choice(by_shard[s])) for s in sorted(by_shard)]
            ten += [int(i) for i in rng.choice(everyone, 10 - len(ten), replace=False)] if len(ten) < 10 else []
            row = {
                "data": data, "model": model, "shards": shards, "slices": ens["slices"],
                "monolithic": {"accuracy": mono["accuracy"], "train_seconds": mono["train_seconds"],
                               "wall_seconds": round(mono_wall, 2)},
                "sisa": {"accuracy": ens["accuracy"], "train_seconds": ens["train_seconds"],
                         "wall_seconds": round(ens_wall, 2)},
                "delete_one": timed_delete(tmp / "sisa", tmp / "d1", one),
                "delete_ten": timed_delete(tmp / "sisa", tmp / "d10", ten[:10]),
            }
        for key in ("delete_one", "delete_ten"):
            d = row[key]
            d["speedup_vs_monolithic_wall"] = round(row["monolithic"]["wall_seconds"] / d["wall_seconds"], 2)
            d["speedup_vs_sisa_retrain_wall"] = round(row["sisa"]["wall_seconds"] / d["wall_seconds"], 2)
        rows.append(row)
        print(f"{data:14s} {model:4s} S={shards}: monolithic {row['monolithic']['wall_seconds']:.1f} s "
              f"(acc {mono['accuracy']:.4f}), SISA {row['sisa']['wall_seconds']:.1f} s (acc {ens['accuracy']:.4f}); "
              f"delete 1 id {row['delete_one']['wall_seconds']:.1f} s "
              f"({row['delete_one']['compute_seconds']:.1f} s compute), "
              f"10 ids {row['delete_ten']['wall_seconds']:.1f} s ({row['delete_ten']['compute_seconds']:.1f} s compute)",
              flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/delete_times.py" + (f" --only {args.only}" if args.only else ""),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
