"""``sisa compare``: one table with exact deletion and the approximate methods."""

import json

import numpy as np
import pytest
from helpers import run_cli

from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.ops.train import train_workspace
from sisa.research.compare import forget_set, train_model
from sisa.settings import Settings
from sisa.training.jobs import DataSpec
from sisa.workspace.files import Workspace

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default
SMALL = ("--epochs", "4", "--shards", "2", "--slices", "2")


def test_compare_on_digits_prints_the_table_and_writes_results(tmp_path):
    out = tmp_path / "results"
    result = run_cli("compare", "--forget", "random:0.05", *SMALL, "--methods", "ft,ssd,amnesiac",
                     "--shadows", "2", "--draws", "2", "--set", "ft.lr=0.02", "--out", str(out), "--json")
    assert result.code == 0, result.err
    report = result.json
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["original", "retrained", "ft", "ssd", "amnesiac", "sisa-original", "sisa-delete",
                          "sisa-retrained"]
    assert report["n_forget"] == round(0.05 * report["n_train"]) and report["seeds"] == [0] and report["draws"] == 2
    for row in report["rows"]:
        for key in ("RA", "FA", "TA", "MIA", "MIA_null", "MIA_efficacy", "gap_own_ref", "gap_mono_retrain",
                    "seconds", "LiRA_auc"):
            assert row[key] == row[key], (row["method"], key)  # present and not NaN
        assert row["n"]["MIA"] == 2 and row["n"]["TA"] == 1 and len(row["values"]["MIA_null"]) == 2
    # each model against its own reference: monolithic ones against retrained, SISA against sisa-retrained
    assert {name: row["reference"] for name, row in rows.items()} == {
        **dict.fromkeys(["original", "retrained", "ft", "ssd", "amnesiac"], "retrained"),
        **dict.fromkeys(["sisa-original", "sisa-delete", "sisa-retrained"], "sisa-retrained")}
    assert rows["retrained"]["gap_own_ref"] == 0 and rows["retrained"]["speedup"] is None
    assert rows["ft"]["gap_own_ref"] == rows["ft"]["gap_mono_retrain"]
    assert rows["sisa-delete"]["gap_own_ref"] == 0 and rows["sisa-delete"]["identical"] is True
    assert rows["sisa-delete"]["gap_mono_retrain"] > 0 and rows["sisa-original"]["gap_own_ref"] > 0
    assert rows["sisa-delete"]["values"]["MIA"] == rows["sisa-retrained"]["values"]["MIA"]
    ft = rows["ft"]
    assert ft["params"]["lr"] == 0.02 and ft["speedup"] == pytest.approx(report["retrain_seconds"] / ft["seconds"])
    exact = report["sisa_exactness"]
    assert exact["identical_checkpoints"] is True and exact["max_proba_difference"] == 0
    assert exact["per_seed"][0]["deleted_digest"] == exact["per_seed"][0]["retrained_digest"]
    assert report["warnings"] and all("forget rows" in w for w in report["warnings"])  # 72 forget rows
    saved = json.loads((out / "digits-random-0.05.json").read_text())
    assert saved["rows"] == report["rows"]
    md = (out / "digits-random-0.05.md").read_text()
    assert md.startswith("digits, forget random:0.05") and "\n| method | RA | FA | TA | MIA acc | MIA null |" in md
    assert "- warning: MIA" in md
    assert (out / "digits-random-0.05.png").read_bytes()[:4] == b"\x89PNG"
    for phase in ("original: trained", "retrained: trained", "ft:", "sisa delete: retrained",
                  "LiRA shadow model 2/2 (monolithic)", "LiRA shadow model 2/2 (sisa)"):
        assert phase in result.err


