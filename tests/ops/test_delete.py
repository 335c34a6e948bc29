"""Exact deletion: train then delete F must equal training without F, bit for bit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    assert_identical,
    edit_manifest,
    holdout_file,
    make_table,
    records,
    run_cli,
    shard_layout,
    tree,
    without,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sisa.data.sources import load
from sisa.ops.delete import delete
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.workspace.files import Workspace

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default
SETTINGS = Settings(shards=3, slices=4, epochs=4, batch_size=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.parquet"
    pq.write_table(make_table(n=360, features=5), path)
    return load(f"parquet:{path}")


@pytest.fixture(scope="module")
def base(tmp_path_factory, dataset):
    """One trained workspace, copied by each test that deletes from it."""
    path = tmp_path_factory.mktemp("base") / "ws"
    train_workspace(path, dataset, SETTINGS)
    return path


def copy_of(base: Path, tmp_path: Path, name: str = "ws") -> Workspace:
    shutil.copytree(base, tmp_path / name)
    return Workspace(tmp_path / name)


def choose(layout: dict, kind: str, rng: np.random.Generator) -> list[list]:
    ids = sorted(layout)
    if kind == "one":
        return [[ids[rng.integers(len(ids))]]]
    if kind == "one-shard":
        pool = [i for i in ids if layout[i][0] == 1]
        return [list(rng.choice(pool, 5, replace=False))]
    if kind == "across-shards":
        return [[next(i for i in ids if layout[i][0] == s) for s in range(SETTINGS.shards)]]
    if kind == "whole-slice":
        return [[i for i in ids if layout[i] == (2, 1)]]
    if kind == "whole-shard":
        return [[i for i in ids if layout[i][0] == 0]]
    if kind == "in-a-row":
        picks = rng.choice(ids, 9, replace=False).tolist()
        return [picks[:3], picks[3:6], picks[6:]]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["one", "one-shard", "across-shards", "whole-slice", "whole-shard", "in-a-row"])
def test_delete_equals_training_without(kind, base, dataset, tmp_path):
    ws = copy_of(base, tmp_path)
    batches = choose(shard_layout(base), kind, np.random.default_rng(0))
    for batch in batches:
        result = delete(ws, [int(i) for i in batch])
        assert sorted(result["deleted"]) == sorted(int(i) for i in batch)
    removed = {int(i) for b in batches for i in b}
    train_workspace(tmp_path / "fresh", without(dataset, removed), SETTINGS)
    assert_identical(ws.root, tmp_path / "fresh")


@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_deletion_sequences_are_exact(base, dataset, tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("prop")
    ids = sorted(shard_layout(base))
    batches = data.draw(st.lists(st.lists(st.sampled_from(ids), min_size=1, max_size=12, unique=True),
                                 min_size=1, max_size=3))
    ws = copy_of(base, tmp)
    removed = set()
    for batch in batches:
        result = delete(ws, batch)
        assert set(result["already_deleted"]) == set(batch) & removed
        removed |= set(batch)
    train_workspace(tmp / "fresh", without(dataset, removed), SETTINGS)
    assert_identical(ws.root, tmp / "fresh")


def test_only_affected_shards_and_later_slices_are_touched(base, tmp_path):
    ws = copy_of(base, tmp_path)
    layout = shard_layout(base)
    target = next(i for i in sorted(layout) if layout[i] == (1, 2))
    before = records(ws.root)
    stats = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
             for p in ws.checkpoints_dir.rglob("*.pt")}
    per_slice = [sum(1 for v in layout.values() if v == (1, r)) for r in range(SETTINGS.slices)]
    result = delete(ws, [target])
    # slices 2 and 3 retrain, on the rows of slices 0..2 (less the deleted one) and 0..3
    trained = [sum(per_slice[:3]) - 1, sum(per_slice) - 1]
    epochs = SETTINGS.slice_epochs()
    assert result["retrained"] == [{"shard": 1, "from_slice": 2, "rows": sum(per_slice) - 1, "slices": 2,
                                    "samples": sum(trained),
                                    "sample_passes": trained[0] * epochs[2] + trained[1] * epochs[3]}]
    assert result["samples_retrained"] == sum(trained) < 2 * sum(per_slice)
    after = records(ws.root)
    for key, (sha, _, *names) in before.items():
        for path in (ws.checkpoints_dir / name for name in names):  # the training state and the weights
            if key[0] == 1 and key[1] >= 2:
                assert after[key][0] != sha and not path.exists()
            else:
                assert after[key][0] == sha
                assert (path.stat().st_mtime_ns, path.stat().st_ino, path.read_bytes()) == stats[path]


def test_deleted_rows_are_purged_from_disk(base, tmp_path):
    ws = copy_of(base, tmp_path)
    layout = shard_layout(base)
    target = sorted(layout)[7]
    before = {p.name: p.read_bytes() for p in ws.shards_dir.glob("shard-*.parquet")}
    delete(ws, [target])
    assert target not in shard_layout(ws.root)
    after = {p.name: p.read_bytes() for p in ws.shards_dir.glob("shard-*.parquet")}
    assert len(after) == SETTINGS.shards * SETTINGS.slices  # one file per slice
    # only the file of the slice that held the row was rewritten; every other file is untouched
    shard, slice_ = layout[target]
    [gone] = set(before) - set(after)
    [new] = set(after) - set(before)
    assert gone.startswith(f"shard-{shard:03d}-{slice_:03d}-") and new.startswith(f"shard-{shard:03d}-{slice_:03d}-")
    assert all(after[name] == data for name, data in before.items() if name != gone)
    live = {name for (_, _, state, weights) in records(ws.root).values() for name in (state, weights)}
    on_disk = {str(p.relative_to(ws.checkpoints_dir)) for p in ws.checkpoints_dir.rglob("*.pt")}
    assert on_disk == live


def test_whole_shard_deletion_drops_the_shard_from_the_ensemble(base, tmp_path):
    ws = copy_of(base, tmp_path)
    layout = shard_layout(base)
    delete(ws, [i for i in layout if layout[i][0] == 2])
    result = run_cli("eval", "--workdir", ws.root, "--json").json
    assert result["shards_used"] == [0, 1]
    assert not [k for k in records(ws.root) if k[0] == 2]


def test_deleting_every_training_id_is_refused(base, tmp_path):
    ws = copy_of(base, tmp_path)
    before = tree(ws.root)
    ids = ",".join(str(i) for i in shard_layout(base))
    result = run_cli("delete", "--workdir", ws.root, "--ids", ids)
    assert result.code == 1 and "refusing to delete every training id" in result.err
    assert tree(ws.root) == before


# ------------------------------------------------------------------------------- CLI


def test_cli_delete_on_parquet_is_exact(tmp_path):
    table = make_table(n=300)
    pq.write_table(table, tmp_path / "all.parquet")
    flags = ("--shards", "3", "--slices", "3", "--epochs", "3")
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'all.parquet'}", "--workdir", tmp_path / "a",
                   *flags).code == 0
    test_ids = pq.read_table(holdout_file(tmp_path / "a")).column("id").to_pylist()
    train_ids = sorted(set(table.column("id").to_pylist()) - set(test_ids))
    forget = train_ids[::37]
    result = run_cli("delete", "--workdir", tmp_path / "a", "--ids", ",".join(map(str, forget)), "--json")
    assert result.code == 0, result.err
    out = result.json
    assert sorted(out["deleted"]) == forget and out["already_deleted"] == []
    assert out["samples_retrained"] == sum(r["samples"] for r in out["retrained"]) > 0
    assert {"shard", "from_slice", "samples"} <= set(out["retrained"][0]) and out["seconds"] > 0
    kept = table.filter(~np.isin(table.column("id").to_numpy(), forget))
    pq.write_table(kept, tmp_path / "kept.parquet")
    # the same held-out test rows: they are chosen by a hash of the id alone
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'kept.parquet'}", "--workdir", tmp_path / "b",
                   *flags).code == 0
    assert_identical(tmp_path / "a", tmp_path / "b")
    status = run_cli("status", "--workdir", tmp_path / "a", "--json").json
    assert status["deletions"] == {"deleted_ids": len(forget), "pending": 0}
    again = run_cli("delete", "--workdir", tmp_path / "a", "--ids", str(forget[0]), "--json")
    assert again.code == 0 and again.json["already_deleted"] == [forget[0]] and again.json["retrained"] == []
    assert run_cli("audit", "--workdir", tmp_path / "a", "--replay").code == 0


def test_dry_run_prints_the_plan_and_changes_nothing(base, tmp_path):
    ws = copy_of(base, tmp_path)
    before = tree(ws.root)
    ids = sorted(shard_layout(base))[:4]
    result = run_cli("delete", "--workdir", ws.root, "--ids", ",".join(map(str, ids)), "--dry-run", "--json")
    assert result.code == 0
    plan = result.json
    assert plan["dry_run"] and sorted(plan["deleted"]) == ids and plan["retrained"]
    assert plan["estimate_seconds"] > 0
    assert tree(ws.root) == before
    human = run_cli("delete", "--workdir", ws.root, "--ids", str(ids[0]), "--dry-run")
    assert "nothing was changed" in human.out and "from slice" in human.out


@pytest.mark.parametrize("argv, message", [
    (("--ids", "999999"), "unknown ids (not in the training data): 999999"),
    (("--ids", "12,abc"), "id 'abc' is not an integer"),
    ((), "name the ids to delete"),
    (("--ids", " , "), "no ids given"),
    (("--ids-file", "/no/such/ids.txt"), "no such file"),
])
def test_bad_delete_input_changes_nothing(base, tmp_path, argv, message):
    ws = copy_of(base, tmp_path)
    before = tree(ws.root)
    result = run_cli("delete", "--workdir", ws.root, *argv)
    assert result.code == 1 and message in result.err
    assert tree(ws.root) == before


def test_ignore_missing_deletes_the_others(base, tmp_path):
    ws = copy_of(base, tmp_path)
    known = sorted(shard_layout(base))[0]
    result = run_cli("delete", "--workdir", ws.root, "--ids", f"{known},999999", "--ignore-missing", "--json")
    assert result.code == 0 and result.json["deleted"] == [known] and result.json["missing"] == [999999]


def test_ids_file_with_bom_crlf_and_blank_lines(base, tmp_path):
    ws = copy_of(base, tmp_path)
    ids = sorted(shard_layout(base))[:3]
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(str(i).encode() for i in ids) + b"\r\n\r\n  \r\n")
    result = run_cli("delete", "--workdir", ws.root, "--ids-file", path, "--json")
    assert result.code == 0, result.err
    assert sorted(result.json["deleted"]) == ids
    csv = tmp_path / "more.csv"
    more = sorted(shard_layout(base))[3:5]
    csv.write_text("id,reason\n" + "".join(f"{i},gdpr\n" for i in more))
    assert sorted(run_cli("delete", "--workdir", ws.root, "--ids-file", csv, "--json").json["deleted"]) == more


def test_test_rows_of_a_deleted_person_are_purged_too(base, tmp_path):
    ws = copy_of(base, tmp_path)
    test_id = pq.read_table(holdout_file(ws.root)).column("id").to_pylist()[0]
    result = run_cli("delete", "--workdir", ws.root, "--ids", str(test_id), "--json")
    assert result.code == 0 and result.json["deleted_from_test"] == [test_id]
    assert result.json["retrained"] == []
    [test_file] = ws.shards_dir.glob("test*.parquet")
    assert test_id not in pq.read_table(test_file).column("id").to_pylist()
    assert run_cli("audit", "--workdir", ws.root).code == 0


# ------------------------------------------------------------------------------- audit


def test_audit_fails_on_a_tampered_checkpoint(base, tmp_path):
    ws = copy_of(base, tmp_path)
    delete(ws, [sorted(shard_layout(base))[5]])
    assert run_cli("audit", "--workdir", ws.root, "--replay").code == 0
    path = next(ws.checkpoints_dir.rglob("*.pt"))
    data = bytearray(path.read_bytes())
    data[-200] ^= 1
    path.write_bytes(bytes(data))
    result = run_cli("audit", "--workdir", ws.root, "--json")
    assert result.code == 1 and not result.json["ok"]
    assert any("does not match its sha256" in p for p in result.json["problems"])


@pytest.mark.parametrize("fix_manifest", [False, True])
def test_audit_fails_when_a_deleted_row_is_put_back(base, tmp_path, fix_manifest):
    ws = copy_of(base, tmp_path)
    original = {p.name: p.read_bytes() for p in ws.shards_dir.glob("shard-*.parquet")}
    layout = shard_layout(base)
    target = sorted(layout)[11]
    shard, slice_ = layout[target]
    delete(ws, [target])
    manifest = json.loads(ws.manifest_path.read_text())
    entry = manifest["shards"][shard]["files"][slice_]
    old_name = next(n for n in original if n.startswith(f"shard-{shard:03d}-{slice_:03d}-"))
    (ws.shards_dir / entry["file"]).write_bytes(original[old_name])  # the deleted row is back
    if fix_manifest:  # a careful tamperer also updates the recorded sha256 and the checksum
        import hashlib

        sha = hashlib.sha256(original[old_name]).hexdigest()
        edit_manifest(ws.manifest_path, lambda m: m["shards"][shard]["files"][slice_].update(sha256=sha))
    result = run_cli("audit", "--workdir", ws.root, "--replay", "--json")
    assert result.code == 1
    assert any("holds deleted ids" in p or "does not match its sha256" in p for p in result.json["problems"])
    if fix_manifest:
        assert any(f"holds deleted ids: [{target}]" in p for p in result.json["problems"])


# ------------------------------------------------------------------------------- crashes

CRASH_POINTS = ["after-ledger", "after-purge-file", "before-retrain", "mid-slice", "mid-retrain",
                "before-commit"]


@pytest.fixture(scope="module")
def crash_fresh(base, dataset, tmp_path_factory):
    layout = shard_layout(base)
    forget = [i for i in sorted(layout) if layout[i][0] in (0, 2)][::15]
    fresh = tmp_path_factory.mktemp("crash-fresh") / "ws"
    train_workspace(fresh, without(dataset, forget), SETTINGS)
    return forget, fresh


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_during_delete_is_finished_by_the_next_command(point, base, crash_fresh, tmp_path):
    forget, fresh = crash_fresh
    ws = copy_of(base, tmp_path)
    env = dict(os.environ, SISA_CRASH_AT=point)
    done = subprocess.run([sys.executable, "-m", "sisa", "delete", "--workdir", str(ws.root),
                           "--ids", ",".join(map(str, forget))], env=env, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    status = run_cli("status", "--workdir", ws.root, "--json").json
    assert status["deletions"]["pending"] == 1
    audit = run_cli("audit", "--workdir", ws.root, "--replay", "--json")  # recovers first
    assert audit.code == 0, audit.json["problems"]
    assert "finished pending deletions" in audit.err
    assert_identical(ws.root, fresh)
    again = run_cli("delete", "--workdir", ws.root, "--ids", ",".join(map(str, forget)), "--json")
    assert sorted(again.json["already_deleted"]) == sorted(forget)


def test_string_ids_and_a_numerics_warning(tmp_path):
    table = make_table(n=200, str_ids=True)
    pq.write_table(table, tmp_path / "s.parquet")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 's.parquet'}", "--workdir", ws,
                   "--shards", "2", "--slices", "2", "--epochs", "2").code == 0
    train_ids = [i for i in table.column("id").to_pylist()
                 if i not in pq.read_table(holdout_file(ws)).column("id").to_pylist()]
    result = run_cli("delete", "--workdir", ws, "--ids", f"{train_ids[0]},{train_ids[1]}", "--json")
    assert result.code == 0 and sorted(result.json["deleted"]) == sorted(train_ids[:2])
    assert "warning" not in result.err
    # "another machine": a CPU capability other than the one torch uses here, whatever that is
    # (torch spells them "DEFAULT", "AVX2", "AVX512", ...)
    current = torch.backends.cpu.get_cpu_capability()
    other = "DEFAULT" if current.upper() != "DEFAULT" else "AVX2"
    edit_manifest(ws / "checkpoints" / "manifest.json", lambda m: m["environment"].update(cpu_capability=other))
    warned = run_cli("delete", "--workdir", ws, "--ids", train_ids[2])
    assert warned.code == 0 and "warning: numerics differ" in warned.err
    refused = run_cli("audit", "--workdir", ws, "--replay", "--json")
    assert refused.code == 1 and "cannot replay bit for bit" in refused.json["problems"][0]


def test_audit_notices_ledger_rows_removed_behind_its_back(base, tmp_path):
    import sqlite3

    ws = copy_of(base, tmp_path)
    delete(ws, sorted(shard_layout(base))[:3])
    assert run_cli("audit", "--workdir", ws.root).code == 0
    db = sqlite3.connect(ws.ledger_path)
    db.execute("DELETE FROM deleted WHERE rowid = (SELECT MIN(rowid) FROM deleted)")
    db.commit()
    db.close()
    result = run_cli("audit", "--workdir", ws.root, "--json")
    assert result.code == 1 and any("changed outside sisa" in p for p in result.json["problems"])
