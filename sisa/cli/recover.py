"""``sisa recover``: finish deletions a crash interrupted (every command does this first)."""

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
    finish_pending,
    training_output,
)
from sisa.cli.base import Environment, Subcommand


class Recover(Subcommand):
    name = "recover"
    help = "finish deletions interrupted by a crash"
    description = ("Finish every deletion request that was recorded but not committed (every command "
                   "does this first).")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_executor_args(p)
        add_model_change_arg(p)
        add_common(p)
        add_output_args(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        accept_model_change_if_asked(args, env, workspace)
        with training_output(args) as progress:
            shards = finish_pending(args, env, workspace, executor=executor_from(args, env), progress=progress)
        workspace.manifest()
        emit(args, {"retrained_shards": shards},
             f"retrained shard(s) {', '.join(map(str, shards))}" if shards else "nothing to recover")
        return 0
