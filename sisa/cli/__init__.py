"""The ``sisa`` command line: one small module per subcommand, each a thin layer over the API."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from sisa.cli import compare, delete, evaluate, predict, serve, status, train
from sisa.errors import SisaError

COMMANDS = (train.Train, delete.Delete, status.Status, evaluate.Eval, predict.Predict,
            delete.Recover, delete.Audit, delete.Repair, compare.Compare, serve.Serve)


def build_parser() -> argparse.ArgumentParser:
    from sisa import __version__

    parser = argparse.ArgumentParser(
        prog="sisa", description="Exact machine unlearning: sharded, sliced training that can forget.")
    parser.add_argument("--version", action="version", version=f"sisa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "no_serve", True):  # a command that can be served, not told otherwise
        from sisa.serve import forward

        # a warm `sisa serve` on this workspace runs the command without torch's start-up
        status = forward(args.workdir, argv + ["--executor", args.executor])
        if status is not None:
            return status
    from sisa.lock import WAIT

    token = WAIT.set(not args.no_wait)
    try:
        return args.func(args)
    except SisaError as exc:
        print(f"sisa {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a reader that stopped (sisa status | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # disk full, permissions: the operation was rolled back
        print(f"sisa {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sisa {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        WAIT.reset(token)
