"""``sisa compare``: one table with exact deletion and the approximate methods."""

import json

import numpy as np
import pytest
from helpers import run_cli

from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.ops.train import train_workspace
from sisa.research.compare import forget_mask, train_model
from sisa.settings import Settings
from sisa.training.jobs import DataSpec
from sisa.workspace.files import Workspace

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default
SMALL = ("--epochs", "4", "--shards", "2", "--slices", "2")


def test_compare_on_digits_prints_the_table_and_writes_results(tmp_path):
    out = tmp_path / "results"
    result = run_cli("compare", "--forget", "random:0.05", *SMALL, "--methods", "ft,ssd,amnesiac",
                     "--shadows", "2", "--set", "ft.lr=0.02", "--out", str(out), "--json")
    assert result.code == 0, result.err
    report = result.json
    names = [row["method"] for row in report["rows"]]
    assert names == ["original", "retrained", "ft", "ssd", "amnesiac", "sisa"]
    assert report["n_forget"] == round(0.05 * report["n_train"])
    for row in report["rows"]:
        for key in ("RA", "FA", "TA", "MIA", "MIA_efficacy", "gap", "seconds", "LiRA_auc"):
            assert row[key] == row[key], (row["method"], key)  # present and not NaN
    retrained = report["rows"][1]
    assert retrained["gap"] == 0 and retrained["speedup"] is None
    ft = report["rows"][2]
    assert ft["params"]["lr"] == 0.02 and ft["speedup"] == pytest.approx(report["retrain_seconds"] / ft["seconds"])
    assert report["sisa_exactness"]["identical_checkpoints"] is True
    assert report["sisa_exactness"]["max_proba_difference"] == 0
    assert report["rows"][-1]["gap_to_sisa_retrained"] == 0
    saved = json.loads((out / "digits-random-0.05.json").read_text())
    assert saved["rows"] == report["rows"]
    md = (out / "digits-random-0.05.md").read_text()
    assert md.startswith("digits, forget random:0.05") and "\n| method | RA | FA | TA |" in md
    assert (out / "digits-random-0.05.png").read_bytes()[:4] == b"\x89PNG"
    for phase in ("original: trained", "retrained: trained", "ft:", "sisa delete: retrained", "LiRA shadow model 2/2"):
        assert phase in result.err


def test_compare_human_table(tmp_path):
    result = run_cli("compare", "--forget", "class:7", *SMALL, "--methods", "rl", "--shadows", "0",
                     "--out", str(tmp_path))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:4] == ["method", "RA", "FA", "TA"]
    assert [line.split()[0] for line in lines[1:5]] == ["original", "retrained", "rl", "sisa"]
    assert "identical to SISA trained without the forget rows" in result.out


@pytest.mark.parametrize("argv, message", [
    (("--forget", "random:0"), "needs a share"),
    (("--forget", "random:abc"), "needs a share"),
    (("--forget", "random:nan"), "needs a share"),
    (("--forget", "random:inf"), "needs a share"),
    (("--forget", "random:2.5"), "needs a share"),
    (("--forget", "class:42"), "no such class"),
    (("--forget", "everything"), "must be random:F, class:C or ids:PATH"),
    (("--forget", "ids:/no/such/file"), "no such file"),
    (("--methods", "ft,forgetful"), "unknown unlearning method 'forgetful'"),
    (("--set", "ft.lr"), "expected METHOD.SETTING=VALUE"),
    (("--set", "ft.lr=fast"), "not a number"),
    (("--set", "ft.momentum=0.5", "--methods", "ft"), "no setting momentum"),
    (("--set", "ssd.alpha=5", "--methods", "ft"), "not being run"),
    (("--shadows", "-1"), "--shadows must be >= 0"),
])
def test_bad_compare_arguments_are_named(tmp_path, argv, message):
    result = run_cli("compare", *SMALL, "--out", str(tmp_path / "out"), *argv)
    assert result.code == 1 and message in result.err, result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_forget_by_ids_file(tmp_path):
    digits = load("digits")
    path = tmp_path / "ids.txt"
    path.write_text("\ufeff" + "\r\n".join(str(i) for i in digits.train.ids[:5]) + "\r\n\r\n")
    mask = forget_mask(digits, f"ids:{path}", seed=0)
    assert mask.sum() == 5 and mask[:5].all()
    path.write_text("5\n999999\n")
    with pytest.raises(SisaError, match="not training ids"):
        forget_mask(digits, f"ids:{path}", seed=0)
    with pytest.raises(SisaError, match="every training row"):
        forget_mask(digits, f"random:{len(digits.train)}", seed=0)


def test_list_methods():
    result = run_cli("compare", "--list-methods")
    assert result.code == 0
    for name in ("ft", "neggrad", "neggrad+", "rl", "scrub", "ssd", "salun", "l1-sparse", "fisher", "amnesiac"):
        assert any(line.startswith(name + " ") for line in result.out.splitlines()), name


def test_the_original_model_is_the_one_shard_workspace_model(tmp_path):
    """compare's monolithic models are exactly what `sisa train --shards 1 --slices 1` holds."""
    import torch

    digits = load("digits")
    settings = Settings(shards=1, slices=1, epochs=3)
    from sisa.research.compare import _canonical

    order = _canonical(digits, settings)
    X, y = digits.train.X[order], digits.label_index(digits.train.y[order], "train")
    data = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, 10)
    model, _, _ = train_model(settings, data, X, y)
    train_workspace(tmp_path, digits, settings)
    workspace = Workspace(tmp_path)
    record = workspace.checkpoints().checkpoints[0]
    saved = workspace.load_checkpoint(record)["model"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert np.array_equal(np.sort(order), np.arange(len(order)))


def test_results_record_the_command_date_and_machine(tmp_path):
    result = run_cli("compare", "--forget", "random:0.05", *SMALL, "--methods", "none", "--no-sisa",
                     "--shadows", "0", "--out", str(tmp_path), "--json")
    assert result.code == 0, result.err
    report = result.json
    assert report["command"].startswith("sisa compare --forget random:0.05 --epochs 4")
    assert report["date"].startswith("20") and report["machine"]["cpus"] >= 1
    assert [row["method"] for row in report["rows"]] == ["original", "retrained"]


def test_a_diverged_method_is_reported_not_fatal(tmp_path):
    result = run_cli("compare", "--forget", "random:0.1", *SMALL, "--methods", "neggrad,ft", "--no-sisa",
                     "--shadows", "2", "--set", "neggrad.lr=1e6", "--set", "neggrad.share=2", "--out", str(tmp_path),
                     "--json")
    assert result.code == 0, result.err
    rows = {row["method"]: row for row in result.json["rows"]}
    assert rows["neggrad"]["diverged"] is True and rows["neggrad"]["FA"] is None and rows["neggrad"]["gap"] is None
    assert 0 <= rows["ft"]["FA"] <= 1 and np.isfinite(rows["ft"]["gap"]) and 0 <= rows["ft"]["LiRA_auc"] <= 1
    text = run_cli("compare", "--forget", "random:0.1", *SMALL, "--methods", "neggrad", "--no-sisa",
                   "--shadows", "0", "--set", "neggrad.lr=1e6", "--set", "neggrad.share=2", "--out", str(tmp_path))
    assert "neggrad (diverged)" in text.out
