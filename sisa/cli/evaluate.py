"""``sisa eval``: test accuracy of the ensemble and of each shard model."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, recover_first


class Eval:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("eval", help="test accuracy of the ensemble and of each shard",
                           description="Evaluate the ensemble and each shard model on the "
                                       "workspace's test rows.")
        add_common(p)
        p.set_defaults(func=self._cmd)

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.ops.ensemble import Ensemble
        from sisa.workspace.files import Workspace

        recover_first(args.workdir)
        from sisa.workspace.lock import workspace_lock

        with workspace_lock(args.workdir, exclusive=False):
            result = Ensemble(Workspace(args.workdir)).evaluate()
        lines = [f"ensemble accuracy {result['accuracy']:.4f} on {result['n_test']} test rows "
                 f"({result['aggregation']})"]
        lines += [f"shard {s}: {acc:.4f}" for s, acc in zip(result["shards_used"], result["shard_accuracy"])]
        emit(args, result, "\n".join(lines))
        return 0
