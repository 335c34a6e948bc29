import shutil

import pyarrow.parquet as pq
import pytest
from helpers import make_table

from sisa.data.sources import load
from sisa.ops.train import train_workspace
from sisa.settings import Settings

SETTINGS = Settings(shards=4, slices=3, epochs=3, batch_size=32)


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "rows.parquet"
    pq.write_table(make_table(n=400, features=5), path)
    return path


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory, source):
    ws = tmp_path_factory.mktemp("trained") / "ws"
    train_workspace(ws, load(f"parquet:{source}"), SETTINGS,
                    source={"id_col": "id", "label_col": "label", "test_spec": None, "test_fraction": 0.2})
    return ws


@pytest.fixture
def ws(trained_base, tmp_path):
    shutil.copytree(trained_base, tmp_path / "ws")
    return tmp_path / "ws"
