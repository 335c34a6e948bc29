"""``sisa history``: every workspace version and every deletion request, oldest first."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, fmt_seconds, locked, recover_first
from sisa.cli.base import Environment, Subcommand


class History(Subcommand):
    name = "history"
    help = "list versions and deletion requests"
    description = ("Every workspace version (train, add, revert) and every deletion request, oldest first, "
                   "times in UTC. Requests show their reference, the ids asked for, deleted and already "
                   "deleted (counts, never the ids), the shards retrained and from which slice, the samples "
                   "retrained, the seconds it took and the state. 'sisa receipt REQUEST' writes one up.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.history import history
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        workspace.manifest()
        recover_first(args, env)
        with locked(args, env, exclusive=False):
            result = history(workspace)
        emit(args, result, "\n".join(_line(e) for e in result["events"]))
        return 0


def _line(event: dict) -> str:
    if event["event"] == "version":
        what = {"train": f"trained on {event.get('rows')} rows",
                "add": f"added {event.get('rows')} rows as {event.get('slices')} slice(s)",
                "revert": f"reverted to version {event.get('to')} (took out {event.get('removed')})"}[event["kind"]]
        return f"{_when(event)}  version {event['version']:<4} {what} [{event['state']}]"
    shards = ", ".join(f"{s['shard']} from slice {s['from_slice']}" for s in event["shards"]) or "none"
    reference = f" ref {event['reference']}" if event.get("reference") else ""
    seconds = f", {fmt_seconds(event['seconds'])}" if event.get("seconds") is not None else ""
    return (f"{_when(event)}  request {event['request']:<4}{reference}: asked {event['asked']}, deleted "
            f"{event['deleted']}, already deleted {event['already_deleted']}; shards {shards}; "
            f"{event.get('samples_retrained') or 0} samples retrained{seconds} [{event['state']}]")


def _when(event: dict) -> str:
    """The event's time in UTC to the second (the JSON keeps the ledger's microseconds)."""
    return event["created"][:19].replace("T", " ") + " UTC"
