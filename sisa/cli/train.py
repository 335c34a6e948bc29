"""``sisa train``: partition a dataset and train every shard, slice by slice."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

from sisa.cli._common import (
    add_common,
    add_data_args,
    add_executor_args,
    add_output_args,
    add_settings_args,
    check_can_write,
    check_executor_args,
    dataset_and_settings,
    emit,
    executor_from,
    fmt_seconds,
    info,
    locked,
    training_output,
)
from sisa.cli.base import Environment, Subcommand
from sisa.cli.config import RUN_OPTIONS, Config, apply_config, dump_config, read_config
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
        add_output_args(p)
        p.add_argument("--log-dir", metavar="DIR",
                       help="write every epoch's training loss per shard into DIR (a new or empty folder): "
                            "losses.csv (shard, slice, epoch, loss, samples, seconds), and TensorBoard event "
                            "files, one run per shard, when the tensorboard package is installed "
                            "(pip install tensorboard). Under Ray a shard's epochs are written when it finishes")
        p.add_argument("--config", metavar="FILE",
                       help="read train's flags from a TOML (.toml) or YAML (.yaml, .yml) file, by their long "
                            "names (batch-size = 64 or batch_size: 64); flags given here override it")
        p.add_argument("--print-config", action="store_true",
                       help="print the configuration this command would train with (data flags and every "
                            "setting, defaults applied) as a config file, and exit without training")
        p.add_argument("--format", choices=("toml", "yaml"),
                       help="with --print-config: the format to print (default: that of --config, else toml)")
        # "." once the config file had its say: a --workdir given must be told from the default
        p.set_defaults(workdir=None)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.data.sources import absolute_spec
        from sisa.ops.train import train_workspace

        if args.format is not None and not args.print_config:
            raise SisaError("--format only applies with --print-config")
        config = read_config(args.config) if args.config is not None else None
        if config is not None:
            apply_config(args, config)
        run_options = {name: getattr(args, name) for name in RUN_OPTIONS}
        args.workdir = "." if args.workdir is None else args.workdir
        if args.discard_deletions and not args.force:
            raise SisaError("--discard-deletions only applies with --force (replacing a workspace)")
        logs = [_loss_log(args.log_dir, args.workdir)] if args.log_dir is not None and not args.print_config else []
        with training_output(args, *logs) as progress:
            dataset, settings = _from_config(config, lambda: dataset_and_settings(args, _recorded(args), stream=True))
            if logs and settings.vectorise > 1:
                raise SisaError("--log-dir records each epoch's loss, which vectorised training (--vectorise > 1) "
                                "does not report; train with --vectorise 1, or leave --log-dir out")
            if args.print_config:
                _from_config(config, lambda: check_executor_args(args))
                return self._print_config(args, config, dataset, settings, run_options)
            executor = executor_from(args, env)

            def announce(plan: dict) -> None:
                rows = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo)
                                 for lo, hi in zip(plan["slice_rows_min"], plan["slice_rows_max"]))
                if not args.quiet:
                    info(f"plan: {settings.shards} shards x {settings.slices} slices; rows of each slice {rows}; "
                         f"epochs of each slice {', '.join(map(str, plan['epochs']))}")
                if plan["small"]:
                    info(f"warning: {plan['small']}")

            # the command's wait for a workspace in use; a folder that does not exist yet is nobody's
            # (train_workspace creates it, after checking the input, under its own lock)
            with locked(args, env, exclusive=True) if Path(args.workdir).is_dir() else nullcontext():
                summary = train_workspace(
                    args.workdir, dataset, settings, executor=executor, force=args.force, progress=progress,
                    source={"spec": absolute_spec(args.data), "id_col": args.id_col, "label_col": args.label_col,
                            "test_spec": absolute_spec(args.test_data),
                            "test_fraction": args.test_fraction, "image_size": _image_size(dataset),
                            **(config.provenance() if config is not None else {})},
                    discard_deletions=args.discard_deletions, announce=announce)
        return self._report(args, dataset, settings, summary)

    @staticmethod
    def _print_config(args: argparse.Namespace, config: Config | None, dataset, settings,
                      run_options: dict) -> int:
        """Print what this command would train with as a config file that trains the same bits.

        The data flags and every setting are written out, defaults applied, so that the file
        still trains the same when a default changes; the run options (executor, workdir) only
        when given, so that SISA_EXECUTOR and the current folder keep their say otherwise.
        """
        from sisa import __version__

        values = {"data": args.data, "test_data": args.test_data, "test_fraction": args.test_fraction,
                  "id_col": args.id_col, "label_col": args.label_col, "image_size": _image_size(dataset),
                  **settings.to_dict(), **run_options}
        fmt = args.format or (config.format if config is not None else "toml")
        header = (f"sisa train's configuration (sisa {__version__}): sisa train --config FILE\n"
                  f"trains with it; flags given on the command line override it")
        emit(args, {"config": {k: v for k, v in values.items() if v is not None}, "format": fmt},
             dump_config(values, fmt, header=header).rstrip("\n"))
        return 0

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


def _from_config(config: Config | None, load):
    """``load()``, its refusal naming the config file the values may have come from."""
    try:
        return load()
    except SisaError as exc:
        if config is None:
            raise
        raise SisaError(f"{exc} (values from config file {config.path} unless given as flags)") from None


def _loss_log(folder: str, workdir: str):
    """``--log-dir``'s log, checked before anything is loaded or trained: outside the workspace
    (whose folders hold only sisa's files, 0700), and in a folder that can be made."""
    from sisa.cli.progress import LossLog

    target, root = Path(folder).resolve(), Path(workdir).resolve()
    if target == root or root in target.parents:
        raise SisaError(f"--log-dir {folder} is inside the workspace {workdir}, which holds only sisa's own files; "
                        f"write the loss curves somewhere else")
    check_can_write(folder, "--log-dir", "cannot be made")
    log = LossLog(folder)
    if not log.tensorboard:
        info(f"note: --log-dir {folder}: the tensorboard package is not installed, so only {folder}/losses.csv "
             f"is written; pip install tensorboard (or sisa's 'tensorboard' extra) for TensorBoard event files")
    return log


def _image_size(dataset):
    """The size an image folder's images were resized to, as [H, W] (what the workspace records
    and --print-config prints, so a retrain resizes alike), else None."""
    return list(dataset.shape[1:]) if dataset.spec.startswith("imagefolder:") else None


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
    spec = manifest.data.source_value("spec")
    if _relative(spec) or _relative(manifest.data.source_value("test_spec")):
        # workspaces from before specs were recorded absolute: the path is read from here
        raise SisaError(f"the workspace recorded its data as {spec!r}, a path relative to the folder it was "
                        f"trained from, which sisa cannot know; name the data again with --data")
    if not getattr(args, "quiet", False):
        info(f"retraining as recorded: --data {spec} with the workspace's settings (flags given change them)")
    return manifest


def _relative(spec) -> bool:
    """Whether a recorded data spec names a file by a relative path."""
    import os

    from sisa.data.sources import parse_spec

    if not spec:
        return False
    arg = parse_spec(spec)[1]
    return arg is not None and arg != "-" and not os.path.isabs(arg)
