"""``sisa train``: partition a dataset and train every shard, slice by slice."""

from __future__ import annotations

import argparse
from typing import Any

from sisa.cli._common import add_common, add_executor_args, emit, executor_from, fmt_seconds, info


class Train:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        from sisa.settings import DEVICES, EPOCH_SCHEDULES, OPTIMIZERS, SCHEDULERS

        p = sub.add_parser("train", help="train a sharded, sliced ensemble",
                           description="Partition the data into shards and slices and train every "
                                       "shard, keeping a checkpoint after each slice.")
        p.add_argument("--data", default="digits", metavar="SPEC",
                       help="digits (default), fashion-mnist[:DIR], mnist[:DIR], cifar10[:DIR], "
                            "csv:PATH or parquet:PATH")
        p.add_argument("--test-data", metavar="SPEC", help="separate evaluation data")
        p.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                       help="share of rows held out for testing, chosen by a hash of the id, when "
                            "the data has no test split and --test-data is not given (default 0.2)")
        p.add_argument("--id-col", default="id", help="id column of a table (default id)")
        p.add_argument("--label-col", default="label", help="label column of a table (default label)")
        p.add_argument("--shards", type=int, help="number of shards S (default 5)")
        p.add_argument("--slices", type=int, help="slices per shard R (default 4)")
        p.add_argument("--model", help="logreg, mlp, cnn or resnet18 (default: mlp for tables "
                                       "and digits, cnn for the other image datasets)")
        p.add_argument("--epochs", type=int, help="epochs of an unsliced shard (default 30; "
                                                  "recalibrated over the slices)")
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
        p.add_argument("--optimizer", choices=OPTIMIZERS)
        p.add_argument("--weight-decay", type=float)
        p.add_argument("--scheduler", choices=SCHEDULERS)
        p.add_argument("--epoch-schedule", choices=EPOCH_SCHEDULES)
        p.add_argument("--seed", type=int)
        p.add_argument("--threads", type=int, help="torch threads per shard (default 1); "
                                                   "changing it changes the trained bits")
        p.add_argument("--device", choices=DEVICES)
        p.add_argument("--aggregation", help="mean-proba (default), vote or size-weighted")
        p.add_argument("--force", action="store_true", help="replace an existing workspace")
        add_executor_args(p)
        add_common(p)
        p.set_defaults(func=self._cmd)

    SETTINGS_FLAGS = ("shards", "slices", "model", "epochs", "batch_size", "lr", "optimizer",
                      "weight_decay", "scheduler", "epoch_schedule", "seed", "threads", "device",
                      "aggregation")

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.api import train_workspace
        from sisa.data import load
        from sisa.settings import Settings

        dataset = load(args.data, id_col=args.id_col, label_col=args.label_col,
                       test_spec=args.test_data, test_fraction=args.test_fraction)
        chosen: dict[str, Any] = dict(dataset.defaults)
        chosen.update({k: getattr(args, k) for k in self.SETTINGS_FLAGS if getattr(args, k) is not None})
        settings = Settings(**chosen)
        executor = executor_from(args)

        def progress(record: dict[str, Any]) -> None:
            info(f"shard {record['shard']} slice {record['slice']}: {record['samples']} samples, "
                 f"{record['epochs']} epochs, {fmt_seconds(record['seconds'])}")

        summary = train_workspace(
            args.workdir, dataset, settings, executor=executor, force=args.force, progress=progress,
            source={"id_col": args.id_col, "label_col": args.label_col, "test_spec": args.test_data,
                    "test_fraction": args.test_fraction})
        lines = [f"trained {settings.shards} shards x {settings.slices} slices of {settings.model} on "
                 f"{dataset.spec}: {summary['n_train']} samples in {fmt_seconds(summary['seconds'])}"]
        if "accuracy" in summary:
            shard_acc = summary["shard_accuracy"]
            lines.append(f"test accuracy {summary['accuracy']:.4f} on {summary['n_test']} rows "
                         f"({settings.aggregation}); shard models {min(shard_acc):.4f}-{max(shard_acc):.4f}")
        lines.append(f"workspace: {summary['workdir']}")
        emit(args, summary, "\n".join(lines))
        return 0
