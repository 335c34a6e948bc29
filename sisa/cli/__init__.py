"""The ``sisa`` command line: one small module per subcommand, each a thin layer over the API.

Each subcommand is a :class:`sisa.cli.base.Subcommand` in a module of its own (``train``,
``delete``, ``status``, ``evaluate``, ``predict``, ``recover``, ``audit``, ``repair``,
``compare``, ``serve``); :mod:`sisa.cli.app` parses the command line once and runs it, or
forwards it to a ``sisa serve`` (:mod:`sisa.serve`, which gets the function that runs a
forwarded command from here and never imports this package).
"""

from __future__ import annotations

from sisa.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
