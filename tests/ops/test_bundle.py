"""Inference bundles (``sisa export``): the ensemble without its rows, predicting the same numbers."""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import holdout_file, make_table, run_cli, training_ids, tree

import sisa
from sisa.errors import SisaError
from sisa.ops.bundle import check_bundle, export_bundle, load_bundle
from sisa.ops.delete import delete
from sisa.ops.ensemble import Ensemble
from sisa.ops.history import locate
from sisa.training.executors import InProcessExecutor
from sisa.workspace.files import Workspace, json_checksum

TINY = ("--shards", "2", "--slices", "2", "--epochs", "1", "--executor", "local")
WEIGHTS = ["shard-000.pt", "shard-001.pt"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Rows with string ids and their own id and label column names, so that a bundle that
    kept any id, or lost the column names, shows."""
    table = make_table(n=160, features=4, str_ids=True).rename_columns(["user", "y", "f0", "f1", "f2", "f3"])
    path = tmp_path_factory.mktemp("bundle-source") / "rows.parquet"
    pq.write_table(table, path)
    pq.write_table(table.slice(0, 12).drop(["y"]), path.parent / "new.parquet")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, source) -> Path:
    """A tiny trained workspace; copy it (:func:`fresh`) before changing it."""
    ws = tmp_path_factory.mktemp("bundle-ws") / "ws"
    result = run_cli("train", "--data", f"parquet:{source}", "--id-col", "user", "--label-col", "y",
                     "--workdir", ws, *TINY)
    assert result.code == 0, result.err
    return ws


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    """The bundle of :func:`trained`, exported once; copy it before changing it."""
    out = tmp_path_factory.mktemp("bundle-out") / "bundle"
    export_bundle(Workspace(trained), out)
    return out


def fresh(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "ws")
    return tmp_path / "ws"


def rows_of(ws: Path) -> np.ndarray:
    return Ensemble(Workspace(ws)).test_rows().X


@pytest.mark.numerics
def test_a_bundle_predicts_the_ensembles_numbers(trained, bundle):
    ensemble, loaded = Ensemble(Workspace(trained)), load_bundle(bundle)
    X = rows_of(trained)
    assert np.array_equal(loaded.predict_proba(X), ensemble.predict_proba(X))
    assert np.array_equal(loaded.predict_proba(X.reshape(len(X), -1)), ensemble.predict_proba(X))
    assert loaded.predict(X).tolist() == [ensemble.classes[i] for i in ensemble.predict_proba(X).argmax(1)]
    assert loaded.classes_.tolist() == [0, 1, 2] and loaded.n_features_in_ == 4
    assert loaded.settings == ensemble.settings and loaded.source["id_col"] == "user"
    assert loaded.position["version"] == 1 and loaded.position["requests"] == 0
    assert [c["shard"] for c in loaded.position["checkpoints"]] == [0, 1]
    with pytest.raises(SisaError, match=r"rows have shape \(3,\), but the model was trained on \(4,\)"):
        loaded.predict_proba(X[:, :3])  # the same check as the ensemble's
    assert sisa.load_bundle is load_bundle and "load_bundle" in sisa.__all__


@pytest.mark.numerics
def test_a_bundle_weighs_shards_as_the_workspace_does(source, tmp_path):
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{source}", "--id-col", "user", "--label-col", "y", "--workdir", ws,
                   *TINY, "--aggregation", "size-weighted").code == 0
    export_bundle(Workspace(ws), tmp_path / "b")
    ensemble, loaded = Ensemble(Workspace(ws)), load_bundle(tmp_path / "b")
    assert loaded.sizes == ensemble.shard_sizes() and len(set(loaded.sizes)) == 2  # the weights differ
    X = rows_of(ws)
    assert np.array_equal(loaded.predict_proba(X), ensemble.predict_proba(X))


@pytest.mark.numerics
def test_predict_from_a_bundle_prints_what_the_workspace_prints(trained, bundle, source, tmp_path):
    new = source.parent / "new.parquet"
    for extra in ((), ("--json",)):
        from_ws = run_cli("predict", "--workdir", trained, "--input", new, *extra)
        from_bundle = run_cli("predict", "--bundle", bundle, "--input", new, *extra)
        assert from_ws.code == 0 and from_bundle.code == 0, from_bundle.err
        assert from_bundle.out == from_ws.out
    assert from_ws.json["ids"][0] == "user-0000"
    header = run_cli("predict", "--bundle", bundle, "--input", new).out.splitlines()[0]
    assert header == '"user","y","proba_0","proba_1","proba_2"'
    elsewhere = run_cli("predict", "--bundle", bundle, "--input", new, "--workdir", tmp_path / "nothing-here")
    assert elsewhere.code == 0 and "is not read" in elsewhere.err and not (tmp_path / "nothing-here").exists()
    inside = run_cli("predict", "--bundle", bundle, "--input", new, "--output", bundle / "p.csv")
    assert inside.code == 1 and "inside the bundle" in inside.err and not (bundle / "p.csv").exists()


def test_a_bundle_holds_weights_and_its_description_only(trained, bundle):
    assert sorted(os.listdir(bundle)) == ["bundle.json"] + WEIGHTS
    text = (bundle / "bundle.json").read_text()
    assert "user-0" not in text  # no training id, nor a row's features or label
    meta = json.loads(text)
    assert meta["format"] == "sisa-bundle/1" and meta["sisa_version"] == sisa.__version__
    assert meta["data"]["source"]["label_col"] == "y" and meta["data"]["feature_names"] == ["f0", "f1", "f2", "f3"]
    ensemble = Ensemble(Workspace(trained))
    assert [m["rows"] for m in meta["models"]] == ensemble.shard_sizes()
    workspace = Workspace(trained)
    for record, name in zip(ensemble.final_records(), WEIGHTS):
        state = torch.load(bundle / name, weights_only=True)
        expected = workspace.load_weights(record)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert meta["position"]["checkpoints"][0]["weights_sha256"] == ensemble.final_records()[0].weights_sha256


def test_a_changed_file_or_description_is_refused(bundle, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(bundle, tmp_path / name))

    flipped = copy("flipped")
    data = bytearray((flipped / "shard-001.pt").read_bytes())
    data[200] ^= 0x01
    (flipped / "shard-001.pt").write_bytes(bytes(data))
    with pytest.raises(SisaError, match=r"shard-001\.pt does not match the sha256"):
        load_bundle(flipped)
    refused = run_cli("predict", "--bundle", flipped, "--input", "digits")
    assert refused.code == 1 and "shard-001.pt" in refused.err

    missing = copy("missing")
    (missing / "shard-000.pt").unlink()
    with pytest.raises(SisaError, match=r"shard-000\.pt is missing"):
        load_bundle(missing)

    edited = copy("edited")
    meta = json.loads((edited / "bundle.json").read_text())
    meta["settings"]["aggregation"] = "vote"
    (edited / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(SisaError, match="was edited or damaged"):
        load_bundle(edited)

    def resealed(name: str, change) -> Path:
        folder = copy(name)
        meta = json.loads((folder / "bundle.json").read_text())
        change(meta)
        (folder / "bundle.json").write_text(json.dumps(dict(meta, checksum=json_checksum(meta))))
        return folder

    swapped = resealed("swapped", lambda m: m["models"][0].update(file="shard-001.pt"))
    with pytest.raises(SisaError, match=r"shard-001\.pt does not match the sha256"):
        load_bundle(swapped)
    escaped = resealed("escaped", lambda m: m["models"][0].update(file="../bundle/shard-000.pt"))
    with pytest.raises(SisaError, match="names a file outside the bundle"):
        load_bundle(escaped)
    malformed = resealed("malformed", lambda m: m.pop("position"))
    with pytest.raises(SisaError, match="bundle.json is malformed"):
        load_bundle(malformed)
    newer = resealed("newer", lambda m: m.update(format="sisa-bundle/9"))
    with pytest.raises(SisaError, match="in format sisa-bundle/9.*this sisa reads sisa-bundle/1"):
        load_bundle(newer)
    with pytest.raises(SisaError, match="not a sisa bundle: it has no bundle.json"):
        load_bundle(tmp_path)


def test_export_replaces_only_a_bundle_and_only_when_forced(trained, tmp_path):
    workspace = Workspace(trained)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    before = tree(mine)
    for force in (False, True):
        with pytest.raises(SisaError, match="already exists and is not a sisa bundle"):
            export_bundle(workspace, mine, force=force)
        assert tree(mine) == before
    out = tmp_path / "out"
    export_bundle(workspace, out)
    with pytest.raises(SisaError, match="already holds a sisa bundle; export with --force"):
        export_bundle(workspace, out)
    assert export_bundle(workspace, out, force=True)["shards"] == [0, 1]
    (out / "predictions.csv").write_text("kept")
    with pytest.raises(SisaError, match=r"holds files a bundle does not \(predictions.csv\)"):
        export_bundle(workspace, out, force=True)
    assert (out / "predictions.csv").read_text() == "kept"
    for inside in (trained / "shards" / "b", trained / "checkpoints", trained):
        with pytest.raises(SisaError, match="workspace"):
            export_bundle(workspace, inside)
    assert not (trained / "shards" / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no staging folder left behind


@pytest.mark.numerics
def test_a_deletion_makes_the_bundle_stale_and_a_new_export_holds_the_retrained_model(trained, bundle, tmp_path):
    ws = fresh(trained, tmp_path)
    assert run_cli("export", "--workdir", ws, "--check", bundle).code == 0
    forget = training_ids(ws)[0]
    assert run_cli("delete", "--workdir", ws, "--ids", forget).code == 0
    stale = run_cli("export", "--workdir", ws, "--check", bundle)
    report = run_cli("export", "--workdir", ws, "--check", bundle, "--json")
    assert stale.code == 1 and report.code == 1
    changed = report.json["changed"]
    assert len(changed) == 1 and f"changed shard(s) {changed[0]}" in stale.out and "STALE" in stale.out
    assert report.json["ok"] is False and report.json["newer_requests"] == 1 and report.json["current"] is False
    again = tmp_path / "again"
    done = run_cli("export", "--workdir", ws, "--output", again, "--json")
    assert done.code == 0 and done.json["requests"] == 1
    X = rows_of(ws)
    assert np.array_equal(load_bundle(again).predict_proba(X), Ensemble(Workspace(ws)).predict_proba(X))
    records = Ensemble(Workspace(ws)).final_records()
    assert [c["sha256"] for c in load_bundle(again).position["checkpoints"]] == [r.sha256 for r in records]
    assert run_cli("export", "--workdir", ws, "--check", again).code == 0


def test_deleting_an_id_no_exported_model_saw_leaves_the_bundle_current(trained, bundle, tmp_path):
    ws = fresh(trained, tmp_path)
    test_only = pq.read_table(holdout_file(ws), columns=["id"]).column("id").to_pylist()[0]
    assert run_cli("delete", "--workdir", ws, "--ids", test_only).code == 0
    report = check_bundle(Workspace(ws), bundle)
    assert report["current"] and report["changed"] == [] and report["newer_requests"] == 1
    assert (report["bundle_requests"], report["workspace_requests"]) == (0, 1)
    human = run_cli("export", "--workdir", ws, "--check", bundle)
    assert human.code == 0 and "1 deletion request(s) since the export" in human.out


def test_a_pending_deletion_is_never_exported(trained, bundle, tmp_path, monkeypatch):
    ws = fresh(trained, tmp_path)
    monkeypatch.setenv("SISA_CRASH_AT", "raise-in-slice")
    with pytest.raises(Exception):
        delete(Workspace(ws), training_ids(ws)[:1], executor=InProcessExecutor())
    monkeypatch.delenv("SISA_CRASH_AT")
    with pytest.raises(SisaError, match="not yet committed.*sisa recover"):
        export_bundle(Workspace(ws), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = check_bundle(Workspace(ws), bundle)  # the shard waiting for retraining has no model now
    assert not report["current"] and len(report["removed"]) == 1 and report["pending_requests"] == 1
    done = run_cli("export", "--workdir", ws, "--output", tmp_path / "out")  # finishes the deletion first
    assert done.code == 0 and "finished pending deletions first" in done.err
    assert check_bundle(Workspace(ws), tmp_path / "out")["current"]


def test_export_json_and_usage(trained, tmp_path):
    result = run_cli("export", "--workdir", trained, "--output", tmp_path / "b", "--json")
    assert result.code == 0, result.err
    summary = result.json
    assert summary["ok"] and summary["shards"] == [0, 1] and summary["files"] == ["bundle.json"] + WEIGHTS
    assert summary["version"] == 1 and summary["requests"] == 0 and summary["bytes"] > 0
    check = run_cli("export", "--workdir", trained, "--check", tmp_path / "b", "--json").json
    assert check["ok"] and check["current"] and check["changed"] == check["added"] == check["removed"] == []
    assert run_cli("export", "--workdir", trained).code == 2  # --output or --check is required
    both = run_cli("export", "--workdir", trained, "--output", tmp_path / "c", "--check", tmp_path / "b", "--json")
    assert both.code == 2 and both.json["ok"] is False
    again = run_cli("export", "--workdir", trained, "--output", tmp_path / "b", "--json")
    assert again.code == 1 and "--force" in again.json["error"]


@pytest.mark.numerics
def test_torchscript_models_give_the_shard_probabilities(trained, tmp_path):
    out = tmp_path / "b"
    assert run_cli("export", "--workdir", trained, "--output", out, "--torchscript").code == 0
    loaded = load_bundle(out)
    X = rows_of(trained)
    expected = loaded.shard_probas(X)
    for j, shard in enumerate(loaded.shards):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates TorchScript
            scripted = torch.jit.load(out / f"shard-{shard:03d}.torchscript.pt")
        with torch.no_grad():
            assert np.allclose(scripted(torch.from_numpy(np.array(X))).numpy(), expected[j], rtol=0, atol=1e-12)


OWN_MODEL = '''from torch import nn


def tiny(shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0], 8), nn.Tanh(), nn.Linear(8, n_classes))
'''


def test_a_bundle_of_a_model_of_ones_own_runs_only_the_code_it_was_trained_with(source, tmp_path, monkeypatch):
    (tmp_path / "bundle_test_nets.py").write_text(OWN_MODEL)  # a name no other test imports
    monkeypatch.syspath_prepend(str(tmp_path))
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{source}", "--id-col", "user", "--label-col", "y", "--workdir", ws,
                   "--model", "bundle_test_nets:tiny", *TINY).code == 0
    export_bundle(Workspace(ws), tmp_path / "b")
    X = rows_of(ws)
    assert load_bundle(tmp_path / "b").predict_proba(X).shape == (len(X), 3)
    (tmp_path / "bundle_test_nets.py").write_text(OWN_MODEL + "# changed\n")
    with pytest.raises(SisaError, match="changed since.*export a new bundle from a workspace trained with this code"):
        load_bundle(tmp_path / "b")


# -- what a review that tried to break it found

def test_check_reads_the_weights_files_not_only_the_description(trained, bundle, tmp_path):
    ws = fresh(trained, tmp_path)
    swapped = tmp_path / "swapped"
    shutil.copytree(bundle, swapped)
    a, b = (swapped / name for name in WEIGHTS)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    result = run_cli("export", "--workdir", ws, "--check", swapped)
    assert result.code == 1 and "does not match the sha256" in result.err
    # old weights with a description edited to match them (the checksum is no signature)
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    forget = training_ids(ws)[0]
    assert run_cli("delete", "--workdir", ws, "--ids", forget).code == 0
    new = tmp_path / "new"
    export_bundle(Workspace(ws), new)
    meta = json.loads((new / "bundle.json").read_text())
    meta.pop("checksum")
    meta["models"] = json.loads((old / "bundle.json").read_text())["models"]  # the old files' sha256s
    (old / "bundle.json").write_text(json.dumps(dict(meta, checksum=json_checksum(meta))))
    report = check_bundle(Workspace(ws), old)
    assert not report["current"] and len(report["changed"]) == 1


def test_check_of_a_workspace_with_every_shard_pending_reports_stale(trained, bundle, tmp_path, monkeypatch):
    ws = fresh(trained, tmp_path)
    shards = {entry["shard"]: entry["id"] for entry in locate(Workspace(ws), training_ids(ws))}
    monkeypatch.setenv("SISA_CRASH_AT", "raise-in-slice")
    with pytest.raises(SisaError, match="injected failure"):  # one id of each shard: both wait for retraining
        delete(Workspace(ws), list(shards.values()), executor=InProcessExecutor())
    monkeypatch.delenv("SISA_CRASH_AT")
    result = run_cli("export", "--workdir", ws, "--check", bundle, "--json")
    assert result.code == 1 and result.json["removed"] == [0, 1] and result.json["exit_code"] == 1
    assert "STALE" in result.json["error"]


def test_no_output_inside_a_workspace_or_a_bundle(trained, bundle, source, tmp_path):
    other = fresh(trained, tmp_path)
    before = tree(other)
    for target in (other / "shards" / "manifest.json", other / "checkpoints" / "x.csv", bundle / "p.csv"):
        result = run_cli("predict", "--bundle", bundle, "--input", f"parquet:{source.parent / 'new.parquet'}",
                         "--output", target)
        assert result.code == 1 and ("inside a workspace" in result.err or "inside the bundle" in result.err)
    assert tree(other) == before
    nested = run_cli("export", "--workdir", trained, "--output", bundle / "inner")
    assert nested.code == 1 and "inside the bundle" in nested.err and not (bundle / "inner").exists()


def test_a_tables_columns_are_taken_by_name(trained, bundle, source):
    pd = pytest.importorskip("pandas")
    frame = pq.read_table(source.parent / "new.parquet").to_pandas().drop(columns=["user"])
    loaded = load_bundle(bundle)
    assert np.array_equal(loaded.predict_proba(frame[["f3", "f1", "f0", "f2"]]), loaded.predict_proba(frame))
    with pytest.raises(SisaError, match="lack feature column\\(s\\) f2"):
        loaded.predict_proba(frame.drop(columns=["f2"]))
    assert pd is not None
