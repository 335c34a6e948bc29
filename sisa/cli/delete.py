"""``sisa delete``: forget training rows by id (forwarded to a ``sisa serve`` when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sisa.cli._common import (
    accept_model_change_if_asked,
    add_common,
    add_executor_args,
    add_model_change_arg,
    add_output_args,
    emit,
    executor_from,
    fmt_seconds,
    info,
    locked,
    split_ids,
    training_output,
)
from sisa.cli.base import Environment, Subcommand
from sisa.errors import SisaError


def read_ids(args: argparse.Namespace, id_col: str) -> list[str]:
    """Ids as text from every --ids and every --ids-file (lines, or a CSV/Parquet id column).

    Repeated flags add up: a pipeline that builds one flag per request forgets every person
    it names, not only the last one.
    """
    raw: list[str] = []
    for text in args.ids or []:
        raw += split_ids(text)
    for name in args.ids_file or []:
        raw += _ids_from_file(Path(name), id_col)
    if not args.ids and not args.ids_file:
        raise SisaError("name the ids to delete with --ids 3,17,42 or --ids-file PATH")
    if not raw:
        raise SisaError("no ids given")
    return raw


def _ids_from_file(path: Path, id_col: str) -> list[str]:
    if not path.is_file():
        raise SisaError(f"--ids-file {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        try:
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={id_col: pa.string()})) if suffix == ".csv" else pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SisaError(f"cannot read --ids-file {path}: {exc}") from None
        if id_col not in table.column_names:
            raise SisaError(f"--ids-file {path} has no id column {id_col!r} "
                            f"(columns: {', '.join(table.column_names)})")
        column = table.column(id_col)
        if column.null_count:
            raise SisaError(f"--ids-file {path}: id column {id_col!r} has {column.null_count} missing values")
        return [str(v) for v in column.to_pylist()]
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SisaError(f"--ids-file {path} is not UTF-8 text: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class Delete(Subcommand):
    name = "delete"
    help = "forget training rows exactly"
    description = ("Delete training rows by id: the affected shards roll back to the checkpoint before "
                   "the earliest affected slice and retrain without the rows, which are purged from disk.")
    servable = True
    path_args = ("workdir", "ids_file")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--ids", metavar="ID,ID,...", action="append",
                       help="comma-separated ids; repeat the flag to add more")
        p.add_argument("--ids-file", metavar="PATH", action="append",
                       help="one id per line, or a .csv/.parquet file with the id column; repeat "
                            "the flag to add more (ids of every --ids and --ids-file are deleted)")
        p.add_argument("--reference", metavar="TEXT",
                       help="your reference for the request (a ticket id), stored with it and shown by "
                            "'sisa history' and its receipt")
        p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
        p.add_argument("--ignore-missing", action="store_true",
                       help="skip ids that are not in the training data instead of failing")
        p.add_argument("--no-serve", action="store_true",
                       help="run in this process even when a `sisa serve` answers on the workspace")
        add_executor_args(p)
        add_model_change_arg(p)
        add_common(p)
        add_output_args(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ids import parse_ids
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        accept_model_change_if_asked(args, env, workspace)
        data = workspace.manifest().data
        ids = parse_ids(read_ids(args, data.source_value("id_col", "id")), data.id_kind)
        asked = len(dict.fromkeys(ids))
        if args.dry_run:
            result, lines = _dry_run(args, env, workspace, ids, asked)
        else:
            result, lines = _delete(args, env, workspace, ids, asked)
        result["requested"] = asked
        if result["deleted_from_test"]:
            lines.append(f"removed from the test rows: {preview(result['deleted_from_test'])}")
        if result["already_deleted"]:
            lines.append(f"already deleted (nothing to do): {preview(result['already_deleted'])}")
        if result["missing"]:
            lines.append(f"not in the training data (ignored): {preview(result['missing'])}")
        emit(args, result, "\n".join(lines))
        return 0

    def describe(self, args: argparse.Namespace) -> str:
        """The request for a server's log: the command and how many ids it names, not which."""
        parts = []
        if args.ids:
            parts.append(f"{sum(len(split_ids(text)) for text in args.ids)} id(s)")
        if args.ids_file:
            parts.append(f"{len(args.ids_file)} --ids-file")
        summary = f"{args.command}, {' and '.join(parts) or 'no ids'}"
        return summary + (" (dry run)" if args.dry_run else "")


def _dry_run(args: argparse.Namespace, env: Environment, workspace, ids: list, asked: int) -> tuple[dict, list[str]]:
    from sisa.ops.delete import plan_deletion

    with locked(args, env, exclusive=False):
        plan = plan_deletion(workspace, ids, ignore_missing=args.ignore_missing)
    result = dict(plan.to_dict(), dry_run=True)
    lines = [f"would delete {len(plan.ids)} of {asked} id(s) asked for; nothing was changed"]
    lines += [f"  shard {r['shard']}: retrain {r['slices']} slice(s) from slice {r['from_slice']} "
              f"({r['samples']} samples, {r['sample_passes']} sample-passes)"
              for r in result["retrained"]]
    lines.append(f"estimated retraining time: {fmt_seconds(plan.estimate_seconds)}")
    return result, lines


def _delete(args: argparse.Namespace, env: Environment, workspace, ids: list, asked: int) -> tuple[dict, list[str]]:
    from sisa.ops.delete import delete

    warn_if_numerics_differ(workspace)
    executor = executor_from(args, env)
    with training_output(args) as progress, locked(args, env, exclusive=True):
        result = delete(workspace, ids, ignore_missing=args.ignore_missing, executor=executor,
                        progress=progress, reference=args.reference)
    request = f" (request {result['request']})" if "request" in result else ""
    lines = [f"deleted {len(result['deleted'])} of {asked} id(s) asked for in "
             f"{fmt_seconds(result['seconds'])}{request}"]
    lines += [f"  shard {r['shard']}: retrained {r['slices']} slice(s) from slice {r['from_slice']} "
              f"({r['samples']} samples, {r['sample_passes']} sample-passes)"
              for r in result["retrained"]]
    return result, lines


def preview(values: list, limit: int = 10) -> str:
    """At most ``limit`` ids, then how many more: a million-id request prints one line."""
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f" ... and {len(values) - limit} more ({len(values)} in all)" if len(values) > limit else "")


def warn_if_numerics_differ(workspace) -> None:
    """Retraining under other numerics still forgets the rows, but the result is no longer
    bit-identical to training without them on the original machine: say so."""
    from sisa.training.numerics import environment_differences

    recorded = workspace.checkpoints().environment
    for difference in environment_differences(recorded, workspace.manifest().settings):
        info(f"warning: numerics differ from training ({difference}); the retrained shards will "
             f"forget the rows but will not be bit-identical to a retrain under the recorded numerics")
