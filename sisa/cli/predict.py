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
    description = ("Predict with the ensemble of a workspace, or of a bundle 'sisa export' wrote (--bundle). "
                   "Tables need the training feature columns and the workspace's id column (or --no-ids); "
                   "built-in datasets give their test split. The output's id and label columns are named as "
                   "the training data's were.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--input", required=True, metavar="SPEC",
                       help="csv:PATH, parquet:PATH (or a .csv/.parquet path), a dataset name, or - "
                            "for CSV on standard input (parquet:- for Parquet)")
        p.add_argument("--output", metavar="PATH",
                       help="write .csv, .parquet or .json here instead of CSV on stdout")
        p.add_argument("--no-ids", action="store_true",
                       help="the input table has no id column: number its rows 0, 1, ... in the output")
        p.add_argument("--bundle", metavar="DIR",
                       help="predict with the bundle 'sisa export' wrote to DIR instead of a workspace "
                            "(--workdir is then not read)")
        add_common(p)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        if args.bundle is not None:
            return self._from_bundle(args)
        from sisa.ops.ensemble import Ensemble
        from sisa.workspace.files import Workspace

        recover_first(args, env)
        with locked(args, env, exclusive=False):
            ensemble = Ensemble(Workspace(args.workdir))
            workdir = Path(args.workdir)
            return self._predict(args, ensemble, ensemble.manifest.data.source or {},
                                 lambda path: _refuse_sisa_path(path, workdir))

    def _from_bundle(self, args: argparse.Namespace) -> int:
        """A bundle is not a workspace: no lock to take and no deletion to finish first."""
        from sisa.ops.bundle import load_bundle

        if args.workdir != ".":
            info(f"note: --workdir {args.workdir} is not read: predicting with the bundle {args.bundle}")
        bundle = load_bundle(args.bundle)
        folder = Path(args.bundle)
        return self._predict(args, bundle, bundle.source, lambda path: _refuse_sisa_path(path, folder))

    def _predict(self, args: argparse.Namespace, model, source: dict, refuse_output) -> int:
        """Predict with ``model`` (an Ensemble or a Bundle: ``classes``, ``feature_names``,
        ``data`` and ``predict_proba``), reading rows as its recorded data ``source`` says;
        ``refuse_output(path)`` refuses an --output that would overwrite sisa's own files."""
        from sisa.data.sources import Dataset, LoadOptions, load_rows
        from sisa.workspace.files import atomic_write

        like = Dataset(source.get("spec"), None, None, tuple(model.data.shape), model.classes,
                       feature_names=model.feature_names)
        options = LoadOptions(source.get("id_col", "id"), source.get("label_col", "label"),
                              source.get("test_fraction", 0.2), source.get("image_size"))
        rows = load_rows("csv:-" if args.input == "-" else args.input, like, options, need_labels=False,
                         what="input", need_ids=not args.no_ids,
                         ids_hint="name the rows with the training data's id column, or pass --no-ids to number "
                                  "them 0, 1, ...")
        if args.no_ids:
            import numpy as np

            rows.ids = np.arange(len(rows.ids), dtype=np.int64)
        proba = model.predict_proba(rows.X)
        classes = model.classes
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
            refuse_output(path)
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


def _refuse_sisa_path(path: Path, source: Path) -> None:
    """Predictions never overwrite what sisa keeps: no file inside a workspace's ``shards/`` or
    ``checkpoints/``, none of its ``.sisa*`` files, nothing inside a bundle; whichever workspace
    or bundle that is, not only ``source`` (the one predicted with, refused even while empty)."""
    target = path.resolve()
    for folder in (target, *target.parents):
        if folder.name in ("shards", "checkpoints") and (folder / "manifest.json").exists() \
                or folder in (source.resolve() / "shards", source.resolve() / "checkpoints"):
            raise SisaError(f"--output {path} is inside a workspace's {folder.name}/ folder, which holds sisa's "
                            f"own files; write the predictions somewhere else")
        if folder != target and (folder / "bundle.json").is_file():
            raise SisaError(f"--output {path} is inside the bundle {folder}, which holds only the bundle's files; "
                            f"write the predictions somewhere else")
    if target.name.startswith(".sisa") and ((target.parent / "shards").is_dir() or target.parent == source.resolve()):
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
