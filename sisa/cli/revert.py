"""``sisa revert``: take out every row added after a version."""

from __future__ import annotations

import argparse

from sisa.cli._common import (
    accept_model_change_if_asked,
    add_common,
    add_model_change_arg,
    emit,
    fmt_seconds,
    locked,
)
from sisa.cli.base import Environment, Subcommand


class Revert(Subcommand):
    name = "revert"
    help = "take out rows added after a version"
    description = ("Take out every batch of rows added (sisa add) after VERSION: their rows are purged from "
                   "the shard files and their slices' checkpoints dropped. The checkpoints before them stay, "
                   "so nothing is retrained: the workspace is what it would be had it never taken in those "
                   "batches (deletions since then included). 'sisa history' lists the versions.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--to", type=int, required=True, metavar="VERSION",
                       help="the version to go back to (a training or an add still in the workspace)")
        add_model_change_arg(p)
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.lifecycle import revert
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        accept_model_change_if_asked(args, env, workspace)
        with locked(args, env, exclusive=True):
            result = revert(workspace, args.to)
        if result["reverted"]:
            text = (f"reverted to version {args.to} as version {result['version']}: took out version(s) "
                    f"{', '.join(map(str, result['reverted']))}, {result['rows_removed']} rows, in "
                    f"{fmt_seconds(result['seconds'])}")
        else:
            text = f"nothing to revert: no rows were added after version {args.to}"
        emit(args, result, text)
        return 0
