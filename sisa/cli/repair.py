"""``sisa repair``: rebuild damaged files, then verify with an audit."""

from __future__ import annotations

import argparse

from sisa.cli._common import (
    add_common,
    add_executor_args,
    add_output_args,
    emit,
    executor_from,
    locked,
    training_output,
)
from sisa.cli.base import Environment, Subcommand


class Repair(Subcommand):
    name = "repair"
    help = "rebuild damaged files, then verify"
    description = ("Retrain shards from their last good checkpoint where a checkpoint is damaged or "
                   "missing, rebuild a lost checkpoints manifest from the whole checkpoint files, rebuild "
                   "damaged shard or test files from --data (less the deleted ids), remove unmanaged "
                   "files, then audit. Exits 1 if problems remain.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", metavar="SPEC", help="the source the workspace was trained on, to "
                                                      "rebuild damaged shard or test files")
        add_executor_args(p)
        add_common(p)
        add_output_args(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.repair import repair
        from sisa.workspace.files import Workspace

        executor = executor_from(args, env)
        with training_output(args) as progress, locked(args, env, exclusive=True):
            result = repair(Workspace(args.workdir), data_spec=args.data, executor=executor, progress=progress)
        lines = [f"  {a}" for a in result["actions"]] or ["  nothing needed repair"]
        lines.append("verified: audit passed" if result["ok"] else
                     "audit still FAILS:\n" + "\n".join(f"  {p}" for p in result["problems"]))
        emit(args, result, "\n".join(lines))
        return 0 if result["ok"] else 1
