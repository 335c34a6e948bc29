"""Smoke runs of the benchmark scripts on tiny settings (the real runs are not tests).

They take over a minute together, so the default ``pytest`` run leaves them out (the
``benchmark`` marker); run them with ``python -m pytest -m benchmark``, as .ci/run does.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_grid_smoke(tmp_path):
    run("grid.py", "--data", "digits", "--epochs", "3", "--cells", "1x1,4x2", "--ks", "1,4", "--ids", "1",
        "--serve", "--stratified", "--mono-repeats", "2", "--out", str(tmp_path), "--name", "smoke")
    result = json.loads((tmp_path / "smoke.json").read_text())
    mono = result["monolithic"]
    assert len(mono["runs"]) == 2  # before and after the cells; the baseline is their mean
    assert mono["train_seconds"] == sum(r["train_seconds"] for r in mono["runs"]) / 2
    assert [(c["shards"], c["slices"]) for c in result["cells"]] == [(1, 1), (4, 2)]
    cell = result["cells"][1]
    assert cell["one_deletion"]["median_wall_seconds"] > cell["one_deletion"]["median_compute_seconds"] > 0
    assert cell["one_deletion"]["speedup_compute"] == mono["train_seconds"] / cell["one_deletion"]["median_compute_seconds"]
    assert cell["k_sweep"][1]["speedup_batch"] == mono["train_seconds"] / cell["k_sweep"][1]["batch_seconds"]
    served = cell["one_deletion_served"]
    assert served["runs"][0]["id"] == cell["one_deletion"]["runs"][0]["id"]
    assert served["runs"][0]["retrained"] == cell["one_deletion"]["runs"][0]["retrained"]
    assert 0 < served["median_overhead_seconds"] < served["median_wall_seconds"]
    expected = cell["expected_deletion"]
    assert [r["retrained"][0]["from_slice"] for r in expected["runs"]] == [0, 1]  # one id per slice
    assert all(r["retrained"][0]["shard"] == 0 for r in expected["runs"])
    assert [r["id"] for r in cell["expected_deletion_served"]["runs"]] == [r["id"] for r in expected["runs"]]
    assert expected["mean_compute_seconds"] > 0 and expected["theory_speedup"] > 1
    assert [k["k"] for k in cell["k_sweep"]] == [1, 4]
    assert cell["k_sweep"][0]["theory_one_by_one"] > 1
    assert result["date"] and result["machine"]["cpus"] and "grid.py" in result["command"]
    assert (tmp_path / "smoke.md").read_text().count("\n") > 4
    assert (tmp_path / "smoke.png").read_bytes()[:4] == b"\x89PNG"
    # a grid split over processes merges into one table against the mean baseline
    other = dict(result, monolithic={**mono, "runs": [{**r, "train_seconds": 2 * r["train_seconds"]}
                                                      for r in mono["runs"]]})
    (tmp_path / "other.json").write_text(json.dumps(other))
    run("grid.py", "--merge", str(tmp_path / "smoke.json"), str(tmp_path / "other.json"), "--out", str(tmp_path),
        "--name", "merged")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert len(merged["cells"]) == 4 and len(merged["monolithic"]["runs"]) == 4
    assert abs(merged["monolithic"]["train_seconds"] - 1.5 * mono["train_seconds"]) < 1e-9
    assert merged["cells"][-1]["one_deletion"]["speedup_compute"] == (
        merged["monolithic"]["train_seconds"] / merged["cells"][-1]["one_deletion"]["median_compute_seconds"])
    assert "side by side, merged" in (tmp_path / "merged.md").read_text()


def test_tuning_smoke(tmp_path):
    run("tuning.py", "--data", "digits", "--shards", "2", "--slices", "2", "--configs", "epochs=3;epochs=3,lr=0.003,scheduler=cosine",
        "--out", str(tmp_path), "--name", "smoke")
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert len(result["rows"]) == 2 and all(0 < r["sisa"]["accuracy"] <= 1 for r in result["rows"])
    assert result["rows"][1]["config"] == {"epochs": 3, "lr": 0.003, "scheduler": "cosine"}
    by_aggregation = result["rows"][0]["sisa"]["accuracy_by_aggregation"]
    assert by_aggregation["mean-proba"] == result["rows"][0]["sisa"]["accuracy"]
    assert {"vote", "size-weighted"} <= set(by_aggregation)


def test_vectorised_smoke(tmp_path):
    run("vectorised.py", "--device", "cpu", "--shards", "4", "--epochs", "1", "--widths", "1,2",
        "--out", str(tmp_path), "--name", "smoke")
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["checks"] == {"delete_equals_training_without": True, "companion_unchanged": True}
    assert [r["vectorise"] for r in result["rows"]] == [1, 2]
    assert all(0 < r["accuracy"] <= 1 and r["train_seconds"] > 0 and r["delete_seconds"] > 0 for r in result["rows"])
    assert "| 2 |" in (tmp_path / "smoke.md").read_text()


def test_add_smoke(tmp_path):
    run("add.py", "--data", "digits", "--shards", "2", "--slices", "2", "--epochs", "2", "--fraction", "0.1",
        "--out", str(tmp_path), "--name", "smoke")
    result = json.loads((tmp_path / "smoke.json").read_text())
    from sisa.data.sources import load

    assert result["rows_added"] + result["rows_first"] == len(load("digits").train)
    assert 0 < result["rows_added"] < result["rows_first"]
    assert 0 < result["add"]["train_seconds"] and 0 < result["add"]["accuracy"] <= 1
    assert result["speedup_train"] == round(result["retrain_everything"]["train_seconds"]
                                            / result["add"]["train_seconds"], 2)
    assert result["date"] and "add.py" in result["command"]
    assert "retrain everything" in (tmp_path / "smoke.md").read_text()


def test_scale_smoke(tmp_path):
    run("scale.py", "--rows", "3000,6000", "--single-shard-rows", "0", "--shards", "2", "--slices", "2",
        "--batch-ids", "50", "--cache-dir", str(tmp_path / "cache"), "--work-dir", str(tmp_path / "work"),
        "--out", str(tmp_path), "--name", "smoke")
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert [(c["rows"], c["shards"]) for c in result["cells"]] == [(3000, 2), (6000, 2)]
    for cell in result["cells"]:
        assert cell["batch_ids"] == 50 and 0 <= cell["one_id"] < cell["rows"]
        assert set(cell["steps"]) == {"train", "delete_one", "delete_batch", "status", "eval"}
        for step in cell["steps"].values():
            assert step["ok"] and step["exit_code"] == 0
            assert step["wall_seconds"] > 0 and step["cpu_seconds"] > 0 and step["peak_rss_bytes"] > 0
            assert step["io"]["wchar"] > 0 and step["workspace_bytes"] > 0
        assert cell["steps"]["train"]["output"]["n_train"] == cell["rows"]
        assert cell["steps"]["delete_batch"]["output"]["requested"] == 50
    assert result["date"] and result["machine"]["cpus"] and "scale.py" in result["command"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"scale-r{r}-t{r // 10}-s0-{k}.parquet" for r in (3000, 6000) for k in ("test", "train")]
    table = (tmp_path / "smoke.md").read_text()
    assert "| rows | S | train: wall s" in table and "| 3,000 | 2 |" in table and "| 6,000 | 2 |" in table
    assert (tmp_path / "smoke.png").read_bytes()[:4] == b"\x89PNG"


def test_storage_smoke(tmp_path):
    from sisa.settings import Settings

    run("storage.py", "--models", "logreg,mlp", "--out", str(tmp_path), "--name", "smoke")
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert Settings.optimizer == result["optimizer"] == "adam"
    assert [m["model"] for m in result["models"]] == ["logreg", "mlp"]
    for m in result["models"]:
        assert m["parameters"] > 0 and m["weights_bytes"] > 4 * m["parameters"] - 1
        assert m["state_bytes"] > 1.5 * m["weights_bytes"]  # Adam keeps two moments per parameter
        assert [(w["shards"], w["slices"]) for w in m["workspaces"]] == [(20, 50), (Settings.shards, Settings.slices)]
        for w in m["workspaces"]:
            assert w["workspace_bytes"] == w["shards"] * w["slices"] * (m["weights_bytes"] + m["state_bytes"])
            assert w["inference_bytes"] == w["shards"] * m["weights_bytes"] < w["inference_bytes_before"]
    assert result["date"] and "storage.py" in result["command"]
    table = (tmp_path / "smoke.md").read_text()
    assert "| logreg | fashion-mnist (1x28x28) | 7,850 |" in table and "| mlp | 20 x 50 (SISA paper) |" in table


def test_fmnist_subset_smoke(tmp_path):
    pytest.importorskip("pyarrow")
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    import pyarrow.parquet as pq

    run("fmnist_subset.py", "--out", str(tmp_path), "--train-rows", "50", "--test-rows", "20")
    train, test = pq.read_table(tmp_path / "train.parquet"), pq.read_table(tmp_path / "test.parquet")
    assert (train.num_rows, test.num_rows, train.num_columns) == (50, 20, 2 + 784)
    assert not set(train.column("id").to_pylist()) & set(test.column("id").to_pylist())
    assert 0 <= min(train.column("px400").to_pylist()) <= max(train.column("px400").to_pylist()) <= 1
