"""Incremental training: `add` a batch of new rows against retraining everything.

Trains the SISA ensemble on the data less a random fraction of its training rows, then adds that
fraction with `add` (new slices at the end of every shard, trained from each shard's last
checkpoint); separately trains the same settings on every row from scratch. Reports both times
(training compute and wall clock, in process, shards one after another) and both test
accuracies. Writes benchmarks/results/<name>.json and .md with the machine, command and date.

    python benchmarks/add.py                                   # Fashion-MNIST mlp, S = 8, R = 4, 1%
    python benchmarks/add.py --data digits --fraction 0.05 --name add-digits
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import run_record  # benchmarks/ is the script's folder


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--epochs", type=int, help="default: the dataset's")
    parser.add_argument("--fraction", type=float, default=0.01, help="share of training rows added later")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="add-fashion-mnist-mlp")
    args = parser.parse_args(argv)

    from sisa.data.sources import Dataset, load
    from sisa.ops.ensemble import Ensemble
    from sisa.ops.lifecycle import add_rows
    from sisa.ops.train import train_workspace
    from sisa.settings import Settings
    from sisa.training.executors import make_executor
    from sisa.workspace.files import Workspace

    data = load(args.data)
    chosen = dict(data.defaults, model=args.model, shards=args.shards, slices=args.slices)
    if args.epochs:
        chosen["epochs"] = args.epochs
    settings = Settings(**chosen)
    later = np.random.default_rng(0).random(len(data.train)) < args.fraction
    first = Dataset(data.spec, data.train.take(~later), data.test, data.shape, data.classes, data.scale,
                    data.feature_names, data.defaults)
    local = make_executor("local")

    def accuracy(workdir: Path) -> float:
        ensemble = Ensemble(Workspace(workdir))
        labels = np.asarray(data.label_index(data.test.y, "test data"))
        return float((ensemble.predict_proba(data.test.X).argmax(axis=1) == labels).mean())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        base = train_workspace(root / "incremental", first, settings, executor=local)
        base_wall = time.perf_counter() - started
        started = time.perf_counter()
        added = add_rows(Workspace(root / "incremental"), data.train.take(later), executor=local)
        add_wall = time.perf_counter() - started
        incremental_accuracy = accuracy(root / "incremental")
        started = time.perf_counter()
        full = train_workspace(root / "full", data, settings, executor=local)
        full_wall = time.perf_counter() - started
        full_accuracy = accuracy(root / "full")
        shutil.rmtree(root, ignore_errors=True)

    result = dict(run_record(), settings=settings.to_dict(), data=args.data, fraction=args.fraction,
                  rows_first=int((~later).sum()), rows_added=int(later.sum()),
                  first_training={"train_seconds": base["train_seconds"], "wall_seconds": round(base_wall, 3),
                                  "accuracy": base.get("accuracy")},
                  add={"train_seconds": added["train_seconds"], "wall_seconds": round(add_wall, 3),
                       "epochs_per_new_slice": added["epochs"], "accuracy": incremental_accuracy},
                  retrain_everything={"train_seconds": full["train_seconds"], "wall_seconds": round(full_wall, 3),
                                      "accuracy": full_accuracy})
    result["speedup_train"] = round(full["train_seconds"] / max(added["train_seconds"], 1e-9), 2)
    result["speedup_wall"] = round(full_wall / max(add_wall, 1e-9), 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    s = r["settings"]
    return "\n".join([
        f"# add {r['rows_added']} rows ({r['fraction']:.0%}) vs retraining everything: {r['data']} {s['model']}, "
        f"S = {s['shards']}, R = {s['slices']}, {s['epochs']} epochs",
        "",
        f"{r['date']}; `{r['command']}`; {r['machine']['platform']}, {r['machine']['cpus']} CPUs, torch "
        f"{r['machine']['torch']} ({r['machine']['cpu_capability']}); in process, shards one after another.",
        "",
        "| | training compute (s) | wall (s) | test accuracy |",
        "|---|---|---|---|",
        f"| train on {r['rows_first']} rows | {r['first_training']['train_seconds']:.1f} | "
        f"{r['first_training']['wall_seconds']:.1f} | {r['first_training']['accuracy']:.4f} |",
        f"| then `add` {r['rows_added']} rows (1 new slice, {r['add']['epochs_per_new_slice']} epoch(s)) | "
        f"{r['add']['train_seconds']:.1f} | {r['add']['wall_seconds']:.1f} | {r['add']['accuracy']:.4f} |",
        f"| retrain everything on {r['rows_first'] + r['rows_added']} rows | "
        f"{r['retrain_everything']['train_seconds']:.1f} | {r['retrain_everything']['wall_seconds']:.1f} | "
        f"{r['retrain_everything']['accuracy']:.4f} |",
        "",
        f"`add` is {r['speedup_train']}x faster in training compute, {r['speedup_wall']}x in wall time.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
