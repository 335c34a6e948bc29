"""``sisa serve``: a warm process that runs each ``sisa delete`` of its workspace."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sisa.cli.base import Environment, Subcommand

if TYPE_CHECKING:
    from sisa.serve.server import Runner


class Serve(Subcommand):
    name = "serve"
    help = "keep a warm process that runs sisa delete"
    description = ("Import torch once and serve the workspace's deletions: `sisa delete` finds the "
                   "socket <workdir>/serve.sock and sends its command line here (same code, lock, "
                   "ledger, output and exit status, without ~3.5 s of start-up per request). Runs "
                   "until Ctrl-C or SIGTERM, which let the request being served finish. Its log names "
                   "each request by number, command, count of ids, exit status and seconds, never the "
                   "ids; clients forward only to a socket of their own user.")

    def __init__(self, runner: "Runner") -> None:
        self.runner = runner
        """Runs each forwarded request (the command line's own code, passed in by :mod:`sisa.cli.app`)."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--workdir", default=".", metavar="DIR",
                       help="workspace folder holding shards/ and checkpoints/ (default: .)")
        p.set_defaults(json=False, no_wait=False)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.serve.server import serve

        served = serve(args.workdir, run=self.runner)
        print(f"sisa serve: stopped after {served} request(s)")
        return 0
