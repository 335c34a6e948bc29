"""``sisa delete``, ``sisa recover`` and ``sisa audit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sisa.cli._common import (
    add_common,
    add_executor_args,
    emit,
    executor_from,
    fmt_seconds,
    info,
    recover_first,
    retrain_progress,
)
from sisa.errors import SisaError


def split_ids(text: str) -> list[str]:
    """Ids as typed after --ids: comma-separated, blanks ignored."""
    return [part.strip() for part in text.split(",") if part.strip()]


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


class Delete:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("delete", help="forget training rows exactly",
                           description="Delete training rows by id: the affected shards roll back "
                                       "to the checkpoint before the earliest affected slice and "
                                       "retrain without the rows, which are purged from disk.")
        p.add_argument("--ids", metavar="ID,ID,...", action="append",
                       help="comma-separated ids; repeat the flag to add more")
        p.add_argument("--ids-file", metavar="PATH", action="append",
                       help="one id per line, or a .csv/.parquet file with the id column; repeat "
                            "the flag to add more (ids of every --ids and --ids-file are deleted)")
        p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
        p.add_argument("--ignore-missing", action="store_true",
                       help="skip ids that are not in the training data instead of failing")
        p.add_argument("--no-serve", action="store_true",
                       help="run in this process even when a `sisa serve` answers on the workspace")
        add_executor_args(p)
        add_common(p)
        p.set_defaults(func=self._cmd)

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.ids import parse_ids
        from sisa.ops.delete import delete, plan_deletion
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        manifest = workspace.read_manifest()
        ids = parse_ids(read_ids(args, manifest["data"].get("id_col", "id")), manifest["data"]["id_kind"])
        asked = len(dict.fromkeys(ids))
        if args.dry_run:
            plan = plan_deletion(workspace, ids, ignore_missing=args.ignore_missing)
            result = dict(plan.to_dict(), dry_run=True)
            lines = [f"would delete {len(plan.ids)} of {asked} id(s) asked for; nothing was changed"]
            lines += [f"  shard {r['shard']}: retrain {r['slices']} slice(s) from slice {r['from_slice']} "
                      f"({r['samples']} samples, {r['sample_passes']} sample-passes)"
                      for r in result["retrained"]]
            lines.append(f"estimated retraining time: {fmt_seconds(plan.estimate_seconds)}")
        else:
            warn_if_numerics_differ(workspace)
            executor = executor_from(args)
            result = delete(workspace, ids, ignore_missing=args.ignore_missing, executor=executor,
                            progress=retrain_progress)
            lines = [f"deleted {len(result['deleted'])} of {asked} id(s) asked for in "
                     f"{fmt_seconds(result['seconds'])}"]
            lines += [f"  shard {r['shard']}: retrained {r['slices']} slice(s) from slice {r['from_slice']} "
                      f"({r['samples']} samples, {r['sample_passes']} sample-passes)"
                      for r in result["retrained"]]
        result["requested"] = asked
        if result["deleted_from_test"]:
            lines.append(f"removed from the test rows: {preview(result['deleted_from_test'])}")
        if result["already_deleted"]:
            lines.append(f"already deleted (nothing to do): {preview(result['already_deleted'])}")
        if result["missing"]:
            lines.append(f"not in the training data (ignored): {preview(result['missing'])}")
        emit(args, result, "\n".join(lines))
        return 0


def preview(values: list, limit: int = 10) -> str:
    """At most ``limit`` ids, then how many more: a million-id request prints one line."""
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f" ... and {len(values) - limit} more ({len(values)} in all)" if len(values) > limit else "")


def warn_if_numerics_differ(workspace) -> None:
    """Retraining under other numerics still forgets the rows, but the result is no longer
    bit-identical to training without them on the original machine: say so."""
    from sisa.ops.ensemble import environment_differences
    from sisa.settings import Settings

    recorded = workspace.read_checkpoints_manifest().get("environment") or {}
    settings = Settings.from_dict(workspace.read_manifest()["settings"])
    for difference in environment_differences(recorded, settings):
        info(f"warning: numerics differ from training ({difference}); the retrained shards will "
             f"forget the rows but will not be bit-identical to a retrain under the recorded numerics")


class Recover:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("recover", help="finish deletions interrupted by a crash",
                           description="Finish every deletion request that was recorded but not "
                                       "committed (every command does this first).")
        add_executor_args(p)
        add_common(p)
        p.set_defaults(func=self._cmd)

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.ops.commit import complete_pending
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        shards = complete_pending(workspace, executor=executor_from(args), progress=retrain_progress)
        workspace.read_manifest()
        emit(args, {"retrained_shards": shards},
             f"retrained shard(s) {', '.join(map(str, shards))}" if shards else "nothing to recover")
        return 0


class Audit:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("audit", help="prove deleted rows are gone",
                           description="Check that no live checkpoint or shard file holds or was "
                                       "trained on a deleted id, and that every file matches its "
                                       "sha256. Exits 1 when a problem is found.")
        p.add_argument("--ids", metavar="ID,ID,...", action="append",
                       help="check these ids (default: every deleted id); repeat to add more")
        p.add_argument("--replay", action="store_true",
                       help="also retrain the affected shards from scratch and compare bit for bit")
        add_common(p)
        p.set_defaults(func=self._cmd)

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.ids import parse_ids
        from sisa.ops.audit import audit
        from sisa.workspace.files import Workspace

        workspace = Workspace(args.workdir)
        manifest = workspace.read_manifest()
        recover_first(args.workdir)
        ids = None
        if args.ids is not None:
            ids = parse_ids([i for text in args.ids for i in split_ids(text)], manifest["data"]["id_kind"])
        result = audit(workspace, ids, replay=args.replay)
        if result["ok"]:
            text = (f"audit passed: {result['checked_ids']} deleted id(s) absent from every shard file and "
                    f"live checkpoint; {result['checkpoints']} checkpoints match their sha256")
            if args.replay:
                text += f"; replayed shard(s) {result['replayed_shards']} bit for bit"
        else:
            text = "audit FAILED:\n" + "\n".join(f"  {p}" for p in result["problems"])
        emit(args, result, text)
        return 0 if result["ok"] else 1


class Repair:
    def __init__(self, sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("repair", help="rebuild damaged files, then verify",
                           description="Retrain shards from their last good checkpoint where a "
                                       "checkpoint is damaged or missing, rebuild a lost checkpoints "
                                       "manifest from the whole checkpoint files, rebuild damaged shard "
                                       "or test files from --data (less the deleted ids), remove "
                                       "unmanaged files, then audit. Exits 1 if problems remain.")
        p.add_argument("--data", metavar="SPEC", help="the source the workspace was trained on, to "
                                                      "rebuild damaged shard or test files")
        add_executor_args(p)
        add_common(p)
        p.set_defaults(func=self._cmd)

    def _cmd(self, args: argparse.Namespace) -> int:
        from sisa.ops.repair import repair
        from sisa.workspace.files import Workspace

        result = repair(Workspace(args.workdir), data_spec=args.data, executor=executor_from(args),
                        progress=retrain_progress)
        lines = [f"  {a}" for a in result["actions"]] or ["  nothing needed repair"]
        lines.append("verified: audit passed" if result["ok"] else
                     "audit still FAILS:\n" + "\n".join(f"  {p}" for p in result["problems"]))
        emit(args, result, "\n".join(lines))
        return 0 if result["ok"] else 1
