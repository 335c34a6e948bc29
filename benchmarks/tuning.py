"""Accuracy against deletion speedup at a fixed S: do shards deserve other settings?

Shards see 1/S of the data, so they may want more epochs or another learning rate than the
monolithic model. For each configuration this trains the monolithic model (S = 1, R = 1) and
the SISA ensemble (S, R) with it, in-process, and reports both test accuracies and the
speedup one deletion would have over retraining the *default* monolithic model, from
sisa.research.cost (expected sample-passes) and from the measured training compute.

    python benchmarks/tuning.py --data fashion-mnist --model mlp \\
        --configs "epochs=5;epochs=10;epochs=20;epochs=5,lr=3e-3;epochs=10,lr=3e-3"

Writes benchmarks/results/tuning-<data>-<model>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import pyplot, run_record  # benchmarks/ is the script's folder

RESULTS = Path(__file__).parent / "results"


def parse_configs(text: str) -> list[dict]:
    configs = []
    for part in text.split(";"):
        config = {}
        for item in part.split(","):
            if item.strip():
                key, value = (part.strip() for part in item.split("=", 1))
                config[key] = _value(key, value)
        configs.append(config)
    return configs


def _value(key: str, text: str):
    """A setting's value typed as :class:`sisa.settings.Settings` holds it."""
    if key in ("epochs", "batch_size", "slices", "shards", "seed", "threads"):
        return int(text)
    if key in ("lr", "weight_decay"):
        return float(text)
    return text


def aggregation_accuracies(workdir: Path) -> dict[str, float]:
    """Test accuracy of the trained ensemble under every aggregator (and the geometric mean
    of the shard probabilities), from one pass of the shard models over the test rows."""
    import numpy as np

    from sisa.aggregation import AGGREGATORS, aggregate
    from sisa.ops.ensemble import Ensemble
    from sisa.workspace.files import Workspace

    ensemble = Ensemble(Workspace(workdir))
    rows = ensemble.test_rows()
    probas = ensemble.shard_probas(rows.X)
    sizes = [ensemble.shard_sizes()[r.shard] for r in ensemble.final_records()]
    scores = {name: aggregate(name, probas, sizes) for name in AGGREGATORS}
    scores["geometric-mean (not an aggregator)"] = np.log(np.clip(probas, 1e-12, None)).mean(axis=0)
    return {name: float(np.mean(s.argmax(1) == rows.label)) for name, s in scores.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--model")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--configs", help="';'-separated settings, e.g. 'epochs=5;epochs=10,lr=3e-3'")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--name")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only rewrite the .md and .png of an earlier results file")
    args = parser.parse_args()
    if args.replot:
        result = json.loads(args.replot.read_text())
        args.replot.with_suffix(".md").write_text(markdown(result) + "\n")
        plot(result, args.replot.with_suffix(".png"))
        return 0
    if args.configs is None:
        parser.error("--configs is required (or --replot JSON)")

    import torch
    import torch._dynamo  # noqa: F401  - keep the optimizers' one-time import out of the timings

    from sisa.data.sources import load
    from sisa.ops.train import train_workspace
    from sisa.research.cost import expected_passes
    from sisa.settings import Settings
    from sisa.training.executors import make_executor

    dataset = load(args.data)
    base = dict(dataset.defaults)
    if args.model:
        base["model"] = args.model
    model = base.get("model", "mlp")
    executor = make_executor("local")
    n = len(dataset.train)
    default_mono = Settings(**{**base, "shards": 1, "slices": 1})
    default_passes = expected_passes(default_mono, n, 1, batch=False)
    rows = []
    default_mono_seconds = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(parse_configs(args.configs)):
            row = {"config": config}
            for label, shards, slices in (("monolithic", 1, 1), ("sisa", args.shards, args.slices)):
                settings = Settings(**{**base, **config, "shards": shards, "slices": slices})
                started = time.perf_counter()
                summary = train_workspace(Path(tmp) / f"{i}-{label}", dataset, settings, executor=executor)
                row[label] = {"accuracy": summary["accuracy"], "train_compute_seconds": summary["train_seconds"],
                              "seconds": time.perf_counter() - started}
                if label == "sisa":
                    row["sisa"]["accuracy_by_aggregation"] = aggregation_accuracies(Path(tmp) / f"{i}-{label}")
                    passes = expected_passes(settings, n, 1, batch=False)
                    row["theory_speedup_vs_default_monolithic"] = default_passes / passes
                    # one deletion costs its expected share of the ensemble's measured training compute
                    row["sisa"]["expected_delete_compute_seconds"] = (
                        summary["train_seconds"] * passes / (shards * _shard_passes(settings, n)))
                elif all(getattr(default_mono, k) == v for k, v in config.items()):
                    default_mono_seconds = summary["train_seconds"]
            row["gap_points"] = 100 * (row["monolithic"]["accuracy"] - row["sisa"]["accuracy"])
            rows.append(row)
            print(f"{config}: monolithic {row['monolithic']['accuracy']:.4f} ({row['monolithic']['train_compute_seconds']:.1f} s), "
                  f"S={args.shards} {row['sisa']['accuracy']:.4f} ({row['sisa']['train_compute_seconds']:.1f} s); "
                  f"theory speedup vs default monolithic {row['theory_speedup_vs_default_monolithic']:.1f}x; "
                  + ", ".join(f"{k} {v:.4f}" for k, v in row["sisa"]["accuracy_by_aggregation"].items()), flush=True)
    for row in rows:
        if default_mono_seconds:
            row["measured_speedup_vs_default_monolithic"] = (default_mono_seconds
                                                            / row["sisa"]["expected_delete_compute_seconds"])
    result = {
        **run_record(),
        "data": args.data, "model": model, "shards": args.shards, "slices": args.slices, "defaults": base,
        "rows": rows,
    }
    name = args.name or f"tuning-{Path(args.data).name}-{model}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (args.out / f"{name}.md").write_text(table + "\n")
    plot(result, args.out / f"{name}.png")
    print(table)
    return 0


