"""``add`` and ``revert``: a workspace that takes rows in and out stays exactly the workspace
trained without whatever it no longer holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import checkpoint_shas, make_table, run_cli, training_ids, tree
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sisa.data.dataset import Dataset, Table
from sisa.errors import SisaError
from sisa.ops.delete import delete
from sisa.ops.lifecycle import add_rows, revert
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import make_executor
from sisa.workspace.files import Workspace
from sisa.workspace.ledger import read_versions

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default

SETTINGS = Settings(shards=3, slices=2, epochs=2, model="logreg", batch_size=16)
ROWS = 150


def _rows():
    rng = np.random.default_rng(0)
    labels = np.arange(ROWS) % 3
    centres = rng.normal(0, 3, size=(3, 5))
    X = (centres[labels] + rng.normal(0, 1, size=(ROWS, 5))).astype(np.float32)
    return Table(np.arange(1000, 1000 + ROWS, dtype=np.int64), X, labels.astype(np.int64))


ALL = _rows()


def part(lo: int, hi: int, without=()) -> Table:
    """Rows ``lo``..``hi`` of ALL, less the ids in ``without``."""
    index = np.arange(lo, hi)
    index = index[~np.isin(ALL.ids[index], list(without))]
    return ALL.take(index)


def dataset(table: Table) -> Dataset:
    return Dataset("arrays", table, None, (5,), [0, 1, 2], feature_names=[f"f{j}" for j in range(5)])


def shas(workdir) -> dict:
    return checkpoint_shas(workdir)


def build(workdir, bounds, batches_slices, without=(), executor=None) -> None:
    """Train on the first batch, then add the others (``without`` left out of every batch)."""
    train_workspace(workdir, dataset(part(*bounds[0], without)), SETTINGS, executor=executor)
    for (lo, hi), k in zip(bounds[1:], batches_slices):
        add_rows(Workspace(workdir), part(lo, hi, without), slices=k, executor=executor)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n0=st.integers(45, 80), n1=st.integers(3, 30), n2=st.integers(3, 30), k1=st.integers(1, 2),
       k2=st.integers(1, 2), picks=st.lists(st.integers(0, ROWS - 1), min_size=1, max_size=5, unique=True))
def test_add_then_delete_equals_adding_without_the_deleted_rows(tmp_path_factory, n0, n1, n2, k1, k2, picks):
    """train D0; add D1; add D2; delete F  ==  train D0\\F; add D1\\F; add D2\\F, bit for bit,
    for F drawn from any of the batches."""
    bounds = [(0, n0), (n0, n0 + n1), (n0 + n1, n0 + n1 + n2)]
    forget = [int(ALL.ids[i]) for i in picks if i < bounds[2][1]]
    assume(forget)
    for (lo, hi), k in zip(bounds[1:], (k1, k2)):  # the batches without F must still be addable
        assume(len(part(lo, hi, forget)) >= k)
    root = tmp_path_factory.mktemp("prop")
    try:
        build(root / "without", bounds, (k1, k2), without=forget)
    except SisaError as exc:  # a shard of D0\F with fewer rows than slices cannot be trained
        assume("more slices than samples" not in str(exc))
        raise
    build(root / "deleted", bounds, (k1, k2))
    before = shas(root / "deleted")
    delete(Workspace(root / "deleted"), forget)
    after = shas(root / "deleted")
    assert after == shas(root / "without")
    assert after != before  # the deletion did change something
    assert not set(map(int, training_ids(root / "deleted"))) & set(forget)


def test_add_on_ray_gives_the_in_process_checkpoints(tmp_path):
    bounds, forget = [(0, 60), (60, 90), (90, 120)], [1003, 1070, 1100]
    ray = make_executor("ray")
    build(tmp_path / "ray", bounds, (1, 2), executor=ray)
    delete(Workspace(tmp_path / "ray"), forget, executor=ray)
    build(tmp_path / "local", bounds, (1, 2), without=forget)
    assert shas(tmp_path / "ray") == shas(tmp_path / "local")


def test_an_add_trains_only_the_new_slices(tmp_path):
    build(tmp_path / "ws", [(0, 60)], ())
    before = shas(tmp_path / "ws")
    result = add_rows(Workspace(tmp_path / "ws"), part(60, 80), slices=2, epochs=3)
    after = shas(tmp_path / "ws")
    assert {k: v for k, v in after.items() if k[1] < 2} == before  # earlier checkpoints untouched
    assert sorted({k[1] for k in after}) == [0, 1, 2, 3]
    assert result["version"] == 2 and result["rows"] == 20
    manifest = Workspace(tmp_path / "ws").manifest()
    assert manifest.schedule()[2:] == (3, 3) and manifest.data.n_train == 80


def test_a_shard_the_batch_brings_nothing_trains_no_epochs(tmp_path):
    build(tmp_path / "ws", [(0, 60)], ())
    ws = Workspace(tmp_path / "ws")
    one = part(60, 61)
    add_rows(ws, one)
    records = [r for r in ws.checkpoints().checkpoints if r.slice == 2]
    trained = {r.shard: r.epochs for r in records}
    assert sorted(trained.values()) == [0, 0, SETTINGS.slice_epochs()[-1]]


def test_revert_restores_the_workspace_that_never_took_the_batches(tmp_path):
    build(tmp_path / "a", [(0, 60), (60, 90), (90, 120)], (1, 2))
    result = revert(Workspace(tmp_path / "a"), 1)
    assert result["reverted"] == [2, 3] and result["rows_removed"] == 60
    build(tmp_path / "b", [(0, 60)], ())
    assert shas(tmp_path / "a") == shas(tmp_path / "b")
    assert sorted(training_ids(tmp_path / "a")) == sorted(training_ids(tmp_path / "b"))  # rows purged
    states = {v["version"]: v["state"] for v in read_versions(Workspace(tmp_path / "a").ledger_path)}
    assert states == {1: "done", 2: "reverted", 3: "reverted", 4: "done"}


def test_revert_after_a_deletion_equals_training_without_the_deleted_rows(tmp_path):
    build(tmp_path / "a", [(0, 60), (60, 90)], (1,))
    delete(Workspace(tmp_path / "a"), [1005, 1070])
    revert(Workspace(tmp_path / "a"), 1)
    build(tmp_path / "b", [(0, 60)], (), without=[1005])
    assert shas(tmp_path / "a") == shas(tmp_path / "b")
    # the deleted id stays deleted: it may not come back through add
    with pytest.raises(SisaError, match="deleted earlier.*1070"):
        add_rows(Workspace(tmp_path / "a"), part(60, 90))


def test_revert_refuses_versions_it_cannot_go_back_to(tmp_path):
    build(tmp_path / "ws", [(0, 60), (60, 90), (90, 100)], (1, 1))
    ws = Workspace(tmp_path / "ws")
    revert(ws, 2)  # version 4: takes out 3
    add_rows(ws, part(100, 110))  # version 5
    with pytest.raises(SisaError, match="no longer in the workspace.*1, 2, 5"):
        revert(ws, 3)
    with pytest.raises(SisaError, match="does not exist yet"):
        revert(ws, 9)
    assert revert(ws, 5)["reverted"] == []  # already there: nothing to do
    assert revert(ws, 4)["reverted"] == [5]  # 4 is 2's rows: version 5 goes
    add_rows(ws, part(100, 110))  # reverted rows may come back
    train_workspace(tmp_path / "ws", dataset(part(0, 50)), SETTINGS, force=True)
    with pytest.raises(SisaError, match="precedes the training of version 8"):
        revert(ws, 2)


@pytest.mark.parametrize("change, message", [
    (lambda t: Table(t.ids, t.X, t.y), "already in the workspace: 1000"),
    (lambda t: Table(np.array([5000, 5000]), t.X[:2], t.y[:2]), "more than once.*5000"),
    (lambda t: Table(t.ids + 4000, t.X, (t.y + 7)), "label 7"),
    (lambda t: Table(t.ids.astype(str).astype(object), t.X, t.y), "ids are text"),
    (lambda t: Table(t.ids + 4000, t.X[:, :4], t.y), "shape"),
])
def test_add_refuses_bad_batches_and_changes_nothing(tmp_path, change, message):
    build(tmp_path / "ws", [(0, 60)], ())
    before = files(tmp_path / "ws")
    with pytest.raises(SisaError, match=message):
        add_rows(Workspace(tmp_path / "ws"), change(part(0, 10)))
    assert files(tmp_path / "ws") == before


def files(path: Path) -> dict:
    """The workspace's files, less SQLite's own (a read opens the ledger's -shm and -wal)."""
    return {name: data for name, data in tree(path).items() if not name.endswith(("-shm", "-wal"))}


def test_sisa_add_and_revert_from_the_command_line(tmp_path):
    table = make_table(n=200, features=5)
    pq.write_table(table.slice(0, 150), tmp_path / "d0.parquet")
    pq.write_table(table.slice(150, 50), tmp_path / "d1.parquet")
    pq.write_table(table.slice(150, 50).drop(["f4"]), tmp_path / "narrow.parquet")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'd0.parquet'}", "--workdir", ws,
                   "--shards", "2", "--slices", "2", "--epochs", "2", "--model", "logreg").code == 0
    narrow = run_cli("add", "--workdir", ws, "--data", f"parquet:{tmp_path / 'narrow.parquet'}")
    assert narrow.code == 1 and "f4" in narrow.err
    added = run_cli("add", "--workdir", ws, "--data", f"parquet:{tmp_path / 'd1.parquet'}", "--json")
    assert added.code == 0 and added.json["version"] == 2 and added.json["rows"] == 50
    again = run_cli("add", "--workdir", ws, "--data", f"parquet:{tmp_path / 'd1.parquet'}")
    assert again.code == 1 and "already in the workspace" in again.err
    assert run_cli("audit", "--workdir", ws).code == 0
    reverted = run_cli("revert", "--workdir", ws, "--to", "1")
    assert reverted.code == 0 and "took out version(s) 2, 50 rows" in reverted.out
    assert run_cli("audit", "--workdir", ws).code == 0
    history = run_cli("history", "--workdir", ws, "--json").json["events"]
    assert [(e["version"], e["kind"], e["state"]) for e in history] == [
        (1, "train", "done"), (2, "add", "reverted"), (3, "revert", "done")]


