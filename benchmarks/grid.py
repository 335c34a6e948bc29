"""Deletion speedup and accuracy over a grid of shards x slices, against theory.

For each (S, R): train the SISA ensemble (test accuracy, training time); delete one random id
at a time in a fresh copy of the workspace with `sisa delete` as a separate process (end to end,
start-up included) and report the median over --ids ids, also as compute (the retrained slices'
seconds); then serve K random requests one by one and as one batch through the API
(sisa.ops.delete.delete, no process start-up) for each K in --ks. The baseline is the monolithic
model (S = 1, R = 1): one full retrain per request (one per batch). The theory column is
sisa.research.cost.expected_speedup, from SISA's analysis; measured / theory shows the overheads.

Writes benchmarks/results/grid-<name>.json, .md and .png, with the machine, command and date.

    python benchmarks/grid.py --data digits                                  # the full grid
    python benchmarks/grid.py --data fashion-mnist --model mlp --ks 1,4,16 --k-cells 8x4
    python benchmarks/grid.py --data fashion-mnist --model cnn --cells 8x4,8x8,20x50 --ks 1,8 \\
        --name fmnist-cnn-targets              # the targets at S = 8, and SISA's protocol (S 20, R 50, K 8)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import pyplot, retrained_seconds, run_record  # benchmarks/ is the script's folder

RESULTS = Path(__file__).parent / "results"


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def process_delete(trained: Path, scratch: Path, ident) -> dict:
    """`sisa delete` of one id as its own process, in a fresh copy of the workspace."""
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(trained, scratch)
    return timed_delete(scratch, ident)


def timed_delete(workdir: Path, ident) -> dict:
    """`sisa delete --ids ident` as a process (answered by a `sisa serve` of ``workdir`` when
    one runs): wall seconds, the command's own seconds and the retrained slices' seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sisa", "delete", "--workdir", str(workdir), "--ids", str(ident),
                           "--executor", "local", "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"sisa delete failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return {"id": ident, "wall_seconds": wall, "command_seconds": result["seconds"],
            "compute_seconds": retrained_seconds(workdir, result), "retrained": result["retrained"]}


