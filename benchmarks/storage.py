"""Checkpoint storage: the weights file against the training-state file, per slice and per workspace.

A checkpoint is split into two files: the weights file (the model's state_dict, on the CPU),
which inference reads, and the training-state file (optimizer and scheduler state and the step
counters), which only training resumes from. For each model, built with the data shape it is
used with (logreg, mlp and cnn on Fashion-MNIST, 1x28x28; resnet18 on CIFAR-10, 3x32x32; 10
classes) and sisa's default optimizer (--optimizer overrides it), the script builds the training
state as sisa does (sisa.training.slices.make_training_state), runs one optimizer step on a
random batch, so that the optimizer's per-parameter state exists as in a real checkpoint, and
serialises both files with sisa's checkpoint_bytes. It reports the parameter count, the bytes of
each file, their sum (what one slice's checkpoint stores) and the one-file checkpoint of before
the split; then, for --shards S and --slices R (the SISA paper's 20 and 50 by default) and for
sisa's own defaults, the workspace's checkpoint storage (S * R slices) and what inference reads:
S weights files now, S whole checkpoints before the split. Writes <out>/<name>.json (with the run
record) and <name>.md (the tables), and prints the tables.

    python benchmarks/storage.py                                  # logreg, mlp, cnn, resnet18; S 20, R 50
    python benchmarks/storage.py --models mlp,cnn --optimizer sgd --name storage-sgd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import run_record  # benchmarks/ is the script's folder

RESULTS = Path(__file__).parent / "results"
MODEL_DATA = {"logreg": "fashion-mnist", "mlp": "fashion-mnist", "cnn": "fashion-mnist", "resnet18": "cifar10"}
"""The data source each model is measured with."""
SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CLASSES = 10


def parse_args(argv) -> argparse.Namespace:
    from sisa.settings import OPTIMIZERS, Settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                   default=list(MODEL_DATA), help=f"comma-separated, of {','.join(MODEL_DATA)} (default all)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=Settings.optimizer,
                   help=f"default: sisa's, {Settings.optimizer}")
    p.add_argument("--shards", type=int, default=20, help="shards S (default 20, as in the SISA paper)")
    p.add_argument("--slices", type=int, default=50, help="slices per shard R (default 50, as in the SISA paper)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="storage", help="results name (default storage)")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in MODEL_DATA]
    if unknown or not args.models:
        p.error(f"--models: choose from {', '.join(MODEL_DATA)}; got {', '.join(unknown) or 'none'}")
    return args


def trained_state(model_name: str, optimizer: str):
    """sisa's (settings, model, optimizer, scheduler) for ``model_name``, after one optimizer step."""
    import torch
    import torch.nn.functional as F

    from sisa.settings import DATASET_DEFAULTS, Settings
    from sisa.training.jobs import DataSpec
    from sisa.training.slices import make_training_state

    source = MODEL_DATA[model_name]
    defaults = {k: v for k, v in DATASET_DEFAULTS[source].items() if k != "model"}
    settings = Settings(**dict(defaults, model=model_name, optimizer=optimizer))
    data = DataSpec(SHAPES[source], "uint8", 1 / 255, CLASSES)
    model, opt, scheduler = make_training_state(settings, data, shard=0)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand((settings.batch_size, *data.shape), generator=generator)
    labels = torch.randint(0, CLASSES, (settings.batch_size,), generator=generator)
    model.train()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), labels).backward()
    opt.step()
    scheduler.step()
    return settings, model, opt, scheduler


