"""What every subcommand is, and the settings the command line takes from its environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar, Mapping, Optional


@dataclass(frozen=True)
class Environment:
    """The ``SISA_*`` settings a command runs with, read once (by :func:`sisa.cli.main` from
    ``os.environ``, or from the settings a client forwarded to ``sisa serve``) and passed on
    explicitly; nothing below the command line looks them up again."""

    executor: Optional[str] = None
    """``SISA_EXECUTOR``: the default of ``--executor`` (``auto`` when unset)."""
    lock_timeout: Optional[str] = None
    """``SISA_LOCK_TIMEOUT``: seconds to wait for another process's lock, as text (checked
    when a command first takes the lock, so commands that take none never fail on it)."""

    NAMES: ClassVar[dict[str, str]] = {"SISA_EXECUTOR": "executor", "SISA_LOCK_TIMEOUT": "lock_timeout"}

    @classmethod
    def from_mapping(cls, environ: Mapping[str, str]) -> "Environment":
        return cls(**{field: environ[name] for name, field in cls.NAMES.items() if name in environ})

    def to_mapping(self) -> dict[str, str]:
        """The settings that are set, by their variable names (what a client forwards)."""
        values = {name: getattr(self, field) for name, field in self.NAMES.items()}
        return {name: value for name, value in values.items() if value is not None}

    def default_executor(self) -> str:
        return self.executor or "auto"

    def lock_seconds(self) -> float:
        from sisa.workspace.lock import parse_timeout

        return parse_timeout(self.lock_timeout)


class Subcommand:
    """One ``sisa COMMAND``: registers its parser, and runs with the parsed arguments.

    ``servable`` commands are forwarded to a running ``sisa serve`` of their workspace unless
    ``--no-serve``; a server resolves their ``path_args`` (relative paths) against the
    client's folder. :meth:`describe` is the server's log line for a request: no ids.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str]
    servable: ClassVar[bool] = False
    path_args: ClassVar[tuple[str, ...]] = ("workdir",)

    def register(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        parser = sub.add_parser(self.name, help=self.help, description=self.description)
        self.add_arguments(parser)
        parser.set_defaults(subcommand=self)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        """Run the command; returns its exit status."""
        raise NotImplementedError

    def describe(self, args: argparse.Namespace) -> str:
        return args.command
