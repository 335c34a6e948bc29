"""Fixtures shared by every test folder; shared plain functions and constants are in helpers.py.

The test folders mirror sisa's packages and are not packages themselves (no ``__init__.py``):
pytest imports each test file by its basename, so no two test files may share one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Test modules import their shared helpers with ``from helpers import ...``. pytest's default
# import mode already puts this folder on sys.path when it imports this file; doing it here
# too keeps that true under --import-mode=importlib. The helpers' asserts are rewritten like
# a test's, so a failing one shows its values.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("helpers")

from helpers import FAST, SECRET, make_table, run_cli

# Tests run shards in-process unless they test the Ray executor by name: Ray's start-up costs
# seconds, and subprocesses killed on purpose must not leave Ray clusters behind.
os.environ.setdefault("SISA_EXECUTOR", "local")


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
    copy it (:func:`helpers.copy_workspace`) before changing it."""
    ws = tmp_path_factory.mktemp("small-trained") / "ws"
    assert run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST).code == 0
    return ws


@pytest.fixture
def victim(tmp_path):
    """A private file outside the workspace that a planted link points at (holds SECRET)."""
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path
