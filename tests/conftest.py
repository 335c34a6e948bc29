from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

# Tests run shards in-process unless they test the Ray executor by name: Ray's start-up costs
# seconds, and subprocesses killed on purpose must not leave Ray clusters behind.
os.environ.setdefault("SISA_EXECUTOR", "local")


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


@pytest.fixture
def table_file(tmp_path: Path):
    """Write a table (csv or parquet) and return its path."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    def write(name: str = "data.parquet", table=None, **kwargs) -> Path:
        table = table if table is not None else make_table(**kwargs)
        path = tmp_path / name
        if name.endswith(".csv"):
            pcsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        return path

    return write


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)


def run_cli(*argv: str) -> CliResult:
    """Run ``sisa`` in-process and capture its exit code and output."""
    from sisa.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return CliResult(code, out.getvalue(), err.getvalue())


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes, to compare a folder before and after."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def checkpoint_shas(workdir: Path) -> dict[tuple[int, int], str]:
    manifest = json.loads((workdir / "checkpoints" / "manifest.json").read_text())
    return {(r["shard"], r["slice"]): r["sha256"] for r in manifest["checkpoints"]}


FAST = ("--epochs", "2", "--shards", "3", "--slices", "2")


def edit_manifest(path: Path, change) -> None:
    """Edit a manifest the way a careful tamperer would: change it and re-seal its checksum."""
    from sisa.workspace.files import Workspace

    obj = json.loads(path.read_text())
    change(obj)
    Workspace(path.parent.parent).write_json(path, obj)


def holdout_file(workdir) -> Path:
    """The workspace's test-rows file (its name carries its sha256)."""
    manifest = json.loads((Path(workdir) / "shards" / "manifest.json").read_text())
    return Path(workdir) / "shards" / manifest["test"]["file"]


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    """A 240-row Parquet table on disk, the source of :func:`small_trained`."""
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("small-source") / "rows.parquet"
    pq.write_table(make_table(n=240, features=5), path)
    return path


@pytest.fixture(scope="session")
def small_trained(tmp_path_factory, small_source) -> Path:
    """A workspace trained by ``sisa train`` on :func:`small_source` with FAST settings;
    copy it (:func:`copy_workspace`) before changing it."""
    ws = tmp_path_factory.mktemp("small-trained") / "ws"
    assert run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST).code == 0
    return ws


def copy_workspace(base: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(base, tmp_path / "ws")
    return tmp_path / "ws"


def training_ids(ws: Path) -> list:
    """Every id in the workspace's shard files, sorted."""
    import pyarrow.parquet as pq

    return sorted(i for p in (Path(ws) / "shards").glob("shard-*-*.parquet")
                  for i in pq.read_table(p, columns=["id"]).column("id").to_pylist())


SECRET = b"someone else's file, not sisa's to overwrite\n"


@pytest.fixture
def victim(tmp_path):
    """A private file outside the workspace that a planted link points at (holds SECRET)."""
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path