def test_compare_human_table_over_two_seeds(tmp_path):
    result = run_cli("compare", "--forget", "class:7", *SMALL, "--methods", "rl", "--shadows", "0",
                     "--seeds", "2", "--draws", "2", "--out", str(tmp_path))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:7] == ["method", "RA", "FA", "TA", "MIA", "acc", "MIA"]
    assert "gap own ref" in lines[0] and "gap mono" in lines[0] and "identical" in lines[0]
    assert [line.split()[0] for line in lines[1:7]] == ["original", "retrained", "rl", "sisa-original", "sisa-delete",
                                                         "sisa-retrained"]
    assert "±" in lines[3] and "yes 2/2" in lines[5]
    assert "over 2 training seeds" in result.out and "2 x 2 attack draws = 4 values" in result.out
    assert "equal those of SISA trained without the forget rows (2 of 2 seeds" in result.out
    assert "[seed 2/2] sisa delete: retrained" in result.err


@pytest.mark.parametrize("argv, message", [
    (("--forget", "random:0"), "needs a share"),
    (("--forget", "random:abc"), "needs a share"),
    (("--forget", "random:nan"), "needs a share"),
    (("--forget", "random:inf"), "needs a share"),
    (("--forget", "random:2.5"), "needs a share"),
    (("--forget", "class:42"), "no such class"),
    (("--forget", "everything"), "must be random:F, class:C or ids:PATH"),
    (("--forget", "ids:/no/such/file"), "--forget ids:/no/such/file: no such file"),
    (("--methods", "ft,forgetful"), "unknown unlearning method 'forgetful'; choose one of: ft, l1-sparse"),
    (("--set", "ft.lr"), "expected METHOD.SETTING=VALUE"),
    (("--set", "ft.lr=fast"), "not a number"),
    (("--set", "ft.lr=nan"), "setting lr must be a finite number >= 0"),
    (("--set", "ft.lr=-0.1"), "setting lr must be a finite number >= 0"),
    (("--set", "ft.learning_rate=0.1"), "method 'ft' has no setting learning_rate; its settings: share, lr"),
    (("--set", "ft.momentum=0.5", "--methods", "ft"), "no setting momentum"),
    (("--set", "ftt.lr=0.1"), "unknown unlearning method 'ftt'; choose one of: ft, l1-sparse"),
    (("--set", "ssd.alpha=5", "--methods", "ft"), "not being run"),
    (("--shadows", "-1"), "--shadows must be a whole number from 0 to 10000"),
    (("--seeds", "0"), "--seeds must be a whole number from 1 to 10000"),
    (("--seeds", str(2**63 - 1)), "--seeds must be a whole number from 1 to 10000, got 9223372036854775807"),
    (("--draws", "0"), "--draws must be a whole number from 1 to 10000"),
    (("--methods", "ft,rl,ft"), "--methods names ft more than once"),
    (("--seeds", "2", "--seed", str(2**63 - 1)), "goes past the largest seed"),
    (("--fq-models", "1"), "--fq-models must be 0 (off) or a whole number from 2 to 10000 (models per row), got 1"),
    (("--fq-models", "-2"), "--fq-models must be 0 (off) or a whole number from 2"),
    (("--fq-models", "100000000"), "--fq-models must be 0 (off) or a whole number from 2 to 10000"),
    (("--fq-models", "3", "--seed", str(2**63 - 2)), "--fq-models 3 from --seed 9223372036854775806 goes past"),
    (("--fq-delta", "1"), "--fq-delta must be a number with 0 <= delta <= 0.05, got 1.0"),
    (("--fq-delta", "0.1"), "--fq-delta must be a number with 0 <= delta <= 0.05, got 0.1"),
    (("--fq-delta", "nan"), "--fq-delta must be a number with 0 <= delta <= 0.05, got nan"),
])
def test_bad_compare_arguments_are_refused_before_any_training(tmp_path, monkeypatch, argv, message):
    trained = refuse_training(monkeypatch)
    result = run_cli("compare", *SMALL, "--out", str(tmp_path / "out"), *argv)
    assert result.code == 1 and message in result.err, result.err
    assert "Traceback" not in result.err and trained == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def refuse_training(monkeypatch) -> list:
    """Make every way compare trains record the call and fail; returns the record."""
    import sisa.ops.train
    import sisa.research.baselines
    import sisa.research.compare

    calls = []

    def trainer(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return fail

    monkeypatch.setattr(sisa.research.compare, "train_model", trainer("train_model"))
    monkeypatch.setattr(sisa.ops.train, "train_workspace", trainer("train_workspace"))
    monkeypatch.setattr(sisa.research.baselines, "run_method", trainer("run_method"))
    return calls


def test_forget_ids_are_checked_before_any_training(tmp_path, monkeypatch):
    trained = refuse_training(monkeypatch)
    digits = load("digits")
    path = tmp_path / "ids.txt"
    path.write_text("\n".join([str(digits.train.ids[0]), "999999", "1000001", "-3"]) + "\n")
    result = run_cli("compare", *SMALL, "--forget", f"ids:{path}", "--out", str(tmp_path / "out"))
    assert result.code == 1 and trained == [], result.err
    assert "3 of 4 id(s) are neither training nor test ids (sisa delete refuses them too): 999999, 1000001, -3" \
        in result.err
    path.write_text(f"{digits.test.ids[0]}\n{digits.test.ids[1]}\n")
    result = run_cli("compare", *SMALL, "--forget", f"ids:{path}", "--out", str(tmp_path / "out"))
    assert result.code == 1 and "its 2 id(s) are all test rows: nothing to forget from training" in result.err
    workdir = tmp_path / "wd"
    (workdir / "seed-0" / "sisa-deleted").mkdir(parents=True)
    result = run_cli("compare", *SMALL, "--workdir", workdir, "--out", str(tmp_path / "out"))
    assert result.code == 1 and "seed-0/sisa-deleted exists already" in result.err and trained == []


def test_forget_ids_take_what_delete_takes(tmp_path):
    """Training ids are forgotten; test ids leave the test rows, as 'sisa delete' purges them;
    a CSV id column works as for --ids-file. A small forget set is warned about."""
    digits = load("digits")
    path = tmp_path / "forget.csv"
    ids = list(digits.train.ids[:12]) + list(digits.test.ids[:2])
    path.write_text("id,note\n" + "".join(f"{i},x\n" for i in ids))
    result = run_cli("compare", *SMALL, "--forget", f"ids:{path}", "--methods", "ft", "--shadows", "0",
                     "--draws", "2", "--out", str(tmp_path / "out"), "--json")
    assert result.code == 0, result.err
    report = result.json
    assert report["n_forget"] == 12 and report["n_test_removed"] == 2
    assert report["n_test"] == len(digits.test) - 2
    assert "2 of the ids are test rows: they leave the test rows" in result.err
    rows = {row["method"]: row for row in report["rows"]}
    assert rows["sisa-delete"]["identical"] is True and rows["sisa-delete"]["gap_own_ref"] == 0
    assert [w.split(":")[0] for w in report["warnings"]] == ["MIA accuracy", "MIA-efficacy"]


def test_forget_set_by_ids(tmp_path):
    digits = load("digits")
    path = tmp_path / "ids.txt"
    path.write_text("\ufeff" + "\r\n".join(str(i) for i in digits.train.ids[:5]) + "\r\n\r\n")
    chosen = forget_set(digits, f"ids:{path}", seed=0)
    assert chosen.mask.sum() == 5 and chosen.mask[:5].all() and chosen.n_test_removed == 0
    path.write_text(f"5\n999999\n{digits.test.ids[3]}\n")
    with pytest.raises(SisaError, match=r"1 of 3 id\(s\) are neither training nor test ids .*: 999999$"):
        forget_set(digits, f"ids:{path}", seed=0)
    chosen = forget_set(digits, "ids:-", seed=0, ids=[str(digits.train.ids[7]), str(digits.test.ids[3])])
    assert chosen.mask.sum() == 1 and np.flatnonzero(chosen.test_mask).tolist() == [3]
    with pytest.raises(SisaError, match="every training row"):
        forget_set(digits, f"random:{len(digits.train)}", seed=0)


def test_workdir_keeps_the_sisa_workspaces(tmp_path):
    workdir = tmp_path / "wd"
    result = run_cli("compare", *SMALL, "--forget", "random:20", "--methods", "none", "--shadows", "0",
                     "--draws", "1", "--workdir", workdir, "--out", str(tmp_path / "out"), "--json")
    assert result.code == 0, result.err
    assert sorted(p.name for p in workdir.iterdir()) == ["seed-0"]  # no temporary folder left
    assert sorted(p.name for p in (workdir / "seed-0").iterdir()) == ["sisa-deleted", "sisa-retrained"]
    assert result.json["workspaces"] == {"seed-0/deleted": str(workdir / "seed-0" / "sisa-deleted"),
                                         "seed-0/retrained": str(workdir / "seed-0" / "sisa-retrained")}
    audit = run_cli("audit", "--workdir", workdir / "seed-0" / "sisa-deleted", "--json")
    assert audit.code == 0 and audit.json["ok"] is True, audit.out
    history = run_cli("history", "--workdir", workdir / "seed-0" / "sisa-deleted", "--json")
    requests = [e for e in history.json["events"] if e["event"] == "request"]
    assert history.code == 0 and [r["deleted"] for r in requests] == [20], history.out


def test_forgetting_quality_over_many_models(tmp_path):
    """--fq-models 3 with --seeds 1: seed 0 makes the table and is the first of the 3 models;
    sisa after 'sisa delete' equals sisa retrained in every seed, so its F is exactly 1; the
    extra seeds' workspaces are not kept."""
    workdir = tmp_path / "wd"
    result = run_cli("compare", *SMALL, "--forget", "random:0.1", "--methods", "ft", "--shadows", "0",
                     "--draws", "1", "--fq-models", "3", "--workdir", workdir, "--out", str(tmp_path / "out"),
                     "--json")
    assert result.code == 0, result.err
    report = result.json
    rows = {row["method"]: row for row in report["rows"]}
    fq = report["forgetting_quality"]
    assert fq["models"] == 3 and fq["seeds"] == [0, 1, 2] and fq["delta"] == 1e-5 and report["seeds"] == [0]
    assert fq["sisa_identical_seeds"] == 3 and fq["sisa_identical_checkpoints"] is True
    assert fq["max_finite_epsilon"] == pytest.approx(np.log(2 - 3e-5)) and 0.35 < fq["null"] < 0.55
    assert rows["sisa-delete"]["forgetting_quality"] == 1.0 and rows["sisa-delete"]["fq"]["models"] == 3
    for name in ("original", "ft", "sisa-original"):
        assert 0 < rows[name]["forgetting_quality"] <= 1 and rows[name]["fq_score"] > 0, name
        assert sum(rows[name]["fq"]["epsilon_bins"]) == report["n_forget"]
    assert rows["ft"]["fq"]["reference"] == "retrained" and rows["sisa-original"]["fq"]["reference"] == "sisa-retrained"
    assert rows["retrained"]["forgetting_quality"] is None and rows["sisa-retrained"]["fq_score"] is None
    assert sorted(p.name for p in workdir.iterdir()) == ["seed-0"]
    assert "[fq model 3/3] sisa delete: retrained" in result.err
    text = run_cli("compare", *SMALL, "--forget", "random:0.1", "--methods", "none", "--no-sisa", "--shadows", "0",
                   "--draws", "1", "--fq-models", "2", "--out", str(tmp_path / "out"))
    assert text.code == 0, text.err
    assert "FQ F  FQ score" in text.out.splitlines()[0]
    assert "FQ with 2 models: the largest finite epsilon is 0.00" in text.out
    md = (tmp_path / "out" / "digits-random-0.1.md").read_text()
    assert "attack draws; forgetting quality over 2 models per row." in md and "| FQ F | FQ score |" in md


def test_command_line_defaults_are_the_library_ones():
    """The command line keeps copies (it imports no numpy); they must not drift."""
    import sisa.cli.compare as cli
    from sisa.research.compare import DEFAULT_DRAWS
    from sisa.research.evaluation import FQ_DELTA

    assert (cli.DEFAULT_DRAWS, cli.DEFAULT_FQ_DELTA) == (DEFAULT_DRAWS, FQ_DELTA)


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
                     "--shadows", "0", "--draws", "1", "--out", str(tmp_path), "--json")
    assert result.code == 0, result.err
    report = result.json
    assert report["command"].startswith("sisa compare --forget random:0.05 --epochs 4")
    assert report["date"].startswith("20") and report["machine"]["cpus"] >= 1
    assert [row["method"] for row in report["rows"]] == ["original", "retrained"]
    assert report["sisa_exactness"] is None and report["workspaces"] is None


