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
        p.add_argument("--receipt", metavar="FILE",
                       help="verify a deletion receipt (sisa receipt) against the workspace now: unchanged, "
                            "none of its ids anywhere, every checkpoint it names live or replaced since")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ids import parse_ids
        from sisa.ops.audit import audit
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        id_kind = workspace.manifest().data.id_kind
        recover_first(args, env)
        if args.receipt is not None:
            return _verify(args, env, workspace)
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


def _verify(args: argparse.Namespace, env: Environment, workspace) -> int:
    from pathlib import Path

    from sisa.errors import SisaError
    from sisa.ops.history import load_receipt, verify_receipt

    if args.ids is not None or args.replay:
        raise SisaError("--receipt checks the receipt's own ids; it takes no --ids or --replay")
    try:
        text = Path(args.receipt).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SisaError(f"cannot read --receipt {args.receipt}: {exc}") from None
    with locked(args, env, exclusive=False):
        result = verify_receipt(workspace, load_receipt(text, args.receipt))
    if result["ok"]:
        text = (f"receipt verified: request {result['request']}'s {result['checked_ids']} id(s) are absent from "
                f"the workspace and every checkpoint it names is live or was replaced since")
    else:
        text = "receipt verification FAILED:\n" + "\n".join(f"  {p}" for p in result["problems"])
    emit(args, result, text)
    return 0 if result["ok"] else 1
