"""``sisa receipt``: a deletion receipt to hand to a data-protection officer."""

from __future__ import annotations

import argparse
import json

from sisa.cli._common import add_common, emit, locked, recover_first
from sisa.cli.base import Environment, Subcommand


class Receipt(Subcommand):
    name = "receipt"
    help = "write up a deletion request as a receipt"
    description = ("Print the deletion receipt of REQUEST (see 'sisa history'): the request and its reference, "
                   "its ids (or their salted sha256 with --ids-as sha256; the salt stays in the workspace), "
                   "the checkpoints it replaced (old and new sha256 per shard and slice), the workspace after "
                   "it, the sisa and torch versions and numerics, and an audit of its ids run now. The receipt "
                   "is JSON, sealed by the sha256 of its contents; 'sisa audit --receipt FILE' verifies it later.")
    path_args = ("workdir", "output")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("request", type=int, metavar="REQUEST", help="the request's number")
        p.add_argument("--ids-as", choices=("plain", "sha256"), default="plain",
                       help="write the ids as they are (default) or as salted sha256")
        p.add_argument("--output", metavar="FILE", help="write the receipt to a new FILE (mode 0600) instead of stdout ('-')")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.history import receipt
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        workspace.manifest()
        recover_first(args, env)
        with locked(args, env, exclusive=True):
            body = receipt(workspace, args.request, ids_as=args.ids_as)
        text = json.dumps(body, indent=2, sort_keys=True)
        if args.output and args.output != "-":
            _write_new(args.output, text + "\n")
            emit(args, {"receipt": args.output, "audit_ok": body["audit"]["ok"]},
                 f"receipt of request {args.request} written to {args.output}")
        elif args.json:
            emit(args, {"receipt": body}, "")
        else:
            print(text)
        return 0 if body["audit"]["ok"] else 1


def _write_new(path: str, text: str) -> None:
    """Write a new file; an existing one is refused (a receipt is never overwritten)."""
    import os

    from sisa.errors import SisaError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise SisaError(f"--output {path} exists; receipts are not overwritten (name a new file)") from None
    except OSError as exc:
        raise SisaError(f"cannot write --output {path}: {exc}") from None