def test_a_diverged_method_is_reported_not_fatal(tmp_path):
    result = run_cli("compare", "--forget", "random:0.1", *SMALL, "--methods", "neggrad,ft", "--no-sisa",
                     "--shadows", "2", "--draws", "2", "--set", "neggrad.lr=1e6", "--set", "neggrad.share=2",
                     "--out", str(tmp_path), "--json")
    assert result.code == 0, result.err
    rows = {row["method"]: row for row in result.json["rows"]}
    neggrad = rows["neggrad"]
    assert neggrad["diverged"] is True and neggrad["FA"] is None and neggrad["gap_own_ref"] is None
    assert neggrad["n"]["MIA"] == 0
    assert 0 <= rows["ft"]["FA"] <= 1 and np.isfinite(rows["ft"]["gap_own_ref"]) and 0 <= rows["ft"]["LiRA_auc"] <= 1
    text = run_cli("compare", "--forget", "random:0.1", *SMALL, "--methods", "neggrad", "--no-sisa",
                   "--shadows", "0", "--draws", "1", "--set", "neggrad.lr=1e6", "--set", "neggrad.share=2",
                   "--out", str(tmp_path))
    assert "neggrad (diverged)" in text.out


def test_chart_labels_do_not_overlap(tmp_path, monkeypatch):
    """Every text in the chart (row names, legends, axis labels) has room of its own."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from sisa.research.compare import write_chart

    rows = []
    for k, name in enumerate(["original", "retrained", "ft", "neggrad", "neggrad+", "rl", "scrub", "ssd", "salun",
                              "l1-sparse", "fisher", "amnesiac", "sisa-original", "sisa-delete", "sisa-retrained"]):
        family = "sisa" if name.startswith("sisa") else "monolithic"
        rows.append({"method": name, "family": family, "gap_own_ref": 0.01 * k, "gap_mono_retrain": 0.24,
                     "MIA": 0.5 + 0.003 * k, "MIA_null": 0.5, "speedup": 5.0 + k if k % 3 else None,
                     "sd": {"gap_own_ref": 0.01, "MIA": 0.03, "MIA_null": 0.03, "speedup": 0.5}})
    result = {"rows": rows, "data": "digits", "forget": "random:0.1", "n_forget": 144, "settings": {"model": "mlp"},
              "seeds": [0, 1], "draws": 20}
    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    assert write_chart(result, tmp_path / "chart.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = saved[0]
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [figure._suptitle]
    for ax in figure.axes:
        x0, x1 = sorted(ax.get_xlim())
        y0, y1 = sorted(ax.get_ylim())
        texts += [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]  # drawn ones
        texts += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        texts += [ax.xaxis.label, ax.title] + (ax.get_legend().get_texts() if ax.get_legend() else [])
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    assert len([b for b in boxes if b[0] == "sisa-delete"]) == 1
    overlaps = [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]
    assert overlaps == [], overlaps


def test_an_out_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    trained = refuse_training(monkeypatch)
    (tmp_path / "file").write_text("x")
    result = run_cli("compare", *SMALL, "--out", str(tmp_path / "file" / "sub"))
    assert result.code == 1 and "cannot be written" in result.err and trained == []
