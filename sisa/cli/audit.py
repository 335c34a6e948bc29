"""``sisa audit``: prove deleted rows are gone from every live file."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, locked, recover_first, split_ids
from sisa.cli.base import Environment, Subcommand


class Audit(Subcommand):
    name = "audit"
    help = "prove deleted rows are gone"
    description = ("Check that no live checkpoint or shard file holds or was trained on a deleted id, "
                   "and that every file matches its sha256. Exits 1 when a problem is found.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--ids", metavar="ID,ID,...", action="append",
                       help="check these ids (default: every deleted id); repeat to add more")
        p.add_argument("--replay", action="store_true",
                       help="also retrain the affected shards from scratch and compare bit for bit")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ids import parse_ids
        from sisa.ops.audit import audit
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        id_kind = workspace.manifest().data.id_kind
        recover_first(args, env)
        ids = None
        if args.ids is not None:
            ids = parse_ids([i for text in args.ids for i in split_ids(text)], id_kind)
        with locked(args, env, exclusive=False):
            result = audit(workspace, ids, replay=args.replay)
        if result["ok"]:
            text = (f"audit passed: {result['checked_ids']} deleted id(s) absent from every shard file and "
                    f"live checkpoint; {result['checkpoints']} checkpoints match their sha256")
            if args.replay:
                text += f"; replayed shard(s) {result['replayed_shards']} bit for bit"
        else:
            text = "audit FAILED:\n" + "\n".join(f"  {p}" for p in result["problems"])
        emit(args, result, text)
        return 0 if result["ok"] else 1
