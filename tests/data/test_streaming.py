"""Features left in their file (sisa.data.streaming): the same rows, files and checkpoints as
a table read whole, a batch at a time."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from helpers import make_table, records

from sisa.data import tables
from sisa.data.sources import load
from sisa.data.streaming import StreamedFeatures, take_runs
from sisa.errors import SisaError
from sisa.ops.train import train_workspace
from sisa.settings import Settings

SETTINGS = Settings(shards=3, slices=2, epochs=2, model="logreg", seed=3)


@pytest.fixture
def small_batches(monkeypatch):
    """Sources read 7 rows (Parquet) or 64 bytes (CSV) at a time: many batches."""
    monkeypatch.setattr(tables, "STREAM_BATCH_ROWS", 7)
    monkeypatch.setattr(tables, "STREAM_CSV_BLOCK_BYTES", 64)


def test_runs_of_streamed_features_are_the_rows_read_whole(tmp_path, small_batches):
    path = tmp_path / "rows.parquet"
    pq.write_table(make_table(n=100, features=4), path)
    whole = load(f"parquet:{path}")
    streamed = load(f"parquet:{path}", stream=True)
    assert isinstance(streamed.train.X, StreamedFeatures)
    assert streamed.train.X.shape == whole.train.X.shape
    assert np.array_equal(streamed.train.ids, whole.train.ids)
    rng = np.random.default_rng(0)
    order_a = rng.permutation(len(whole.train))[:50]
    bounds_a = np.array([0, 0, 13, 13, 50])  # empty runs too
    order_b = rng.permutation(len(whole.test))
    bounds_b = np.array([0, 5, len(whole.test)])
    got = take_runs([(streamed.train.X, order_a, bounds_a), (streamed.test.X, order_b, bounds_b)], tmp_path)
    for runs, X, order, bounds in zip(got, (whole.train.X, whole.test.X), (order_a, order_b), (bounds_a, bounds_b)):
        runs = list(runs)
        assert len(runs) == len(bounds) - 1
        for run, lo, hi in zip(runs, bounds[:-1], bounds[1:]):
            assert np.array_equal(run, X[order[lo:hi]])
    assert not any(p for p in tmp_path.rglob("run-*"))  # every spill file removed once read
    with pytest.raises(TypeError, match="take_runs"):
        np.asarray(streamed.test.X)  # never read into memory by the way


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_training_from_a_streamed_table_writes_the_same_workspace(tmp_path, small_batches, kind):
    table = make_table(n=300, features=5)
    path = tmp_path / f"rows.{kind}"
    pq.write_table(table, path) if kind == "parquet" else pcsv.write_csv(table, path)
    spec = f"{kind}:{path}"
    for name, stream in (("whole", False), ("streamed", True)):
        train_workspace(tmp_path / name, load(spec, stream=stream), SETTINGS)
    whole, streamed = (json.loads((tmp_path / n / "shards" / "manifest.json").read_text()) for n in ("whole", "streamed"))
    assert streamed["shards"] == whole["shards"] and streamed["test"] == whole["test"]
    assert records(tmp_path / "whole") == records(tmp_path / "streamed")
    assert not list((tmp_path / "streamed").rglob("scratch-*"))


def test_a_separate_test_file_is_streamed_too(tmp_path, small_batches):
    pq.write_table(make_table(n=200, features=3), tmp_path / "train.parquet")
    test = make_table(n=60, features=3, seed=1)
    test = test.set_column(0, "id", [test.column("id").to_numpy() + 10_000])
    pq.write_table(test, tmp_path / "test.parquet")
    args = dict(test_spec=f"parquet:{tmp_path / 'test.parquet'}")
    for name, stream in (("whole", False), ("streamed", True)):
        train_workspace(tmp_path / name, load(f"parquet:{tmp_path / 'train.parquet'}", stream=stream, **args), SETTINGS)
    assert records(tmp_path / "whole") == records(tmp_path / "streamed")
    whole, streamed = (json.loads((tmp_path / n / "shards" / "manifest.json").read_text()) for n in ("whole", "streamed"))
    assert streamed["test"] == whole["test"] and streamed["test"]["rows"] == 60


def test_a_bad_value_in_a_late_batch_leaves_the_folder_as_it_was(tmp_path, small_batches):
    table = make_table(n=100, features=3)
    values = table.column("f1").to_numpy().copy()
    values[93] = np.nan
    pq.write_table(table.set_column(3, "f1", [values]), tmp_path / "rows.parquet")
    dataset = load(f"parquet:{tmp_path / 'rows.parquet'}", stream=True)  # ids and labels only: fine
    with pytest.raises(SisaError, match=r"rows 91-97\): feature column 'f1' has 1 missing, NaN or infinite"):
        train_workspace(tmp_path / "ws", dataset, SETTINGS)
    assert not (tmp_path / "ws").exists()  # the folder this training made is gone again


def test_a_source_changed_between_its_reads_is_refused(tmp_path, small_batches):
    path = tmp_path / "rows.parquet"
    pq.write_table(make_table(n=100, features=3), path)
    dataset = load(f"parquet:{path}", stream=True)
    pq.write_table(make_table(n=100, features=3).take(np.arange(99, -1, -1)), path)  # same rows, reordered
    with pytest.raises(SisaError, match="changed while it was being read"):
        train_workspace(tmp_path / "ws", dataset, SETTINGS)
    pq.write_table(make_table(n=90, features=3), path)
    with pytest.raises(SisaError, match="has 90 rows where it had 100 when first read"):
        train_workspace(tmp_path / "ws", dataset, SETTINGS)


def test_a_text_feature_column_is_refused_before_any_row_is_read(tmp_path):
    table = make_table(n=50, features=2)
    table = table.append_column("note", [["x"] * 50])
    pq.write_table(table, tmp_path / "rows.parquet")
    with pytest.raises(SisaError, match="feature column 'note' is not numeric"):
        load(f"parquet:{tmp_path / 'rows.parquet'}", stream=True)


def test_a_csv_whose_later_blocks_hold_other_number_types_trains_as_read_whole(tmp_path, small_batches):
    rows = [f"{1000 + i},{i % 2},{i},{i % 7}" for i in range(60)]
    rows += [f"{1060 + i},{i % 2},{i + 0.5},{2**70}" for i in range(20)]  # floats and beyond-int64 after ints
    (tmp_path / "rows.csv").write_text("id,label,a,b\n" + "\n".join(rows) + "\n")
    spec = f"csv:{tmp_path / 'rows.csv'}"
    for name, stream in (("whole", False), ("streamed", True)):
        train_workspace(tmp_path / name, load(spec, stream=stream), SETTINGS)
    assert records(tmp_path / "whole") == records(tmp_path / "streamed")


def test_labels_changed_between_the_reads_are_refused_not_mixed(tmp_path, small_batches):
    table = make_table(n=100, features=3)
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    dataset = load(f"parquet:{path}", stream=True)
    labels = table.column("label").to_numpy()
    pq.write_table(table.set_column(1, "label", [(labels + 1) % 3]), path)  # same ids, other labels
    with pytest.raises(SisaError, match="changed while it was being read"):
        train_workspace(tmp_path / "ws", dataset, SETTINGS)
    pq.write_table(table.drop_columns(["f2"]), path)  # a column gone
    with pytest.raises(SisaError, match="changed while it was being read"):
        train_workspace(tmp_path / "ws", dataset, SETTINGS)
    pq.write_table(pa.concat_tables([table, make_table(n=110, features=3).slice(100)]), path)  # rows added
    with pytest.raises(SisaError, match="changed while it was being read"):
        train_workspace(tmp_path / "ws", dataset, SETTINGS)
    assert not (tmp_path / "ws").exists()


def test_spill_files_are_private_whatever_the_umask(tmp_path, small_batches, monkeypatch):
    import os

    from sisa.data import streaming

    pq.write_table(make_table(n=50, features=3), tmp_path / "rows.parquet")
    dataset = load(f"parquet:{tmp_path / 'rows.parquet'}", stream=True)
    modes = []
    read_back = streaming._read_back

    def spy(paths, *args):
        modes.extend(os.stat(p).st_mode & 0o777 for p in paths if p.exists())
        yield from read_back(paths, *args)

    monkeypatch.setattr(streaming, "_read_back", spy)
    old = os.umask(0)
    try:
        train_workspace(tmp_path / "ws", dataset, SETTINGS)
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}
