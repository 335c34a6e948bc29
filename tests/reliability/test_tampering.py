"""Damaged or tampered files are detected by status, predict and audit, and repair fixes them."""

import io
import json
import pickle
from pathlib import Path

import pytest
from helpers import edit_manifest, run_cli

from sisa.workspace.files import sha256_bytes


def checkpoints(ws: Path) -> list[dict]:
    return json.loads((ws / "checkpoints" / "manifest.json").read_text())["checkpoints"]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped byte": flip_byte,
    "truncated": truncate,
    "deleted": Path.unlink,
}


def assert_detected(ws: Path, fragment: str, *, read_by_predict: bool = True) -> None:
    """status and audit find the damage; predict (which reads only the weights file) refuses
    damaged weights, and predicts from intact weights whatever happened to the training state."""
    status = run_cli("status", "--workdir", ws, "--json")
    assert status.code == 1 and not status.json["ok"]
    predict = run_cli("predict", "--workdir", ws, "--input", ws / "probe.parquet")
    if read_by_predict:
        assert predict.code == 1 and fragment in predict.err and "Traceback" not in predict.err
    else:
        assert predict.code == 0, predict.err
    audit = run_cli("audit", "--workdir", ws, "--json")
    assert audit.code == 1 and audit.json["problems"]


@pytest.fixture
def probe(ws, source):
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(source).slice(0, 10).drop(["label"]), ws / "probe.parquet")
    return ws / "probe.parquet"


@pytest.mark.parametrize("part", ["weights", "file"])
@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_final_checkpoint_is_detected_and_repaired(ws, probe, how, part):
    before = {(r["shard"], r["slice"]): r["sha256"] for r in checkpoints(ws)}
    target = next(r for r in checkpoints(ws) if r["shard"] == 1 and r["slice"] == 2)
    DAMAGE[how](ws / "checkpoints" / target[part])
    fragment = "cannot read checkpoint" if how == "deleted" else "does not match its recorded sha256"
    assert_detected(ws, fragment, read_by_predict=part == "weights")
    repaired = run_cli("repair", "--workdir", ws, "--json")
    assert repaired.code == 0, repaired.out + repaired.err
    assert any("shard 1" in a for a in repaired.json["actions"])
    after = {(r["shard"], r["slice"]): r["sha256"] for r in checkpoints(ws)}
    assert after == before, "retraining from the last good checkpoint gives the same bits"
    assert run_cli("status", "--workdir", ws).code == 0
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0


@pytest.mark.parametrize("how", ["flipped byte", "truncated"])
def test_a_damaged_shard_file_is_detected_and_rebuilt_from_the_source(ws, probe, source, how):
    manifest = json.loads((ws / "shards" / "manifest.json").read_text())
    entry = manifest["shards"][2]["files"][1]  # shard 2's file of slice 1
    DAMAGE[how](ws / "shards" / entry["file"])
    status = run_cli("status", "--workdir", ws, "--json")
    assert status.code == 1 and [f["file"] for f in status.json["shard_files"] if not f["ok"]] == [entry["file"]]
    audit = run_cli("audit", "--workdir", ws, "--json")
    assert audit.code == 1 and any(entry["file"] in p for p in audit.json["problems"])
    without = run_cli("repair", "--workdir", ws)
    assert without.code == 1 and "pass --data" in without.err
    repaired = run_cli("repair", "--workdir", ws, "--data", f"parquet:{source}", "--json")
    assert repaired.code == 0, repaired.out + repaired.err
    assert any("byte for byte" in a for a in repaired.json["actions"])
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0


def test_a_lost_checkpoints_manifest_is_rebuilt(ws, probe):
    before = {(r["shard"], r["slice"]): r["sha256"] for r in checkpoints(ws)}
    (ws / "checkpoints" / "manifest.json").write_text("{ not json")
    for command in (("status",), ("eval",)):
        result = run_cli(*command, "--workdir", ws)
        assert result.code == 1 and "cannot read" in result.err
    repaired = run_cli("repair", "--workdir", ws, "--json")
    assert repaired.code == 0, repaired.err
    assert {(r["shard"], r["slice"]): r["sha256"] for r in checkpoints(ws)} == before
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0