@pytest.mark.parametrize("point, finished", [("add-after-ledger", False), ("add-after-manifest", True)])
def test_a_crashed_add_is_abandoned_or_finished_by_the_next_command(tmp_path, point, finished):
    build(tmp_path / "ws", [(0, 60)], ())
    pq.write_table(make_table(n=20, features=5).set_column(0, "id", pa.array(range(7000, 7020))),
                   tmp_path / "more.parquet")
    env = dict(os.environ, SISA_CRASH_AT=point)
    run = subprocess.run([sys.executable, "-m", "sisa", "add", "--workdir", str(tmp_path / "ws"), "--data",
                          f"parquet:{tmp_path / 'more.parquet'}", "--executor", "local"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == -9, run.stderr
    assert run_cli("recover", "--workdir", tmp_path / "ws").code == 0
    versions = {v["version"]: v["state"] for v in read_versions(tmp_path / "ws" / "shards" / "ledger.sqlite")}
    assert versions[2] == ("done" if finished else "abandoned")
    assert run_cli("audit", "--workdir", tmp_path / "ws").code == 0
    if finished:
        build(tmp_path / "fresh", [(0, 60)], ())
        add_rows(Workspace(tmp_path / "fresh"), _table_rows(tmp_path / "more.parquet"))
        assert shas(tmp_path / "ws") == shas(tmp_path / "fresh")
    else:
        assert len(training_ids(tmp_path / "ws")) == 60


def _table_rows(path: Path) -> Table:
    table = pq.read_table(path)
    X = np.stack([table.column(f"f{j}").to_numpy() for j in range(5)], axis=1).astype(np.float32)
    return Table(table.column("id").to_numpy(), X, table.column("label").to_numpy())


def test_history_json_is_oldest_first_and_holds_no_ids(tmp_path):
    build(tmp_path / "ws", [(0, 60), (60, 90)], (1,))
    delete(Workspace(tmp_path / "ws"), [1001, 1002, 1003], reference="TICKET-7")
    result = run_cli("history", "--workdir", tmp_path / "ws", "--json").json
    kinds = [e["event"] for e in result["events"]]
    assert kinds == ["version", "version", "request"]
    request = result["events"][-1]
    assert request["reference"] == "TICKET-7" and request["asked"] == 3 and request["deleted"] == 3
    assert request["state"] == "committed" and request["shards"] and request["samples_retrained"] > 0
    assert "1001" not in json.dumps(result)


def test_vectorised_shards_add_and_delete_exactly(tmp_path):
    """Shards trained as one vectorised group: a member the batch brings nothing takes no steps,
    and deleting from an added slice still equals adding without the row."""
    vectorised = SETTINGS.replace(vectorise=3)
    bounds, forget = [(0, 60), (60, 64)], [1061]

    def build_v(workdir, without=()):
        train_workspace(workdir, dataset(part(*bounds[0], without)), vectorised)
        add_rows(Workspace(workdir), part(*bounds[1], without))

    build_v(tmp_path / "deleted")
    delete(Workspace(tmp_path / "deleted"), forget)
    build_v(tmp_path / "without", forget)
    assert shas(tmp_path / "deleted") == shas(tmp_path / "without")


def test_a_shard_empty_until_an_add_is_emptied_again_by_a_revert(tmp_path):
    from sisa.data.partition import assign

    shard = assign(ALL.ids, seed=SETTINGS.seed, shards=SETTINGS.shards, slices=1).shard
    first = ALL.take(np.flatnonzero(shard != 2)[:60])          # shard 2 gets nothing at first
    later = ALL.take(np.flatnonzero(shard == 2)[:5])
    train_workspace(tmp_path / "a", dataset(first), SETTINGS)
    plain = shas(tmp_path / "a")
    add_rows(Workspace(tmp_path / "a"), later)
    assert any(k[0] == 2 for k in shas(tmp_path / "a"))       # shard 2 trained from its first slice
    assert {k: v for k, v in shas(tmp_path / "a").items() if k[0] != 2 and k[1] < 2} == plain
    revert(Workspace(tmp_path / "a"), 1)
    assert shas(tmp_path / "a") == plain                      # no checkpoint of shard 2 is left
    assert run_cli("audit", "--workdir", tmp_path / "a").code == 0


def test_add_reads_a_batch_as_the_workspace_reads_its_rows(tmp_path):
    import pyarrow.csv as pcsv

    table = make_table(n=160, features=5, str_ids=True)
    pcsv.write_csv(table.slice(0, 120), tmp_path / "d0.csv")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"csv:{tmp_path / 'd0.csv'}", "--workdir", ws, "--shards", "2",
                   "--slices", "2", "--epochs", "1", "--model", "logreg", "--executor", "local").code == 0
    numeric = make_table(n=20, features=5).set_column(0, "id", pa.array(range(9000, 9020)))
    pcsv.write_csv(numeric, tmp_path / "numeric.csv")  # ids that look like integers, in a text workspace
    added = run_cli("add", "--workdir", ws, "--data", f"csv:{tmp_path / 'numeric.csv'}", "--json")
    assert added.code == 0, added.err
    assert "9005" in training_ids(ws)
    extra = table.slice(120, 40).append_column("extra", pa.array([1.0] * 40))
    pcsv.write_csv(extra, tmp_path / "extra.csv")
    refused = run_cli("add", "--workdir", ws, "--data", f"csv:{tmp_path / 'extra.csv'}")
    assert refused.code == 1 and "'extra'" in refused.err and "not feature columns" in refused.err
