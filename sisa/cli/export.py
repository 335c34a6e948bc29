"""``sisa export``: ship the ensemble as an inference bundle, without the training rows."""

from __future__ import annotations

import argparse

from sisa.cli._common import add_common, emit, info, locked, recover_first
from sisa.cli.base import Environment, Subcommand


class Export(Subcommand):
    name = "export"
    help = "write the ensemble as a bundle for inference, without the training rows"
    description = ("Write the shard models the workspace predicts with (their weights only) and bundle.json "
                   "(settings, how to read rows, sha256 of every file, the workspace version and deletion "
                   "requests it reflects) into a new folder; 'sisa predict --bundle DIR' and sisa.load_bundle "
                   "predict from it. --check DIR says whether a bundle still matches the workspace: exits 1 "
                   "when a deletion (or an add or revert) has changed a shard model since the export.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument("--output", metavar="DIR",
                          help="the folder to write; it must not exist yet, unless it is a bundle and --force")
        what.add_argument("--check", metavar="DIR",
                          help="compare the bundle in DIR with the workspace instead: exit 0 when it is "
                               "current, 1 when a shard model changed since it was exported")
        p.add_argument("--force", action="store_true",
                       help="replace the bundle already in --output (only a folder holding a bundle and "
                            "nothing else is replaced)")
        p.add_argument("--torchscript", action="store_true",
                       help="also write each shard model as TorchScript (torch.jit.trace) that takes rows as "
                            "stored and gives class probabilities, for serving without sisa")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.errors import SisaError

        if args.check is not None:
            if args.force or args.torchscript:
                raise SisaError("--check only reads the bundle; it takes no --force or --torchscript")
            return _check(args, env)
        return _export(args, env)


def _export(args: argparse.Namespace, env: Environment) -> int:
    from sisa.ops.bundle import export_bundle
    from sisa.workspace.files import Workspace

    recover_first(args, env)
    with locked(args, env, exclusive=False):
        result = export_bundle(Workspace(args.workdir), args.output, force=args.force,
                               torchscript=args.torchscript)
    info(f"wrote {len(result['files'])} files, {result['bytes'] / 1024:.0f} KiB, to {result['output']}")
    emit(args, result, f"exported shard model(s) {', '.join(map(str, result['shards']))} to {result['output']} "
                       f"(workspace version {result['version']}, {result['requests']} deletion request(s))")
    return 0


def _check(args: argparse.Namespace, env: Environment) -> int:
    """Reads the workspace as it is (no pending deletion is finished first): a bundle exported
    before a deletion that is not yet retrained is stale, and says so."""
    from sisa.ops.bundle import check_bundle
    from sisa.workspace.files import Workspace

    with locked(args, env, exclusive=False):
        report = check_bundle(Workspace(args.workdir), args.check)
    newer = (f"; {report['newer_requests']} deletion request(s) since the export, none of which touched an "
             f"exported model" if report["newer_requests"] else "")
    if report["current"]:
        text = f"bundle {args.check} is current (workspace version {report['workspace_version']}){newer}"
    else:
        text = f"bundle {args.check} is STALE: {_changes(report)}; export it again with 'sisa export --output " \
               f"{args.check} --force'"
    if report["current"]:
        emit(args, report, text)
        return 0
    # a stale bundle is a failure: --json reports it in the shape every failure has
    emit(args, dict(report, ok=False, error=text, exit_code=1), text)
    return 1


def _changes(report: dict) -> str:
    parts = [f"{what} shard(s) {', '.join(map(str, report[key]))}"
             for what, key in (("changed", "changed"), ("new", "added"), ("no model now for", "removed"))
             if report[key]]
    if report["settings_changed"]:
        parts.append("the settings changed")
    parts.append(f"workspace version {report['workspace_version']} (bundle {report['bundle_version']}), "
                 f"{report['newer_requests']} deletion request(s) since the export")
    if report["pending_requests"]:
        parts.append(f"{report['pending_requests']} not yet committed ('sisa recover' finishes them)")
    return "; ".join(parts)
