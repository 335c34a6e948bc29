"""Vectorised shard training (``--vectorise G``): exactness and isolation on this device, then
the time to train S shards one model at a time against G at once, and one deletion's time.

Checks (small, on digits with the cnn): a deletion spanning two groups gives the checkpoints
that training without the deleted ids gives (sha256 of every checkpoint), and removing rows of
one shard leaves its group companion's checkpoints unchanged. Timings: `train_workspace` with
each --widths value on --data, the in-process executor, then one random id deleted through the
API. Writes benchmarks/results/<name>.json and .md with the machine, command and date.

    python benchmarks/vectorised.py --device cuda --data fashion-mnist:.gpu/fmnist --widths 1,8
    python benchmarks/vectorised.py --device cpu --epochs 1 --widths 1,2    # a quick look on a CPU
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
from _common import checkpoint_shas, run_record  # benchmarks/ is the script's folder

RESULTS = Path(__file__).parent / "results"


def shas(workdir: Path) -> dict:
    return checkpoint_shas(workdir)


def layout(workdir: Path) -> dict:
    import pyarrow.parquet as pq

    out = {}
    for path in (workdir / "shards").glob("shard-*.parquet"):
        table = pq.read_table(path, columns=["id", "shard", "slice"])
        out.update({i: (s, r) for i, s, r in zip(*(table.column(c).to_pylist() for c in ("id", "shard", "slice")))})
    return out


def without(dataset, removed):
    from sisa.data.sources import Dataset

    keep = ~np.isin(dataset.train.ids, np.asarray(sorted(removed), dtype=dataset.train.ids.dtype))
    return Dataset(dataset.spec, dataset.train.take(keep), dataset.test, dataset.shape, dataset.classes,
                   dataset.scale, dataset.feature_names, dataset.defaults)


def checks(device: str, tmp: Path) -> dict:
    """Exactness across groups, and isolation inside one, on this device."""
    from sisa.data.sources import load
    from sisa.ops.delete import delete
    from sisa.ops.train import train_workspace
    from sisa.settings import Settings
    from sisa.workspace.files import Workspace

    digits = load("digits")
    settings = Settings(shards=3, slices=3, epochs=2, batch_size=32, model="cnn", vectorise=2, device=device)
    train_workspace(tmp / "ws", digits, settings)
    where = layout(tmp / "ws")
    ids = sorted(where)
    forget = [next(i for i in ids if where[i] == (0, 2)), next(i for i in ids if where[i] == (1, 1)),
              next(i for i in ids if where[i] == (2, 0))]
    delete(Workspace(tmp / "ws"), forget)
    train_workspace(tmp / "fresh", without(digits, forget), settings)
    exact = shas(tmp / "ws") == shas(tmp / "fresh")
    two = settings.replace(shards=2)
    train_workspace(tmp / "all", digits, two)
    where = layout(tmp / "all")
    train_workspace(tmp / "fewer", without(digits, [i for i in sorted(where) if where[i][0] == 1][::3]), two)
    a, b = shas(tmp / "all"), shas(tmp / "fewer")
    isolated = all(a[k] == b[k] for k in a if k[0] == 0) and all(a[k] != b[k] for k in a if k[0] == 1)
    for name in ("ws", "fresh", "all", "fewer"):
        shutil.rmtree(tmp / name)
    return {"delete_equals_training_without": exact, "companion_unchanged": isolated}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--slices", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--widths", default="1,8", help="vectorise values to time, e.g. 1,4,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="results name (default vectorised-<device>)")
    args = parser.parse_args()

    from sisa.data.sources import load
    from sisa.ops.delete import delete
    from sisa.ops.train import train_workspace
    from sisa.settings import Settings
    from sisa.workspace.files import Workspace

    dataset = load(args.data)
    base = {**dataset.defaults, "model": args.model, "shards": args.shards, "device": args.device, "seed": args.seed}
    base.update({k: getattr(args, k) for k in ("slices", "epochs") if getattr(args, k) is not None})
    rng = np.random.default_rng(args.seed)
    forget = rng.choice(dataset.train.ids).item()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        verdict = checks(args.device, tmp)
        print(f"checks ({time.perf_counter() - started:.1f} s): {verdict}", flush=True)
        for width in [int(w) for w in args.widths.split(",")]:
            settings = Settings(**{**base, "vectorise": width})
            started = time.perf_counter()
            summary = train_workspace(tmp / f"v{width}", dataset, settings)
            wall = time.perf_counter() - started
            started = time.perf_counter()
            deleted = delete(Workspace(tmp / f"v{width}"), [forget])
            rows.append({"vectorise": width, "accuracy": summary["accuracy"], "train_seconds": summary["train_seconds"],
                         "train_wall_seconds": wall, "delete_seconds": time.perf_counter() - started,
                         "retrained": deleted["retrained"]})
            print(f"vectorise {width}: accuracy {summary['accuracy']:.4f}, training {summary['train_seconds']:.2f} s "
                  f"({wall:.2f} s wall), one deletion {rows[-1]['delete_seconds']:.2f} s", flush=True)
            shutil.rmtree(tmp / f"v{width}")
    result = {**run_record(), "device": args.device, "data": args.data, "settings": base, "checks": verdict,
              "rows": rows}
    name = args.name or f"vectorised-{args.device}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{args.data}, {args.model}, S = {args.shards}, on {args.device}; {result['date']}; "
             f"`{result['command']}`", "",
             f"Checks: deletion across two groups equals training without: {verdict['delete_equals_training_without']}; "
             f"a companion's checkpoints unchanged when its group mate's rows change: {verdict['companion_unchanged']}.", "",
             "| vectorise | accuracy | training s | training wall s | one deletion s | speedup of training over vectorise 1 |",
             "|---|---|---|---|---|---|"]
    one = next((r for r in rows if r["vectorise"] == 1), None)
    for r in rows:
        speedup = f"{one['train_seconds'] / r['train_seconds']:.2f}x" if one else "-"
        lines.append(f"| {r['vectorise']} | {r['accuracy']:.4f} | {r['train_seconds']:.2f} | "
                     f"{r['train_wall_seconds']:.2f} | {r['delete_seconds']:.2f} | {speedup} |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