def measure_model(model_name: str, optimizer: str) -> dict:
    """Parameter count and the bytes of the weights file, the training-state file and the one-file checkpoint."""
    from sisa.training.slices import to_cpu
    from sisa.workspace.files import checkpoint_bytes

    settings, model, opt, scheduler = trained_state(model_name, optimizer)
    counters = {"epochs": 1, "steps": 1, "sample_passes": settings.batch_size, "shard": 0, "slice": 0,
                "samples": settings.batch_size}
    weights = to_cpu(model.state_dict())
    training = {"optimizer": to_cpu(opt.state_dict()), "scheduler": scheduler.state_dict(), "counters": counters}
    weights_bytes = len(checkpoint_bytes(weights))
    state_bytes = len(checkpoint_bytes(training))
    return {"model": model_name, "data": MODEL_DATA[model_name], "shape": list(SHAPES[MODEL_DATA[model_name]]),
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_bytes": weights_bytes, "state_bytes": state_bytes, "slice_bytes": weights_bytes + state_bytes,
            "whole_checkpoint_bytes": len(checkpoint_bytes(dict(training, model=weights)))}


def workspace(m: dict, shards: int, slices: int, label: str) -> dict:
    """Checkpoint storage of S shards of R slices, and what inference reads (S last checkpoints)."""
    return {"label": label, "shards": shards, "slices": slices,
            "workspace_bytes": shards * slices * m["slice_bytes"],
            "workspace_bytes_before": shards * slices * m["whole_checkpoint_bytes"],
            "inference_bytes": shards * m["weights_bytes"],
            "inference_bytes_before": shards * m["whole_checkpoint_bytes"]}


def measure(args: argparse.Namespace) -> dict:
    from sisa.settings import Settings

    configs = [("SISA paper" if (args.shards, args.slices) == (20, 50) else "--shards/--slices",
                args.shards, args.slices)]
    if (Settings.shards, Settings.slices) != (args.shards, args.slices):
        configs.append(("sisa default", Settings.shards, Settings.slices))
    models = []
    for name in args.models:
        m = measure_model(name, args.optimizer)
        m["workspaces"] = [workspace(m, s, r, label) for label, s, r in configs]
        models.append(m)
        print(f"{name}: {m['parameters']:,} parameters, weights {size(m['weights_bytes'])}, "
              f"training state {size(m['state_bytes'])}", file=sys.stderr)
    return dict(run_record(), optimizer=args.optimizer, scheduler=Settings.scheduler, models=models)


def size(n: float) -> str:
    """Bytes in binary units: 812 B, 3.1 KiB, 42.7 MiB, 1.25 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def markdown(r: dict) -> str:
    m0 = r["machine"]
    lines = [f"# Checkpoint storage: weights file vs training-state file ({r['optimizer']}, one step taken)", "",
             (f"{r['date']}; `{r['command']}`; {m0['platform']}, torch {m0['torch']}. Sizes in binary units "
              f"(1 MiB = 2^20 bytes); files as sisa's checkpoint_bytes (torch.save) writes them."), "",
             ("| model | data (shape) | parameters | weights file | training-state file | per slice (both) "
              "| one file, before the split | state / weights |"), "|---|---|---|---|---|---|---|---|"]
    for m in r["models"]:
        lines.append(f"| {m['model']} | {m['data']} ({'x'.join(map(str, m['shape']))}) | {m['parameters']:,} | "
                     f"{size(m['weights_bytes'])} | {size(m['state_bytes'])} | {size(m['slice_bytes'])} | "
                     f"{size(m['whole_checkpoint_bytes'])} | {m['state_bytes'] / m['weights_bytes']:.2f} |")
    lines += ["", ("Workspace: S * R slice checkpoints stored; inference reads each shard's last weights "
                   "file (S files), where before the split it read S whole checkpoints."), "",
              ("| model | S x R | checkpoints stored | before the split | inference reads | before the split "
               "| inference reads less by |"), "|---|---|---|---|---|---|---|"]
    for m in r["models"]:
        for w in m["workspaces"]:
            lines.append(f"| {m['model']} | {w['shards']} x {w['slices']} ({w['label']}) | "
                         f"{size(w['workspace_bytes'])} | {size(w['workspace_bytes_before'])} | "
                         f"{size(w['inference_bytes'])} | {size(w['inference_bytes_before'])} | "
                         f"{w['inference_bytes_before'] / w['inference_bytes']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
