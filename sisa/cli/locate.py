"""``sisa locate``: where each id is (shard, slice, version), or that it was deleted."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, locked, recover_first, split_ids
from sisa.cli.base import Environment, Subcommand


class Locate(Subcommand):
    name = "locate"
    help = "say where ids are, or that they were deleted"
    description = ("For each id: its shard, slice and the workspace version that brought it in; or that it "
                   "is a test row; or that it was deleted (by which request); or that it is unknown.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--ids", metavar="ID,ID,...", action="append", required=True,
                       help="comma-separated ids; repeat the flag to add more")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.errors import SisaError
        from sisa.ids import parse_ids
        from sisa.ops.history import locate
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        id_kind = workspace.manifest().data.id_kind
        recover_first(args, env)
        raw = [i for text in args.ids for i in split_ids(text)]
        if not raw:
            raise SisaError("no ids given")
        with locked(args, env, exclusive=False):
            found = locate(workspace, parse_ids(raw, id_kind))
        emit(args, {"ids": found}, "\n".join(_line(f) for f in found))
        return 0


def _line(found: dict) -> str:
    if found.get("unknown"):
        return f"{found['id']}: unknown (not in this workspace, never deleted)"
    if found["deleted"]:
        where = found.get("where") or f"shard {found['shard']} slice {found['slice']}"
        return f"{found['id']}: deleted by request {found['request']} (was in {where})"
    if found.get("where") == "test":
        return f"{found['id']}: test row"
    return f"{found['id']}: shard {found['shard']} slice {found['slice']}, version {found['version']}"
