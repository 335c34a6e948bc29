"""``sisa predict``: labels and class probabilities for new rows."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from sisa.cli._common import add_common, info, locked, recover_first
from sisa.cli.base import Environment, Subcommand
from sisa.errors import SisaError


class Predict(Subcommand):
    name = "predict"
    help = "predict labels and probabilities for new rows"
    description = ("Predict with the ensemble. Tables need the training feature columns and the "
                   "workspace's id column (or --no-ids); built-in datasets give their test split. The "
                   "output's id and label columns are named as the training data's were.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--input", required=True, metavar="SPEC",
                       help="csv:PATH, parquet:PATH (or a .csv/.parquet path), a dataset name, or - "
                            "for CSV on standard input (parquet:- for Parquet)")
        p.add_argument("--output", metavar="PATH",
                       help="write .csv, .parquet or .json here instead of CSV on stdout")
        p.add_argument("--no-ids", action="store_true",
                       help="the input table has no id column: number its rows 0, 1, ... in the output")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.ops.ensemble import Ensemble
        from sisa.workspace.files import Workspace

        recover_first(args, env)
        with locked(args, env, exclusive=False):
            return self._predict(args, Ensemble(Workspace(args.workdir)))

    def _predict(self, args: argparse.Namespace, ensemble) -> int:
        from sisa.data.sources import Dataset, LoadOptions, load_rows
        from sisa.workspace.files import atomic_write

        data = ensemble.manifest.data
        like = Dataset(data.source_value("spec"), None, None, tuple(data.shape), ensemble.classes,
                       feature_names=ensemble.feature_names)
        options = LoadOptions(data.source_value("id_col", "id"), data.source_value("label_col", "label"),
                              data.source_value("test_fraction", 0.2), data.source_value("image_size"))
        rows = load_rows("csv:-" if args.input == "-" else args.input, like, options, need_labels=False,
                         what="input", need_ids=not args.no_ids,
                         ids_hint="name the rows with the workspace's id column, or pass --no-ids to number "
                                  "them 0, 1, ...")
        if args.no_ids:
            import numpy as np

            rows.ids = np.arange(len(rows.ids), dtype=np.int64)
        proba = ensemble.predict_proba(rows.X)
        classes = ensemble.classes
        labels = [classes[i] for i in proba.argmax(axis=1)]
        ids = rows.ids.tolist()
        result = {"ok": True, "ids": ids, "labels": labels, "classes": classes, "probabilities": proba.round(6).tolist()}
        if args.json and not args.output:
            json.dump(result, sys.stdout)
            sys.stdout.write("\n")
            return 0
        table = _table(ids, labels, classes, proba, options.id_col, options.label_col)
        if args.output:
            path = Path(args.output)
            _refuse_workspace_path(path, Path(args.workdir))
            suffix = path.suffix.lower()
            if suffix == ".json":
                data_bytes = json.dumps(result).encode()
            elif suffix in (".parquet", ".pq"):
                import pyarrow.parquet as pq

                buffer = io.BytesIO()
                pq.write_table(table, buffer)
                data_bytes = buffer.getvalue()
            elif suffix == ".csv":
                data_bytes = _csv_bytes(table)
            else:
                raise SisaError(f"--output {path}: use a .csv, .parquet or .json file name")
            atomic_write(path, data_bytes, private=False)  # the user's file: the umask decides
            info(f"wrote {len(ids)} predictions to {path}")
            if args.json:
                json.dump({"ok": True, "output": str(path), "rows": len(ids)}, sys.stdout)
                sys.stdout.write("\n")
        else:
            sys.stdout.write(_csv_bytes(table).decode())
        return 0


def _refuse_workspace_path(path: Path, workdir: Path) -> None:
    """Predictions never overwrite what sisa keeps (a manifest, a shard, the ledger)."""
    target = path.resolve()
    for folder in (workdir / "shards", workdir / "checkpoints"):
        if target == folder.resolve() or folder.resolve() in target.parents:
            raise SisaError(f"--output {path} is inside the workspace's {folder.name}/ folder, which holds "
                            f"sisa's own files; write the predictions somewhere else")
    if target.parent == workdir.resolve() and target.name.startswith(".sisa"):
        raise SisaError(f"--output {path} would overwrite one of sisa's files; write it somewhere else")


def _table(ids, labels, classes, proba, id_col: str, label_col: str):
    """The predictions as a table whose id and label columns are named as the training data's."""
    import pyarrow as pa

    columns = {id_col: pa.array(ids), label_col: pa.array(labels)}
    for j, c in enumerate(classes):
        columns[f"proba_{c}"] = pa.array(proba[:, j])
    return pa.table(columns)


def _csv_bytes(table) -> bytes:
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer)
    return buffer.getvalue()
