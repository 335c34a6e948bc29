"""One writer at a time: concurrent sisa processes never lose or mix up a deletion."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from sisa.api import train_workspace
from sisa.data import load
from sisa.ledger import Ledger
from sisa.settings import Settings
from sisa.store import Workspace

from conftest import make_table, run_cli, tree

SETTINGS = Settings(shards=4, slices=2, epochs=2, batch_size=32)

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.parquet"
    pq.write_table(make_table(n=400, features=4), path)
    dataset = load(f"parquet:{path}")
    ws = tmp_path_factory.mktemp("base") / "ws"
    train_workspace(ws, dataset, SETTINGS)
    return dataset, ws


def holder(ws, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ws), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_no_wait_fails_fast_and_changes_nothing(trained, tmp_path):
    dataset, base = trained
    shutil.copytree(base, tmp_path / "ws")
    before = tree(tmp_path / "ws")
    proc = holder(tmp_path / "ws", 30)
    try:
        started = time.perf_counter()
        result = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", str(dataset.train.ids[0]), "--no-wait")
        assert time.perf_counter() - started < 10
        assert result.code == 1 and "in use by another sisa process" in result.err
        assert tree(tmp_path / "ws") == before
        for command in (("status",), ("eval",), ("train", "--force", "--epochs", "1")):
            busy = run_cli(*command, "--workdir", tmp_path / "ws", "--no-wait")
            assert busy.code == 1 and "in use by another sisa process" in busy.err, command
    finally:
        proc.kill()
        proc.wait()
    assert run_cli("status", "--workdir", tmp_path / "ws", "--no-wait").code == 0


def test_a_writer_waits_for_the_lock_then_proceeds(trained, tmp_path):
    dataset, base = trained
    shutil.copytree(base, tmp_path / "ws")
    proc = holder(tmp_path / "ws", 2)
    result = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", str(dataset.train.ids[0]), "--json")
    proc.wait()
    assert result.code == 0 and "waiting for another sisa process" in result.err
    assert result.json["deleted"] == [int(dataset.train.ids[0])]


def test_four_processes_deleting_at_once_lose_nothing(trained, tmp_path):
    dataset, base = trained
    shutil.copytree(base, tmp_path / "ws")
    ids = [int(i) for i in dataset.train.ids]
    batches = [ids[k::37][:4] for k in range(4)]
    procs = [subprocess.Popen([sys.executable, "-m", "sisa", "delete", "--workdir", str(tmp_path / "ws"),
                               "--ids", ",".join(map(str, batch)), "--executor", "local"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for batch in batches]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    removed = {i for batch in batches for i in batch}
    ledger = Ledger(Workspace(tmp_path / "ws").ledger_path)
    try:
        assert len(ledger.deleted()) == len(removed) and ledger.open_requests() == []
        assert ledger.counts()["committed"] == 4
    finally:
        ledger.close()
    keep = ~np.isin(dataset.train.ids, list(removed))
    from sisa.data import Dataset

    fresh = Dataset(dataset.spec, dataset.train.take(keep), dataset.test, dataset.shape, dataset.classes,
                    dataset.scale, dataset.feature_names)
    train_workspace(tmp_path / "fresh", fresh, SETTINGS)
    from conftest import checkpoint_shas

    assert checkpoint_shas(tmp_path / "ws") == checkpoint_shas(tmp_path / "fresh")
    assert run_cli("audit", "--workdir", tmp_path / "ws", "--replay").code == 0
