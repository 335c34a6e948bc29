"""``sisa eval``: test accuracy of the ensemble and of each shard model."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, locked, recover_first
from sisa.cli.base import Environment, Subcommand


class Eval(Subcommand):
    name = "eval"
    help = "test accuracy of the ensemble and of each shard"
    description = "Evaluate the ensemble and each shard model on the workspace's test rows."

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.ensemble import Ensemble
        from sisa.workspace.files import Workspace

        recover_first(args, env)
        with locked(args, env, exclusive=False):
            result = Ensemble(Workspace(args.workdir)).evaluate()
        lines = [f"ensemble accuracy {result['accuracy']:.4f} on {result['n_test']} test rows "
                 f"({result['aggregation']})"]
        lines += [f"shard {s}: {acc:.4f}" for s, acc in zip(result["shards_used"], result["shard_accuracy"])]
        emit(args, result, "\n".join(lines))
        return 0
