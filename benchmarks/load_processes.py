"""1,000 deletion requests as separate `sisa delete` processes, 4 at a time: none lost, exact.

Trains a small tabular workspace, then serves --singles requests of one id and --batches
requests of --batch-size ids, each as its own `sisa delete` process, --concurrency processes at
once (the workspace lock serialises them). Then checks: every process exited 0, the ledger holds
every id as committed, `sisa audit` passes, and every checkpoint is bit-identical to training
from scratch without all of those ids. Writes benchmarks/results/load_processes.json.

    python benchmarks/load_processes.py                  # 600 singles + 40 batches of 10, 4 at once
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _common import checkpoint_shas  # benchmarks/ is the script's folder

RESULTS = Path(__file__).parent / "results"
SETTINGS = dict(shards=8, slices=3, epochs=2, batch_size=64)


def write_table(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    centres = rng.normal(0, 3, size=(3, 4))
    X = (centres[labels] + rng.normal(0, 1, size=(n, 4))).astype(np.float32)
    columns = {"id": pa.array(np.arange(1000, 1000 + n)), "label": pa.array(labels.astype(np.int64))}
    for j in range(4):
        columns[f"f{j}"] = pa.array(X[:, j])
    pq.write_table(pa.table(columns), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--singles", type=int, default=600)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    from sisa.data.sources import Dataset, load
    from sisa.ops.train import train_workspace
    from sisa.settings import Settings
    from sisa.workspace.files import Workspace
    from sisa.workspace.ledger import Ledger

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_table(tmp / "rows.parquet", args.rows)
        dataset = load(f"parquet:{tmp / 'rows.parquet'}")
        settings = Settings(**SETTINGS)
        ws = Workspace(tmp / "ws")
        train_workspace(ws.root, dataset, settings)
        ids = [int(i) for i in dataset.train.ids]
        random.Random(0).shuffle(ids)
        requests = [[ids.pop()] for _ in range(args.singles)]
        requests += [[ids.pop() for _ in range(args.batch_size)] for _ in range(args.batches)]
        random.Random(1).shuffle(requests)

        def serve(request: list[int]) -> dict:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "sisa", "delete", "--workdir", str(ws.root),
                                   "--ids", ",".join(map(str, request)), "--executor", "local", "--json"],
                                  capture_output=True, text=True)
            return {"ids": request, "code": done.returncode, "seconds": time.perf_counter() - started,
                    "acknowledged": done.returncode == 0 and sorted(json.loads(done.stdout)["deleted"]) == sorted(request),
                    "stderr": done.stderr[-500:] if done.returncode else ""}

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            outcomes = []
            for i, outcome in enumerate(pool.map(serve, requests), 1):
                outcomes.append(outcome)
                if i % 50 == 0:
                    print(f"{i}/{len(requests)} processes done, {time.perf_counter() - started:.0f} s", flush=True)
        wall = time.perf_counter() - started
        failed = [o for o in outcomes if o["code"] != 0 or not o["acknowledged"]]
        acknowledged = {i for o in outcomes if o["acknowledged"] for i in o["ids"]}

        ledger = Ledger(ws.ledger_path)
        try:
            in_ledger = {int(k.removeprefix("i:")) for k in ledger.deleted()}  # keys are sisa.ids.key_text
            counts = ledger.counts()
            open_requests = ledger.open_requests()
        finally:
            ledger.close()
        audit = subprocess.run([sys.executable, "-m", "sisa", "audit", "--workdir", str(ws.root), "--json"],
                               capture_output=True, text=True)
        removed = {i for r in requests for i in r}
        keep = ~np.isin(dataset.train.ids, list(removed))
        fresh = Dataset(dataset.spec, dataset.train.take(keep), dataset.test, dataset.shape, dataset.classes,
                        dataset.scale, dataset.feature_names)
        train_workspace(tmp / "fresh", fresh, settings)
        identical = checkpoint_shas(ws.root) == checkpoint_shas(tmp / "fresh")

    import torch

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "settings": SETTINGS, "rows": args.rows, "processes": len(requests), "concurrency": args.concurrency,
        "ids_requested": len(removed), "ids_acknowledged": len(acknowledged),
        "ids_in_ledger_committed": len(in_ledger & removed), "ledger_counts": counts,
        "open_requests": len(open_requests), "lost": len(acknowledged - in_ledger),
        "failed_processes": len(failed), "failures": failed[:5], "audit_ok": audit.returncode == 0,
        "identical_to_training_without": identical, "wall_seconds": wall,
        "median_process_seconds": float(np.median([o["seconds"] for o in outcomes])),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_processes.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=1))
    ok = not failed and result["lost"] == 0 and result["audit_ok"] and identical and not open_requests
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
