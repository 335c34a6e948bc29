"""The ``sisa`` command line: one small module per subcommand, each a thin layer over the API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from sisa.cli import compare, delete, evaluate, predict, serve, status, train
from sisa.errors import SisaError

COMMANDS = (train.Train, delete.Delete, status.Status, evaluate.Eval, predict.Predict,
            delete.Recover, delete.Audit, delete.Repair, compare.Compare, serve.Serve)


class _Parser(argparse.ArgumentParser):
    """argparse, keeping the last usage error's message so ``--json`` can report it."""

    last_error: Optional[str] = None

    def error(self, message: str):  # type: ignore[override]
        _Parser.last_error = f"{self.prog}: {message}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from sisa import __version__

    parser = _Parser(
        prog="sisa", description="Exact machine unlearning: sharded, sliced training that can forget.")
    parser.add_argument("--version", action="version", version=f"sisa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command(sub)
    return parser


def _json_error(message: str, code: int) -> None:
    """With --json, every failure is one JSON object on stdout too (stderr keeps the line)."""
    json.dump({"ok": False, "error": message, "exit_code": code}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in argv
    _Parser.last_error = None
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
        if wants_json and code != 0:
            _json_error(_Parser.last_error or "bad usage", code)
        return code
    args.argv = argv

    def fail(message: str, code: int) -> int:
        print(f"sisa {args.command}: {'' if code == 130 else 'error: '}{message}", file=sys.stderr)
        if getattr(args, "json", False):
            _json_error(message, code)
        return code

    if not getattr(args, "no_serve", True):  # a command that can be served, not told otherwise
        from sisa.serve.server import forward

        # a warm `sisa serve` on this workspace runs the command without torch's start-up
        try:
            status = forward(args.workdir, argv + ["--executor", args.executor])
        except SisaError as exc:  # a socket that is not this user's server: nothing was sent
            return fail(str(exc), 1)
        if status is not None:
            return status
    from sisa.workspace.lock import WAIT

    token = WAIT.set(not args.no_wait)

    try:
        return args.func(args)
    except SisaError as exc:
        return fail(str(exc), 1)
    except BrokenPipeError:  # output piped into a reader that stopped (sisa status | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # disk full, permissions: the operation was rolled back
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:
        if getattr(args, "json", False):  # a defect: the traceback goes to stderr, the object to stdout
            _json_error(f"internal error: {exc!r}", 1)
        raise
    finally:
        WAIT.reset(token)