def served_deletes(trained: Path, scratch: Path, ids: list) -> list[dict]:
    """`sisa delete` of one id at a time as its own (client) process, served by one warm
    `sisa serve` of ``scratch``, whose shards and checkpoints are restored before each id."""
    from sisa.serve.client import connect

    def restore() -> None:
        for part in ("shards", "checkpoints"):
            if (scratch / part).exists():
                shutil.rmtree(scratch / part)
            shutil.copytree(trained / part, scratch / part)

    scratch.mkdir(parents=True, exist_ok=True)
    restore()
    server = subprocess.Popen([sys.executable, "-m", "sisa", "serve", "--workdir", str(scratch)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (sock := connect(scratch, timeout=1.0)) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sisa serve did not start: {server.stderr.read()}")
            time.sleep(0.1)
        sock.close()
        runs = []
        for ident in ids:
            restore()
            runs.append(timed_delete(scratch, ident))
    finally:
        server.terminate()
        server.wait(timeout=120)
    shutil.rmtree(scratch)
    return runs


def stratified_ids(workdir: Path, seed: int, shard: int = 0) -> list:
    """One random id from each slice of ``shard``: deleting each in turn, from the same
    trained state, and averaging, measures the *expected* cost of one uniform deletion (the
    quantity theory predicts), which a median of a few random ids only estimates roughly."""
    from sisa.workspace.files import Workspace, file_ids

    workspace = Workspace(workdir)
    ids, slices = file_ids(workspace, workspace.manifest().shard(shard))  # checked against the manifest
    ids = ids.tolist()
    rng = np.random.default_rng(seed)
    return [ids[rng.choice(np.flatnonzero(slices == r))] for r in range(int(slices.max()) + 1)]


def one_deletion_summary(runs: list[dict], mono_wall: float, mono_compute: float, theory: float,
                         stat: str = "median") -> dict:
    """Speedups of the ``stat`` (median or mean) deletion of ``runs`` over the baselines."""
    of = {"median": statistics.median, "mean": statistics.fmean}[stat]
    wall = of([r["wall_seconds"] for r in runs])
    compute = of([r["compute_seconds"] for r in runs])
    return {f"{stat}_wall_seconds": wall, f"{stat}_compute_seconds": compute,
            f"{stat}_overhead_seconds": of([r["wall_seconds"] - r["compute_seconds"] for r in runs]),
            "speedup_end_to_end": mono_wall / wall, "speedup_compute": mono_compute / compute,
            "theory_speedup": theory, "measured_over_theory_end_to_end": mono_wall / wall / theory,
            "measured_over_theory_compute": mono_compute / compute / theory, "runs": runs}


def monolithic(args, base: dict, workdir: Path) -> dict:
    """The baseline: one model, trained as `sisa train --shards 1 --slices 1` (a process)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sisa", "train", "--data", args.data, "--shards", "1",
                           "--slices", "1", "--workdir", str(workdir), "--executor", "local", "--json",
                           *sum(([f"--{k}", str(base[k])] for k in ("model", "epochs", "lr") if k in base), [])],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    result = json.loads(done.stdout)
    shutil.rmtree(workdir)
    return {"accuracy": result["accuracy"], "train_seconds": result["train_seconds"], "wall_seconds": wall}


def rebase(cell: dict, mono_wall: float, mono_compute: float) -> None:
    """(Re)compute a cell's speedups against the monolithic baseline from its raw timings."""
    for key in ("one_deletion", "expected_deletion"):
        stat = "median" if key == "one_deletion" else "mean"
        for suffix, wall in (("", mono_wall), ("_served", mono_compute)):
            # a served deletion skips start-up, so its baseline (training seconds) does too
            if cell.get(key + suffix):
                d = cell[key + suffix]
                cell[key + suffix] = one_deletion_summary(d["runs"], wall, mono_compute, d["theory_speedup"], stat)
    for k in cell.get("k_sweep", []):
        k.update({"monolithic_one_by_one_seconds": k["k"] * mono_compute,
                  "speedup_one_by_one": k["k"] * mono_compute / k["one_by_one_seconds"],
                  "speedup_batch": mono_compute / k["batch_seconds"]})
        k["measured_over_theory_one_by_one"] = k["speedup_one_by_one"] / k["theory_one_by_one"]
        k["measured_over_theory_batch"] = k["speedup_batch"] / k["theory_batch"]


def api_deletes(trained: Path, scratch: Path, batches: list[list]) -> float:
    """Serve ``batches`` of ids in order through the API; total seconds."""
    from sisa.ops.delete import delete
    from sisa.training.executors import make_executor
    from sisa.workspace.files import Workspace

    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(trained, scratch)
    executor = make_executor("local")
    started = time.perf_counter()
    for ids in batches:
        delete(Workspace(scratch), ids, executor=executor)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", help="default: the dataset's")
    parser.add_argument("--epochs", type=int, help="default: the dataset's")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--shards", type=ints, default=[1, 2, 4, 8, 16])
    parser.add_argument("--slices", type=ints, default=[1, 4, 8])
    parser.add_argument("--cells", help="only these (S, R) cells instead of shards x slices, e.g. 8x4,20x50")
    parser.add_argument("--ks", type=ints, default=[1, 4, 16, 64], help="request counts K for the K sweep")
    parser.add_argument("--k-cells", help="run the K sweep only in these cells, e.g. 8x4,16x8 (default: all)")
    parser.add_argument("--ids", type=int, default=5, help="single deletions (processes) per cell; 0 skips")
    parser.add_argument("--serve", action="store_true",
                        help="also time the single deletions served by a warm `sisa serve`")
    parser.add_argument("--stratified", action="store_true",
                        help="also measure the expected cost of one deletion: one id from each slice "
                             "of shard 0, each deleted from the trained state, averaged")
    parser.add_argument("--mono-repeats", type=int, default=1,
                        help="train the monolithic baseline this many times, the first before the cells and "
                             "the others after them; speedups use the mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", help="results name (default grid-<data>-<model>)")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only rewrite the .md and .png of an earlier results file")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="combine the cells of runs made side by side (e.g. the grid split over two "
                             "processes) into --name, against the mean of their monolithic baselines")
    args = parser.parse_args()
    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
        name = args.name or "grid-merged"
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{name}.md").write_text(markdown(result) + "\n")
        plot(result, args.out / f"{name}.png")
        print(markdown(result))
        return 0
    if args.replot:
        result = json.loads(args.replot.read_text())
        args.replot.with_suffix(".md").write_text(markdown(result) + "\n")
        plot(result, args.replot.with_suffix(".png"))
        return 0

    import torch
    import torch._dynamo  # noqa: F401  - optimizers import it on first use; keep it out of the timings

    from sisa.data.sources import load
    from sisa.ops.train import train_workspace
    from sisa.research.cost import expected_speedup
    from sisa.settings import Settings
    from sisa.training.executors import make_executor

    dataset = load(args.data)
    base = dict(dataset.defaults)
    for key in ("model", "epochs", "lr"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    model = base.get("model", "mlp")
    name = args.name or f"grid-{Path(args.data).name}-{model}"
    k_cells = None if not args.k_cells else {tuple(map(int, c.split("x"))) for c in args.k_cells.split(",")}
    grid = ([tuple(map(int, c.split("x"))) for c in args.cells.split(",")] if args.cells else
            [(s, r) for s in args.shards for r in args.slices])
    rng = np.random.default_rng(args.seed)
    train_ids = dataset.train.ids
    requests = [i.item() for i in rng.permutation(train_ids)[:max(args.ks + [args.ids])]]
    executor = make_executor("local")
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        monos = [monolithic(args, base, tmp / "mono")]
        mono_wall, mono_compute = monos[0]["wall_seconds"], monos[0]["train_seconds"]
        print(f"monolithic: accuracy {monos[0]['accuracy']:.4f}, {mono_compute:.1f} s training, "
              f"{mono_wall:.1f} s as a process", flush=True)
        for shards, slices in grid:
            settings = Settings(**{**base, "shards": shards, "slices": slices, "seed": args.seed})
            workdir = tmp / f"s{shards}-r{slices}"
            try:
                summary = train_workspace(workdir, dataset, settings, executor=executor)
            except Exception as exc:  # e.g. more slices than rows in a shard
                print(f"S={shards} R={slices}: skipped ({exc})", flush=True)
                continue
            cell = {"shards": shards, "slices": slices, "accuracy": summary["accuracy"],
                    "train_seconds": summary["seconds"], "train_compute_seconds": summary["train_seconds"]}
            n = summary["n_train"]
            singles = [process_delete(workdir, tmp / "scratch", i) for i in requests[:args.ids]]
            theory = expected_speedup(settings, n, 1, batch=False)
            if singles:
                cell["one_deletion"] = one_deletion_summary(singles, mono_wall, mono_compute, theory)
            if singles and args.serve:
                served = served_deletes(workdir, tmp / "served", requests[:args.ids])
                # against the monolithic model's training seconds alone: a served deletion skips
                # start-up, so the baseline does too (the conservative comparison)
                cell["one_deletion_served"] = one_deletion_summary(served, mono_compute, mono_compute, theory)
            if args.stratified:
                chosen = stratified_ids(workdir, args.seed)
                runs = [process_delete(workdir, tmp / "scratch", i) for i in chosen]
                cell["expected_deletion"] = one_deletion_summary(runs, mono_wall, mono_compute, theory,
                                                                 stat="mean")
                if args.serve:
                    runs = served_deletes(workdir, tmp / "served", chosen)
                    cell["expected_deletion_served"] = one_deletion_summary(runs, mono_compute, mono_compute,
                                                                            theory, stat="mean")
            if k_cells is None or (shards, slices) in k_cells:
                sweep = []
                for k in args.ks:
                    ids = requests[:k]
                    one_by_one = api_deletes(workdir, tmp / "scratch", [[i] for i in ids])
                    batch = api_deletes(workdir, tmp / "scratch", [ids])
                    sweep.append({"k": k, "one_by_one_seconds": one_by_one, "batch_seconds": batch,
                                  "theory_one_by_one": expected_speedup(settings, n, k, batch=False),
                                  "theory_batch": expected_speedup(settings, n, k, batch=True)})
                cell["k_sweep"] = sweep
            rebase(cell, mono_wall, mono_compute)
            cells.append(cell)
            shutil.rmtree(workdir)
            line = f"S={shards:2d} R={slices:2d}: accuracy {cell['accuracy']:.4f}, training {cell['train_seconds']:.1f} s"
            if "one_deletion" in cell:
                d = cell["one_deletion"]
                line += (f"; one deletion {d['median_wall_seconds']:.1f} s end to end ({d['speedup_end_to_end']:.1f}x), "
                         f"{d['median_compute_seconds']:.2f} s compute ({d['speedup_compute']:.1f}x; "
                         f"theory {d['theory_speedup']:.1f}x); overhead {d['median_overhead_seconds']:.2f} s")
            for key, label in (("expected_deletion", "expected (one id per slice, mean)"),
                               ("expected_deletion_served", "expected, served")):
                if key in cell:
                    d = cell[key]
                    line += (f"\n    {label}: {d['mean_wall_seconds']:.2f} s end to end ({d['speedup_end_to_end']:.1f}x), "
                             f"{d['mean_compute_seconds']:.2f} s compute ({d['speedup_compute']:.1f}x; theory "
                             f"{d['theory_speedup']:.1f}x), overhead {d['mean_overhead_seconds']:.2f} s")
            if "one_deletion_served" in cell:
                d = cell["one_deletion_served"]
                line += (f"\n    served by sisa serve: {d['median_wall_seconds']:.2f} s end to end "
                         f"({d['speedup_end_to_end']:.1f}x), overhead {d['median_overhead_seconds']:.2f} s")
            for k in cell.get("k_sweep", []):
                line += (f"\n    K={k['k']:3d}: one by one {k['one_by_one_seconds']:.1f} s "
                         f"({k['speedup_one_by_one']:.1f}x, theory {k['theory_one_by_one']:.1f}x); "
                         f"batch {k['batch_seconds']:.1f} s ({k['speedup_batch']:.1f}x, theory {k['theory_batch']:.1f}x)")
            print(line, flush=True)
        for repeat in range(1, args.mono_repeats):
            # again after the cells: the baseline then brackets them, and a drift in the
            # machine's speed shows as a spread between the runs instead of a bias
            monos.append(monolithic(args, base, tmp / "mono"))
            print(f"monolithic again: {monos[-1]['train_seconds']:.1f} s training, "
                  f"{monos[-1]['wall_seconds']:.1f} s as a process", flush=True)
        mono_wall = statistics.fmean(m["wall_seconds"] for m in monos)
        mono_compute = statistics.fmean(m["train_seconds"] for m in monos)
        for cell in cells:
            rebase(cell, mono_wall, mono_compute)
    result = {
        **run_record(),
        "data": args.data, "settings": {**base, "seed": args.seed}, "n_train": int(len(train_ids)),
        "monolithic": {"accuracy": monos[0]["accuracy"], "train_seconds": mono_compute, "wall_seconds": mono_wall,
                       **({"runs": monos} if len(monos) > 1 else {})},
        "cells": cells,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result) + "\n")
    plot(result, args.out / f"{name}.png")
    print(markdown(result))
    return 0


def merge(parts: list[dict]) -> dict:
    """One result from runs of the same data and settings made side by side: every cell, its
    speedups recomputed against the mean of all the runs' monolithic baselines."""
    if len({json.dumps([p["data"], p["settings"], p["n_train"]]) for p in parts}) != 1:
        raise SystemExit("--merge takes runs of the same data and settings")
    runs = [run for p in parts for run in p["monolithic"].get("runs", [p["monolithic"]])]
    mono = {"accuracy": parts[0]["monolithic"]["accuracy"],
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            "wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs), "runs": runs}
    cells = sorted((c for p in parts for c in p["cells"]), key=lambda c: (c["shards"], c["slices"]))
    for cell in cells:
        rebase(cell, mono["wall_seconds"], mono["train_seconds"])
    return {**parts[0], "date": max(p["date"] for p in parts), "command": parts[0]["command"],
            "merged_from": [{"command": p["command"], "date": p["date"], "monolithic": p["monolithic"]} for p in parts],
            "monolithic": mono, "cells": cells}


def markdown(result: dict) -> str:
    mono = result["monolithic"]
    lines = [f"{result['data']}, {result['settings'].get('model', 'mlp')}, {result['n_train']} training rows; "
             f"monolithic: accuracy {mono['accuracy']:.4f}, {mono['train_seconds']:.1f} s training, "
             f"{mono['wall_seconds']:.1f} s as a process"
             + (f" (mean of {len(mono['runs'])} runs, training "
                f"{', '.join(format(r['train_seconds'], '.1f') for r in mono['runs'])} s)" if mono.get("runs") else "")
             + f". {result['machine']['cpus']} CPUs, "
             f"torch {result['machine']['torch']}, {result['date']}; "
             + ("; ".join(f"`{p['command']}`" for p in result["merged_from"]) + " (side by side, merged)"
                if result.get("merged_from") else f"`{result['command']}`"), "",
             "| S | R | accuracy | training s | 1 deletion end to end s | speedup | compute s | speedup | theory | measured/theory (compute) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        d = c.get("one_deletion")
        tail = (f"{d['median_wall_seconds']:.2f} | {d['speedup_end_to_end']:.1f}x | {d['median_compute_seconds']:.2f} | "
                f"{d['speedup_compute']:.1f}x | {d['theory_speedup']:.1f}x | {d['measured_over_theory_compute']:.2f}"
                if d else "- | - | - | - | - | -")
        lines.append(f"| {c['shards']} | {c['slices']} | {c['accuracy']:.4f} | {c['train_seconds']:.1f} | {tail} |")
    served = [c for c in result["cells"] if c.get("one_deletion_served")]
    if served:
        lines += ["", "One deletion as a `sisa delete` process: on its own (speedup against the monolithic "
                  "`sisa train` process), and served by a warm `sisa serve` (speedup against the monolithic "
                  "model's training seconds alone, start-up left out of both); overhead = end to end minus "
                  "the retrained slices' seconds; medians.", "",
                  "| S | R | own process s | overhead s | speedup | served s | overhead s | speedup | theory |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in served:
            d, v = c["one_deletion"], c["one_deletion_served"]
            lines.append(f"| {c['shards']} | {c['slices']} | {d['median_wall_seconds']:.2f} | "
                         f"{d['median_overhead_seconds']:.2f} | {d['speedup_end_to_end']:.1f}x | "
                         f"{v['median_wall_seconds']:.2f} | {v['median_overhead_seconds']:.2f} | "
                         f"{v['speedup_end_to_end']:.1f}x | {v['theory_speedup']:.1f}x |")
    expected = [c for c in result["cells"] if c.get("expected_deletion")]
    if expected:
        lines += ["", "Expected cost of one deletion: one id from each slice of shard 0, each deleted from the "
                  "trained state, mean over the R deletions (what theory predicts). Own process: against the "
                  "monolithic `sisa train` process; served and compute: against the monolithic training "
                  "seconds.", "",
                  "| S | R | own process s | speedup | served s | speedup | compute s | speedup | theory | "
                  "measured / theory (own process, served, compute) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in expected:
            d, v = c["expected_deletion"], c.get("expected_deletion_served")
            served_cells = (f"{v['mean_wall_seconds']:.2f} | {v['speedup_end_to_end']:.1f}x" if v else "- | -")
            ratios = [d["measured_over_theory_end_to_end"], v["measured_over_theory_end_to_end"] if v else None,
                      d["measured_over_theory_compute"]]
            lines.append(f"| {c['shards']} | {c['slices']} | {d['mean_wall_seconds']:.2f} | "
                         f"{d['speedup_end_to_end']:.1f}x | {served_cells} | {d['mean_compute_seconds']:.2f} | "
                         f"{d['speedup_compute']:.1f}x | {d['theory_speedup']:.1f}x | "
                         f"{', '.join('-' if r is None else f'{r:.2f}' for r in ratios)} |")
    sweeps = [c for c in result["cells"] if c.get("k_sweep")]
    if sweeps:
        lines += ["", "| S | R | K | one by one s | K retrains s | speedup | theory | measured/theory | "
                  "batch s | speedup | theory | measured/theory |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in sweeps:
            for k in c["k_sweep"]:
                lines.append(
                    f"| {c['shards']} | {c['slices']} | {k['k']} | {k['one_by_one_seconds']:.1f} | "
                    f"{k['monolithic_one_by_one_seconds']:.1f} | {k['speedup_one_by_one']:.1f}x | "
                    f"{k['theory_one_by_one']:.1f}x | {k['measured_over_theory_one_by_one']:.2f} | "
                    f"{k['batch_seconds']:.1f} | {k['speedup_batch']:.1f}x | {k['theory_batch']:.1f}x | "
                    f"{k['measured_over_theory_batch']:.2f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    cells = result["cells"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for slices in sorted({c["slices"] for c in cells}):
        row = [c for c in cells if c["slices"] == slices]
        left.plot([c["shards"] for c in row], [c["accuracy"] for c in row], marker="o", label=f"R = {slices}")
        # the median random deletion, or else the expected one (--stratified)
        key = "one_deletion" if any(c.get("one_deletion") for c in row) else "expected_deletion"
        timed = [c for c in row if c.get(key)]
        if timed:
            xs = [c["shards"] for c in timed]
            line, = right.plot(xs, [c[key]["speedup_compute"] for c in timed], marker="o",
                               label=f"R = {slices}, compute")
            right.plot(xs, [c[key]["speedup_end_to_end"] for c in timed], marker="s", linestyle=":",
                       color=line.get_color(), label=f"R = {slices}, end to end")
            served = [c for c in timed if c.get(f"{key}_served")]
            if served:
                right.plot([c["shards"] for c in served], [c[f"{key}_served"]["speedup_end_to_end"] for c in served],
                           marker="^", linestyle="-.", color=line.get_color(), label=f"R = {slices}, served")
            right.plot(xs, [c[key]["theory_speedup"] for c in timed], linestyle="--", marker="x",
                       color=line.get_color(), alpha=0.6, label=f"R = {slices}, theory")
    left.axhline(result["monolithic"]["accuracy"], color="black", linestyle="--", label="monolithic")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shards S")
    left.set_ylabel("ensemble test accuracy")
    left.legend(fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("one deletion: speedup over a monolithic retrain")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{result['data']}, {result['settings'].get('model', 'mlp')}: what sharding costs and buys "
                 f"({result['date'][:10]}, {result['machine']['cpus']} CPUs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
