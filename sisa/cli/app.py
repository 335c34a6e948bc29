"""Parse a command line once, then forward it to a ``sisa serve`` or run its subcommand.

:func:`main` reads the environment (``SISA_*``) once, here; everything below gets the values
it needs as arguments (:class:`~sisa.cli.base.Environment`). :func:`run_request` runs a
command that a client forwarded to ``sisa serve``, with the client's folder and settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from sisa.cli import (
    add,
    audit,
    compare,
    delete,
    evaluate,
    export,
    history,
    locate,
    predict,
    receipt,
    recover,
    repair,
    revert,
    serve,
    status,
    train,
)
from sisa.cli.base import Environment, Subcommand
from sisa.errors import SisaError
from sisa.serve.client import Request


def commands() -> tuple[Subcommand, ...]:
    """Every subcommand, in the order ``sisa --help`` lists them."""
    return (train.Train(), add.Add(), delete.Delete(), revert.Revert(), status.Status(), history.History(),
            receipt.Receipt(), locate.Locate(), evaluate.Eval(), predict.Predict(), export.Export(),
            recover.Recover(),
            audit.Audit(), repair.Repair(), compare.Compare(), serve.Serve(run_request))


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
    for command in commands():
        _once(command.register(sub))
    return parser


class _StoreOnce(argparse._StoreAction):
    """An option that takes one value, refused when given twice: ``--workdir a --workdir b``
    or ``--shards 2 --shards 8`` would otherwise keep the last silently. Options that add up
    (``--ids``, ``--ids-file``) are ``append`` actions and stay repeatable."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_options_given", set())
        if option_string is not None and self.dest in given:
            parser.error(f"{'/'.join(self.option_strings)} given twice; give it once")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


def _once(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if type(action) is argparse._StoreAction and action.option_strings:
            action.__class__ = _StoreOnce


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(argv, Environment.from_mapping(os.environ))


def run(argv: list[str], env: Environment) -> int:
    """Run ``sisa argv`` with the settings ``env``: on this workspace's ``sisa serve`` when one
    answers and the command is served there, else in this process."""
    args = parse(argv)
    if isinstance(args, int):
        return args
    if args.subcommand.servable and not args.no_serve:
        # a warm `sisa serve` on this workspace runs the command without torch's start-up
        from sisa.serve.client import forward

        try:
            status = forward(args.workdir, argv, env=env.to_mapping())
        except SisaError as exc:  # a socket that is not this user's server: nothing was sent
            return fail(args, str(exc), 1)
        if status is not None:
            return status
    return execute(args, env)


def parse(argv: list[str]) -> Union[argparse.Namespace, int]:
    """The parsed ``argv``, or the exit status of a command line argparse refused (or of
    ``--help``); with ``--json``, a refusal is one JSON object on stdout too."""
    wants_json = "--json" in argv
    _Parser.last_error = None
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
        if wants_json and code != 0:
            _json_error(_Parser.last_error or "bad usage", code)
        return code
    args.argv = argv
    return args


def execute(args: argparse.Namespace, env: Environment) -> int:
    """Run the parsed command in this process; failures become a message and an exit status."""
    try:
        return args.subcommand.run(args, env)
    except SisaError as exc:
        return fail(args, str(exc), 1)
    except BrokenPipeError:  # output piped into a reader that stopped (sisa status | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # disk full, permissions: the operation was rolled back
        return fail(args, str(exc), 1)
    except KeyboardInterrupt:
        return fail(args, "interrupted", 130)
    except Exception as exc:
        if getattr(args, "json", False):  # a defect: the traceback goes to stderr, the object to stdout
            _json_error(f"internal error: {exc!r}", 1)
        raise


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"sisa {args.command}: {'' if code == 130 else 'error: '}{message}", file=sys.stderr)
    if getattr(args, "json", False):
        _json_error(message, code)
    return code


def _json_error(message: str, code: int) -> None:
    """With --json, every failure is one JSON object on stdout too (stderr keeps the line)."""
    json.dump({"ok": False, "error": message, "exit_code": code}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()


def run_request(request: Request, root: Path) -> tuple[int, str]:
    """Run a command a client forwarded to the ``sisa serve`` of ``root`` (this process's
    stdout and stderr are the client's then): parsed once, its relative paths taken from the
    client's folder (this process's own folder never changes), with the client's settings.
    Returns the exit status and a line for the server's log that names no ids."""
    args = parse(request.argv + ["--no-serve"])
    if isinstance(args, int):
        return args, f"{request.argv[0]}, command line refused"
    summary = args.subcommand.describe(args)
    _resolve_paths(args, request.cwd)
    if Path(args.workdir).resolve() != root:
        print(f"sisa serve: this server serves {root}, not {args.workdir}", file=sys.stderr)
        return 1, summary
    return execute(args, Environment.from_mapping(request.env)), summary


def _resolve_paths(args: argparse.Namespace, cwd: str) -> None:
    """Make the command's path arguments absolute, relative ones taken from ``cwd``."""
    for name in args.subcommand.path_args:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.join(cwd, value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.join(cwd, v) for v in value])
