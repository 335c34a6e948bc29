"""``sisa train``: partition a dataset and train every shard, slice by slice."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

from sisa.cli._common import (
    add_common,
    add_data_args,
    add_executor_args,
    add_settings_args,
    dataset_and_settings,
    emit,
    executor_from,
    fmt_seconds,
    info,
    locked,
)
from sisa.cli.base import Environment, Subcommand
from sisa.errors import SisaError


class Train(Subcommand):
    name = "train"
    help = "train a sharded, sliced ensemble"
    description = ("Partition the data into shards and slices and train every shard, keeping a "
                   "checkpoint after each slice.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_data_args(p)
        add_settings_args(p)
        p.add_argument("--force", action="store_true",
                       help="replace an existing workspace; the new one is built beside it and swapped "
                            "in when complete, and its deletion ledger carries over: ids deleted earlier "
                            "are not trained on again. Without --data it retrains the workspace as "
                            "recorded (its data source and settings, changed by the flags given)")
        p.add_argument("--discard-deletions", action="store_true",
                       help="with --force: throw the deletion ledger away and train on every row of the "
                            "data again, including people deleted earlier (they are no longer forgotten)")
        add_executor_args(p)
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.train import train_workspace

        dataset, settings = dataset_and_settings(args, _recorded(args), stream=True)
        executor = executor_from(args, env)

        def announce(plan: dict) -> None:
            rows = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo)
                             for lo, hi in zip(plan["slice_rows_min"], plan["slice_rows_max"]))
            info(f"plan: {settings.shards} shards x {settings.slices} slices; rows of each slice {rows}; "
                 f"epochs of each slice {', '.join(map(str, plan['epochs']))}")
            if plan["small"]:
                info(f"warning: {plan['small']}")

        def progress(record) -> None:
            info(f"shard {record.shard} slice {record.slice}: {record.samples} samples, "
                 f"{record.epochs} epochs, {fmt_seconds(record.seconds)}")

        if args.discard_deletions and not args.force:
            raise SisaError("--discard-deletions only applies with --force (replacing a workspace)")
        # the command's wait for a workspace in use; a folder that does not exist yet is nobody's
        # (train_workspace creates it, after checking the input, under its own lock)
        with locked(args, env, exclusive=True) if Path(args.workdir).is_dir() else nullcontext():
            summary = train_workspace(
                args.workdir, dataset, settings, executor=executor, force=args.force, progress=progress,
                source={"id_col": args.id_col, "label_col": args.label_col, "test_spec": args.test_data,
                        "test_fraction": args.test_fraction,
                        "image_size": list(dataset.shape[1:]) if dataset.spec.startswith("imagefolder:")
                        else None},
                discard_deletions=args.discard_deletions, announce=announce)
        return self._report(args, dataset, settings, summary)

    @staticmethod
    def _report(args: argparse.Namespace, dataset, settings, summary: dict) -> int:
        lines = []
        if summary["excluded_deleted"]:
            lines.append(f"{summary['excluded_deleted']} rows excluded: deleted earlier (the deletion "
                         f"ledger carries over)")
        if args.discard_deletions:
            lines.append("the deletion ledger was discarded: rows deleted earlier were trained on again")
        lines += [f"trained {settings.shards} shards x {settings.slices} slices of {settings.model} on "
                 f"{dataset.spec}: {summary['n_train']} samples in {fmt_seconds(summary['seconds'])}"]
        if "accuracy" in summary:
            shard_acc = summary["shard_accuracy"]
            lines.append(f"test accuracy {summary['accuracy']:.4f} on {summary['n_test']} rows "
                         f"({settings.aggregation}); shard models {min(shard_acc):.4f}-{max(shard_acc):.4f}")
        lines.append(f"workspace: {summary['workdir']}")
        emit(args, summary, "\n".join(lines))
        return 0


def _recorded(args: argparse.Namespace):
    """The manifest of the workspace ``train --force`` retrains as recorded (no ``--data``
    given), or None: a new training from the flags and the data's defaults."""
    from sisa.workspace.files import Workspace

    if not args.force or args.data is not None:
        return None
    workspace = Workspace(args.workdir)
    if not workspace.manifest_path.exists():
        return None
    try:
        manifest = workspace.manifest()
    except SisaError as exc:
        raise SisaError(f"cannot read the workspace's recorded data and settings ({exc}); name the data "
                        f"with --data") from None
    if not manifest.data.source_value("spec") or manifest.data.source_value("spec") in ("array", "arrays"):
        raise SisaError("the workspace was trained from arrays in Python, not from a data source sisa can "
                        "reload; name the data with --data")
    if manifest.batches:
        info(f"note: rows taken in by 'sisa add' (version(s) {', '.join(str(b.version) for b in manifest.batches)}) "
             f"are retrained only where {manifest.data.source_value('spec')} holds them")
    info(f"retraining as recorded: --data {manifest.data.source_value('spec')} with the workspace's settings "
         f"(flags given change them)")
    return manifest
