"""``sisa serve``: a warm process that runs each ``sisa delete`` of its workspace."""

from __future__ import annotations

import argparse


class Serve:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("serve", help="keep a warm process that runs sisa delete",
                           description="Import torch once and serve the workspace's deletions: "
                                       "`sisa delete` finds the socket <workdir>/serve.sock and "
                                       "sends its command line here (same code, lock, ledger, "
                                       "output and exit status, without ~3.5 s of start-up per "
                                       "request). Runs until Ctrl-C or SIGTERM, which let the "
                                       "request being served finish. Its log names each request "
                                       "by number, command, count of ids, exit status and "
                                       "seconds, never the ids; clients forward only to a "
                                       "socket of their own user.")
        p.add_argument("--workdir", default=".", metavar="DIR",
                       help="workspace folder holding shards/ and checkpoints/ (default: .)")
        p.set_defaults(func=self._cmd, json=False, no_wait=False)

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.serve.server import serve

        served = serve(args.workdir)
        print(f"sisa serve: stopped after {served} request(s)")
        return 0