@pytest.mark.parametrize("which, field", [("shards/manifest.json", '"rows": '),
                                          ("checkpoints/manifest.json", '"samples": ')])
def test_an_edited_manifest_is_refused(ws, which, field):
    path = ws / which
    text = path.read_text()
    assert field in text
    path.write_text(text.replace(field, field + "1", 1))
    for command in (("status",), ("eval",), ("audit",), ("delete", "--ids", "1000")):
        result = run_cli(*command, "--workdir", ws)
        assert result.code == 1 and "was edited or damaged" in result.err, command


@pytest.mark.parametrize("part", ["weights", "file"])
def test_a_pickle_planted_as_a_checkpoint_never_runs(ws, probe, tmp_path, part):
    import zipfile

    import torch

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    target = next(r for r in checkpoints(ws) if r["shard"] == 0 and r["slice"] == 2)
    path = ws / "checkpoints" / target[part]
    honest = io.BytesIO()
    torch.save({"x": 1}, honest)
    evil = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(honest.getvalue())) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, pickle.dumps({"model": Payload()}) if item.filename.endswith("data.pkl")
                         else src.read(item))
    path.write_bytes(evil.getvalue())
    # a careful attacker also records the new sha256 and re-seals the manifest
    sha = sha256_bytes(evil.getvalue())
    edit_manifest(ws / "checkpoints" / "manifest.json",
                  lambda m: next(r for r in m["checkpoints"] if r["file"] == target["file"]).update(
                      {"sha256" if part == "file" else "weights_sha256": sha}))
    for command in (("predict", "--input", probe), ("eval",)):
        result = run_cli(*command, "--workdir", ws)
        if part == "weights":
            assert result.code == 1 and "refusing to load checkpoint" in result.err, command
        else:  # the weights, which the training state names, are intact: only they are read
            assert result.code == 0, command
    assert not marker.exists()
    audit = run_cli("audit", "--workdir", ws, "--json")
    # weights with a re-sealed sha256 are still not those the (intact) training state names
    expected = "does not name the weights its record names" if part == "weights" else "refusing to load checkpoint"
    assert audit.code == 1 and any(expected in p for p in audit.json["problems"]), audit.json["problems"]
    assert not marker.exists()


def test_slice_files_reordered_in_a_resealed_manifest_are_refused(ws, probe):
    def swap(m):  # and the counts too, as a careful tamperer would
        files = m["shards"][0]["files"]
        files[1], files[2] = files[2], files[1]
        m["shards"][0]["slice_rows"] = [n for f in files for n in f["slice_rows"]]

    import pyarrow.parquet as pq

    first = json.loads((ws / "shards" / "manifest.json").read_text())["shards"][0]["files"][0]["file"]
    in_shard_0 = pq.read_table(ws / "shards" / first, columns=["id"]).column("id")[0].as_py()
    edit_manifest(ws / "shards" / "manifest.json", swap)  # edit_manifest re-seals the checksum
    deleted = run_cli("delete", "--workdir", ws, "--ids", str(in_shard_0))
    assert deleted.code == 1 and "does not hold the rows of slice(s)" in deleted.err
    assert "Traceback" not in deleted.err
    assert run_cli("status", "--workdir", ws, "--json").json["deletions"]["pending"] == 0  # nothing recorded
    audit = run_cli("audit", "--workdir", ws, "--json")
    assert audit.code == 1 and any("does not hold the rows of slice(s)" in p for p in audit.json["problems"])
    repaired = run_cli("repair", "--workdir", ws)
    assert repaired.code == 1 and "does not hold the rows of slice(s)" in repaired.err  # never a wrong model
