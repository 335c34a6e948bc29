"""Many deletion requests, one id at a time and in batches: none lost, the model exact."""

import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import checkpoint_shas, make_table, run_cli

from sisa.data.sources import Dataset, load
from sisa.ops.delete import delete
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.workspace.files import Workspace
from sisa.workspace.ledger import Ledger

SETTINGS = Settings(shards=8, slices=3, epochs=2, batch_size=64)


def serve(tmp_path, n_rows: int, singles: int, batches: int, batch_size: int):
    pq.write_table(make_table(n=n_rows, features=4), tmp_path / "rows.parquet")
    dataset = load(f"parquet:{tmp_path / 'rows.parquet'}")
    ws = Workspace(tmp_path / "ws")
    train_workspace(ws.root, dataset, SETTINGS)
    ids = [int(i) for i in dataset.train.ids]
    random.Random(0).shuffle(ids)
    served = 0
    for _ in range(singles):
        delete(ws, [ids.pop()])
        served += 1
    for _ in range(batches):
        delete(ws, [ids.pop() for _ in range(batch_size)])
        served += batch_size
    ledger = Ledger(ws.ledger_path)
    try:
        deleted = ledger.deleted()
        assert len(deleted) == served and ledger.open_requests() == []
        assert ledger.counts()["committed"] == singles + batches
    finally:
        ledger.close()
    removed = set(int(i) for i in dataset.train.ids) - set(ids)
    keep = ~np.isin(dataset.train.ids, list(removed))
    fresh = Dataset(dataset.spec, dataset.train.take(keep), dataset.test, dataset.shape, dataset.classes,
                    dataset.scale, dataset.feature_names)
    train_workspace(tmp_path / "fresh", fresh, SETTINGS)
    assert checkpoint_shas(ws.root) == checkpoint_shas(tmp_path / "fresh")
    assert run_cli("audit", "--workdir", ws.root).code == 0
    return served


def test_fifty_requests(tmp_path):
    assert serve(tmp_path, n_rows=400, singles=30, batches=4, batch_size=5) == 50


@pytest.mark.slow
def test_a_thousand_requests(tmp_path):
    assert serve(tmp_path, n_rows=1500, singles=600, batches=40, batch_size=10) == 1000