def _shard_passes(settings, n: int) -> float:
    """Sample-passes of training one whole shard."""
    epochs = settings.slice_epochs()
    rows = n / settings.shards / settings.slices
    return sum((r + 1) * rows * epochs[r] for r in range(settings.slices))


def _defaults_label(result: dict) -> str:
    """The settings the empty configuration ran with, as they were when the run was made."""
    from sisa.settings import Settings

    base = {"lr": Settings().lr, **result["defaults"]}
    return "defaults (" + ", ".join(f"{k} {v}" for k, v in base.items()) + ")"


def markdown(result: dict) -> str:
    lines = [f"{result['data']}, {result['model']}, S = {result['shards']}, R = {result['slices']}; "
             f"{result['machine']['cpus']} CPUs, torch {result['machine']['torch']}, {result['date']}; "
             f"`{result['command']}`", "",
             "| settings | monolithic accuracy | SISA accuracy | gap (points) | one deletion vs default monolithic: theory | measured (from training compute) | SISA accuracy by aggregation |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        config = ", ".join(f"{k} {v}" for k, v in row["config"].items()) or _defaults_label(result)
        measured = row.get("measured_speedup_vs_default_monolithic")
        lines.append(f"| {config} | {row['monolithic']['accuracy']:.4f} | {row['sisa']['accuracy']:.4f} | "
                     f"{row['gap_points']:.2f} | {row['theory_speedup_vs_default_monolithic']:.1f}x | "
                     f"{f'{measured:.1f}x' if measured else '-'} | "
                     + "; ".join(f"{k} {v:.4f}" for k, v in row["sisa"].get("accuracy_by_aggregation", {}).items())
                     + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for row in result["rows"]:
        label = ", ".join(f"{k} {v}" for k, v in row["config"].items()) or "defaults"  # short, on the plot
        ax.scatter(row["theory_speedup_vs_default_monolithic"], row["sisa"]["accuracy"], color="tab:blue")
        ax.annotate(label, (row["theory_speedup_vs_default_monolithic"], row["sisa"]["accuracy"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=7)
    best = max(row["monolithic"]["accuracy"] for row in result["rows"])
    ax.axhline(best, color="black", linestyle="--", label=f"best monolithic {best:.4f}")
    ax.axhline(best - 0.02, color="grey", linestyle=":", label="2 points below")
    ax.set_xlabel("one deletion: expected speedup over the default monolithic retrain")
    ax.set_ylabel(f"S = {result['shards']} ensemble test accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"{result['data']}, {result['model']}: accuracy against speedup ({result['date'][:10]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
