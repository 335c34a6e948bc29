"""``sisa add``: take in new rows as new slices, training only those slices."""

from __future__ import annotations

import argparse

from sisa.cli._common import (
    accept_model_change_if_asked,
    add_common,
    add_executor_args,
    add_model_change_arg,
    add_output_args,
    emit,
    executor_from,
    fmt_seconds,
    info,
    locked,
    training_output,
)
from sisa.cli.base import Environment, Subcommand


class Add(Subcommand):
    name = "add"
    help = "take in new training rows incrementally"
    description = ("Add rows to a trained workspace: each goes to its shard by the same keyed hash as the "
                   "training's rows, and the rows become new slices at the end of every shard; each "
                   "shard resumes from its last checkpoint and trains only the new slices. The ids must be "
                   "new: ids present already, or deleted earlier, are refused. Makes a new workspace "
                   "version ('sisa revert' takes it out again).")
    path_args = ("workdir",)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, metavar="SPEC",
                       help="the new rows: csv:PATH, parquet:PATH (same feature columns as the training "
                            "data) or imagefolder:DIR; every row is a training row")
        p.add_argument("--id-col", help="id column of a table (default: the training's)")
        p.add_argument("--label-col", help="label column of a table (default: the training's)")
        p.add_argument("--slices", type=int, default=1, metavar="K",
                       help="new slices the rows are split into (by a hash of the id; default 1)")
        p.add_argument("--epochs", type=int, metavar="E",
                       help="epochs of each new slice (default: those of the training's last slice)")
        add_executor_args(p)
        add_model_change_arg(p)
        add_common(p)
        add_output_args(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.data.batches import load_batch
        from sisa.ops.lifecycle import add_rows
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        accept_model_change_if_asked(args, env, workspace)
        data = workspace.manifest().data
        batch = load_batch(args.data, shape=data.shape, feature_names=data.feature_names, id_kind=data.id_kind,
                           id_col=args.id_col or data.source_value("id_col", "id"),
                           label_col=args.label_col or data.source_value("label_col", "label"))
        executor = executor_from(args, env)
        with locked(args, env, exclusive=True):
            try:
                with training_output(args) as progress:  # closed before the explanation prints
                    result = add_rows(workspace, batch, slices=args.slices, epochs=args.epochs, spec=args.data,
                                      executor=executor, progress=progress)
            except KeyboardInterrupt:
                _explain_interrupt(workspace)
                raise
        emit(args, result, f"added {result['rows']} rows as version {result['version']}: {result['slices']} new "
                           f"slice(s) of {result['epochs']} epoch(s) per shard, trained in "
                           f"{fmt_seconds(result['seconds'])}; {result['n_train']} training rows now")
        return 0


def _explain_interrupt(workspace) -> None:
    """An add interrupted after its commit point has taken the rows in: say so, and how on."""
    from sisa.workspace.ledger import read_open_versions

    try:
        version = workspace.manifest().version
        unfinished = [v["version"] for v in read_open_versions(workspace.ledger_path)]
    except Exception:  # the interrupt is what matters; the next command sorts the rest out
        return
    if version in unfinished:
        info(f"the rows were already taken in as version {version}; the next sisa command (or 'sisa recover') "
             f"trains their slices, and 'sisa revert --to {version - 1}' takes them out again")
