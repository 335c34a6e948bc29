"""Helpers shared by the test modules: ``from helpers import run_cli, FAST, ...``.

A plain module, not a conftest: tests/conftest.py puts this folder on ``sys.path`` (pytest's
default import mode does so too when it imports that conftest) and has pytest rewrite the
asserts here, so a failing helper assert shows its values. Fixtures stay in the conftest files;
no test module imports another.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from sisa.errors import SisaError

FAST = ("--epochs", "2", "--shards", "3", "--slices", "2")
"""Command-line flags for a quick ``sisa train``."""

FAST_SHAPE = ("--shards", "3", "--slices", "2")
"""FAST without its epochs, for a test that trains other epochs (an option may be given once)."""

SECRET = b"someone else's file, not sisa's to overwrite\n"
"""The contents of the ``victim`` fixture's file, which a planted link points at."""


# -- data

def make_table(n: int = 240, features: int = 6, classes: int = 3, seed: int = 0,
               str_ids: bool = False):
    """Separable blobs as a pyarrow table with id, label and numeric feature columns."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 3, size=(classes, features))
    X = (centres[labels] + rng.normal(0, 1, size=(n, features))).astype(np.float32)
    ids = [f"user-{i:04d}" for i in range(n)] if str_ids else list(range(1000, 1000 + n))
    columns = {"id": pa.array(ids), "label": pa.array(labels.astype(np.int64))}
    for j in range(features):
        columns[f"f{j}"] = pa.array(X[:, j])
    return pa.table(columns)


def without(dataset, removed):
    """``dataset`` with the training rows whose ids are in ``removed`` left out."""
    from sisa.data.sources import Dataset

    keep = ~np.isin(dataset.train.ids, np.asarray(list(removed), dtype=dataset.train.ids.dtype))
    return Dataset(dataset.spec, dataset.train.take(keep), dataset.test, dataset.shape, dataset.classes,
                   dataset.scale, dataset.feature_names, dataset.defaults)


# -- the command line

class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)


def run_cli(*argv) -> CliResult:
    """Run ``sisa`` in-process and capture its exit code and output."""
    from sisa.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return CliResult(code, out.getvalue(), err.getvalue())


# -- workspaces on disk

def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes, to compare a folder before and after."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def copy_workspace(base: Path, tmp_path: Path) -> Path:
    """A copy of the workspace ``base`` at ``tmp_path / "ws"``, to change freely."""
    shutil.copytree(base, tmp_path / "ws")
    return tmp_path / "ws"


def training_ids(ws) -> list:
    """Every id in the workspace's shard files, sorted."""
    import pyarrow.parquet as pq

    return sorted(i for p in (Path(ws) / "shards").glob("shard-*-*.parquet")
                  for i in pq.read_table(p, columns=["id"]).column("id").to_pylist())


def shard_layout(workdir) -> dict:
    """id -> (shard, slice) for every training row of a workspace."""
    import pyarrow.parquet as pq

    out = {}
    for path in Path(workdir, "shards").glob("shard-*.parquet"):
        table = pq.read_table(path, columns=["id", "shard", "slice"])
        for i, s, r in zip(*(table.column(c).to_pylist() for c in ("id", "shard", "slice"))):
            out[i] = (s, r)
    return out


def holdout_file(workdir) -> Path:
    """The workspace's test-rows file (its name carries its sha256)."""
    manifest = json.loads((Path(workdir) / "shards" / "manifest.json").read_text())
    return Path(workdir) / "shards" / manifest["test"]["file"]


def edit_manifest(path: Path, change) -> None:
    """Edit a manifest the way a careful tamperer would: change it and re-seal its checksum."""
    from sisa.workspace.files import Workspace

    obj = json.loads(path.read_text())
    change(obj)
    Workspace(path.parent.parent).write_json(path, obj)


# -- checkpoints

def checkpoint_shas(workdir) -> dict[tuple[int, int], str]:
    """(shard, slice) -> sha256 of every checkpoint the workspace records."""
    manifest = json.loads((Path(workdir) / "checkpoints" / "manifest.json").read_text())
    return {(r["shard"], r["slice"]): r["sha256"] for r in manifest["checkpoints"]}


def records(workdir) -> dict:
    """(shard, slice) -> (sha256, ids_sha256, file, weights file) of every checkpoint the
    workspace records."""
    manifest = json.loads((Path(workdir) / "checkpoints" / "manifest.json").read_text())
    return {(r["shard"], r["slice"]): (r["sha256"], r["ids_sha256"], r["file"], r.get("weights"))
            for r in manifest["checkpoints"]}


def assert_identical(deleted_ws, fresh_ws) -> None:
    """Two workspaces hold the same checkpoints, weights, shard files and predictions, bit for bit."""
    import torch

    from sisa.ops.ensemble import Ensemble
    from sisa.workspace.files import Workspace

    a, b = records(deleted_ws), records(fresh_ws)
    assert a == b
    for ra, rb in zip(Workspace(deleted_ws).checkpoints().checkpoints, Workspace(fresh_ws).checkpoints().checkpoints):
        sa, sb = Workspace(deleted_ws).load_weights(ra), Workspace(fresh_ws).load_weights(rb)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    shard_files = lambda ws: sorted(p.name for p in Path(ws, "shards").glob("shard-*.parquet"))
    assert shard_files(deleted_ws) == shard_files(fresh_ws)
    ea, eb = Ensemble(Workspace(deleted_ws)), Ensemble(Workspace(fresh_ws))
    X = ea.test_rows().X
    assert np.array_equal(ea.predict_proba(X), eb.predict_proba(X))


def deleted_ids(ws) -> set:
    """The ledger's keys of every deleted id (``i:123`` or ``s:text``)."""
    import sqlite3

    db = sqlite3.connect(Path(ws) / "shards" / "ledger.sqlite")
    try:
        return {key for (key,) in db.execute("SELECT id FROM deleted")}
    finally:
        db.close()


def reference_id_bytes(value):
    """An id's canonical bytes as the per-id loop gave them (the reference the vectorised
    hashes are tested against: workspaces on disk record them)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return b"i:%d" % int(value)
    if isinstance(value, str):
        return b"s:" + value.encode("utf-8")
    raise SisaError(f"ids must be integers or strings, got {value!r} ({type(value).__name__})")
