"""A user's own files, interrupted replacements, stray copies and bad input (issue 14)."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    FAST,
    FAST_SHAPE,
    checkpoint_shas,
    copy_workspace,
    edit_manifest,
    holdout_file,
    make_table,
    run_cli,
    training_ids,
    tree,
)

from sisa.workspace.files import Workspace
from sisa.workspace.rows import rows_to_parquet

# -- 1. sisa never removes a file it did not write

def test_train_and_delete_keep_the_users_own_files(tmp_path, small_source):
    ws = tmp_path / "ws"
    mine = {"shards/shard-000.parquet": small_source.read_bytes(), "shards/test-holdout.parquet": b"holdout",
            "shards/users.parquet": small_source.read_bytes(), "checkpoints/shard-experiment-7/best.pt": b"weights",
            "checkpoints/shard-001/notes.txt": b"notes", "shards/README.md": b"readme"}
    for name, data in mine.items():
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_bytes(data)
    assert run_cli("train", "--data", f"parquet:{ws / 'shards' / 'shard-000.parquet'}", "--workdir", ws,
                   *FAST).code == 0
    ids = training_ids(ws)
    assert run_cli("delete", "--workdir", ws, "--ids", ids[0]).code == 0
    assert run_cli("train", "--data", f"parquet:{ws / 'shards' / 'users.parquet'}", "--workdir", ws, *FAST,
                   "--force").code == 0
    assert run_cli("delete", "--workdir", ws, "--ids", ids[1]).code == 0
    assert run_cli("repair", "--workdir", ws).code == 0
    for name, data in mine.items():
        assert (ws / name).read_bytes() == data, name
    assert run_cli("audit", "--workdir", ws).code == 0


# -- 2. an interrupted train --force keeps the old workspace and its ledger

def test_an_interrupted_force_keeps_the_old_workspace(small_trained, tmp_path, small_source, monkeypatch):
    ws = copy_workspace(small_trained, tmp_path)
    run_cli("delete", "--workdir", ws, "--ids", training_ids(ws)[0])
    before = tree(ws)
    import sisa.ops.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sisa.ops.train, "swap_in", interrupted)
    result = run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST_SHAPE, "--epochs", "3", "--force")
    assert result.code == 130
    assert tree(ws) == before  # old workspace, ledger and all; no staging folder left
    assert run_cli("audit", "--workdir", ws).code == 0


def test_a_crash_during_the_swap_is_finished_by_the_next_command(small_trained, tmp_path, small_source, monkeypatch):
    ws = copy_workspace(small_trained, tmp_path)
    gone = training_ids(ws)[0]
    run_cli("delete", "--workdir", ws, "--ids", gone)
    import sisa.workspace.staging

    real = sisa.workspace.staging.finish_swap
    calls = {"n": 0}

    def crash_once(workspace):
        calls["n"] += 1
        if calls["n"] == 1 and sisa.workspace.staging.swap_path(workspace).exists():
            raise KeyboardInterrupt  # the swap record is written, nothing moved yet
        return real(workspace)

    monkeypatch.setattr(sisa.workspace.staging, "finish_swap", crash_once)
    assert run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST_SHAPE, "--epochs", "3",
                   "--force").code == 130
    status = run_cli("status", "--workdir", ws)
    assert status.code == 1 and "sisa recover" in status.err
    monkeypatch.setattr(sisa.workspace.staging, "finish_swap", real)
    assert run_cli("recover", "--workdir", ws).code == 0
    fresh = tmp_path / "fresh"
    table = pq.read_table(small_source)
    pq.write_table(table.filter(pa.array(np.asarray(table.column("id").to_pylist()) != gone)), tmp_path / "w.parquet")
    run_cli("train", "--data", f"parquet:{tmp_path / 'w.parquet'}", "--workdir", fresh, *FAST_SHAPE, "--epochs", "3")
    assert checkpoint_shas(ws) == checkpoint_shas(fresh)
    assert not list(ws.glob(".sisa-*"))
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0


# -- 3. predictions never overwrite the workspace

@pytest.mark.parametrize("target", ["shards/manifest.json", "checkpoints/manifest.json", "shards/x.csv"])
def test_predict_output_inside_the_workspace_is_refused(small_trained, tmp_path, small_source, target):
    ws = copy_workspace(small_trained, tmp_path)
    before = tree(ws)
    result = run_cli("predict", "--workdir", ws, "--input", f"parquet:{small_source}", "--output", ws / target)
    assert result.code == 1 and "somewhere else" in result.err
    assert tree(ws) == before


# -- 4. an id in the training rows and the test rows is gone from both

def test_an_id_in_training_and_test_rows_is_purged_from_both(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    workspace = Workspace(ws)
    manifest = workspace.manifest()
    shared = training_ids(ws)[0]
    test = pq.read_table(holdout_file(ws))
    ids = np.asarray(test.column("id").to_pylist()[:-1] + [shared], dtype=np.int64)
    X = np.asarray(test.column("features").to_pylist(), dtype=np.float32)
    name, sha = workspace.write_versioned("test", rows_to_parquet(ids, None, None,
                                                                  np.asarray(test.column("label")), X))
    old = manifest.test.file
    edit_manifest(workspace.manifest_path, lambda m: m["test"].update(file=name, sha256=sha))
    (ws / "shards" / old).unlink()
    result = run_cli("delete", "--workdir", ws, "--ids", shared, "--json")
    assert result.code == 0 and result.json["deleted_from_test"] == [shared]
    assert shared not in pq.read_table(holdout_file(ws)).column("id").to_pylist()
    assert shared not in training_ids(ws)
    assert run_cli("audit", "--workdir", ws).code == 0


# -- 5. repair refuses a changed source

def test_repair_refuses_a_source_with_other_rows(small_trained, tmp_path, small_source):
    ws = copy_workspace(small_trained, tmp_path)
    [shard_file] = [ws / "shards" / e.parts[1].file for e in Workspace(ws).manifest().shards[:1]]
    shard_file.write_bytes(b"damaged")
    grown = pa.concat_tables([pq.read_table(small_source), make_table(n=40, features=5, seed=3).set_column(
        0, "id", pa.array(list(range(5000, 5040))))])
    pq.write_table(grown, tmp_path / "grown.parquet")
    result = run_cli("repair", "--workdir", ws, "--data", f"parquet:{tmp_path / 'grown.parquet'}")
    assert result.code == 1 and "does not hold the rows the workspace was trained on" in result.err
    ok = run_cli("repair", "--workdir", ws, "--data", f"parquet:{small_source}")
    assert ok.code == 0, ok.err + ok.out


# -- 10. no copy of a shard outlives a command

def test_replay_writes_no_file_anywhere(small_trained, tmp_path, monkeypatch):
    ws = copy_workspace(small_trained, tmp_path)
    run_cli("delete", "--workdir", ws, "--ids", training_ids(ws)[0])
    import sisa.ops.audit
    from sisa.workspace.carried import CarriedFiles

    seen = []
    real = sisa.ops.audit.run_carried

    def spy(jobs, files):
        assert isinstance(files, CarriedFiles)  # the shard's rows in memory, not a copy on disk
        result = real(jobs, files)
        seen.append(len(files.written))
        return result

    monkeypatch.setattr(sisa.ops.audit, "run_carried", spy)
    def files():  # the ledger's reader leaves SQLite's shared-memory files, which hold no rows
        return {name: data for name, data in tree(ws).items() if "ledger.sqlite-" not in name}

    before = files()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0
    assert seen and all(seen)  # every shard replayed, its checkpoints kept in memory
    assert files() == before and not list((tmp_path / "tmp").iterdir())


def test_a_left_replay_folder_is_reported_and_removed(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    left = ws / ".sisa-replay-abc123"
    (left / "shards").mkdir(parents=True)
    shutil.copy(next((ws / "shards").glob("shard-*.parquet")), left / "shards")
    from sisa.ops.audit import audit

    result = audit(Workspace(ws))  # the check itself, without the clean-up every command runs first
    assert not result["ok"] and any("interrupted command" in p for p in result["problems"])
    assert run_cli("audit", "--workdir", ws).code == 0 and not left.exists()
    left.mkdir()
    assert run_cli("recover", "--workdir", ws).code == 0 and not left.exists()


# -- 11. values checked in the type they are trained in

def _csv(tmp_path, text):
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("label", ["inf", "-inf", "1e30", "nan"])
def test_labels_that_are_not_classes_are_refused(tmp_path, label):
    rows = "".join(f"{i},{i % 2}.0,{i}\n" for i in range(1, 40))
    path = _csv(tmp_path, f"id,label,x\n0,{label},0\n{rows}")
    result = run_cli("train", "--data", f"csv:{path}", "--workdir", tmp_path / "ws", "--shards", "2", "--slices", "1")
    assert result.code == 1 and "label" in result.err and "Traceback" not in result.err


def test_a_feature_beyond_float32_is_refused(tmp_path):
    rows = "".join(f"{i},{i % 2},{i}\n" for i in range(1, 40))
    path = _csv(tmp_path, f"id,label,x\n0,1,3.4e39\n{rows}")
    result = run_cli("train", "--data", f"csv:{path}", "--workdir", tmp_path / "ws", "--shards", "2", "--slices", "1")
    assert result.code == 1 and "float32" in result.err


def test_uint64_ids_beyond_int64_are_refused(tmp_path):
    table = make_table(n=40).set_column(0, "id", pa.array(np.arange(2**63, 2**63 + 40, dtype=np.uint64)))
    pq.write_table(table, tmp_path / "u.parquet")
    result = run_cli("train", "--data", f"parquet:{tmp_path / 'u.parquet'}", "--workdir", tmp_path / "ws",
                     "--shards", "2", "--slices", "1")
    assert result.code == 1 and "2^63" in result.err


# -- 12. one-line errors instead of tracebacks

def test_bad_ids_give_one_line_errors(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    huge = "1" * 5000
    (tmp_path / "ids.txt").write_text(huge + "\n")
    for argv in (["delete", "--ids", huge], ["delete", "--ids-file", tmp_path / "ids.txt"],
                 ["audit", "--ids", huge]):
        result = run_cli(*argv, "--workdir", ws)
        assert result.code == 1 and "outside the 64-bit" in result.err and "Traceback" not in result.err
    rows = "".join(f"{i},{i % 2},{i}\n" for i in range(40))
    path = _csv(tmp_path, f"id,label,x\n{huge},1,0\n{rows}")
    result = run_cli("train", "--data", f"csv:{path}", "--workdir", tmp_path / "w2", "--shards", "2", "--slices", "1")
    assert result.code == 0, result.err  # a 5,000-digit id is text, not an integer


def test_non_utf8_ids_on_a_text_workspace(tmp_path):
    pq.write_table(make_table(n=120, str_ids=True), tmp_path / "s.parquet")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 's.parquet'}", "--workdir", ws, *FAST).code == 0
    bad = b"\xff".decode("utf-8", "surrogateescape")
    result = run_cli("delete", "--workdir", ws, "--ids", bad)
    assert result.code == 1 and "not valid UTF-8" in result.err


def test_a_csv_with_a_doubled_column_name(tmp_path):
    rows = "".join(f"{i},{i % 2},{i},{i}\n" for i in range(40))
    path = _csv(tmp_path, f"id,label,x,x\n{rows}")
    result = run_cli("train", "--data", f"csv:{path}", "--workdir", tmp_path / "ws", "--shards", "2", "--slices", "1")
    assert result.code == 1 and "appear more than once" in result.err


@pytest.mark.parametrize("flag, value, message", [("--seed", "1" + "0" * 50, "seed must be"),
                                                   ("--slices", "1000000000000000", "slices must be at most"),
                                                   ("--shards", "100000", "more shards than samples")])
def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path, flag, value, message):
    result = run_cli("train", "--workdir", tmp_path / "ws", flag, value)
    assert result.code == 1 and message in result.err


def test_a_full_disk_during_the_ledger_commit(small_trained, tmp_path, monkeypatch):
    from sisa.workspace.ledger import Ledger

    ws = copy_workspace(small_trained, tmp_path)
    before = tree(ws)

    def full(self, *args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Ledger, "_add_request", full)
    result = run_cli("delete", "--workdir", ws, "--ids", training_ids(ws)[0])
    assert result.code == 1 and "disk is full" in result.err and "nothing was deleted" in result.err
    assert "Traceback" not in result.err
    after = tree(ws)
    after.pop("shards/ledger.sqlite", None)
    before.pop("shards/ledger.sqlite", None)
    assert after == before


# -- 13. read-only commands never write

def test_read_only_commands_work_on_a_read_only_mount(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    assert run_cli("delete", "--workdir", ws, "--ids", training_ids(ws)[0]).code == 0
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {tmp_path} {tmp_path} && "
                            f"mount -o remount,bind,ro {tmp_path}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here (unshare -m, mount): {probe.stderr.decode()[:200]}")
    script = (f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path} && "
              + " && ".join(f"{sys.executable} -m sisa {c} --workdir {ws}" for c in ("status", "eval", "audit")))
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, SISA_EXECUTOR="local"))
    assert result.returncode == 0, result.stderr
    assert "audit passed" in result.stdout and "ledger" not in result.stderr


# -- 14. smaller things

def test_the_checkpoint_refusal_never_suggests_unpickling(small_trained, tmp_path):
    import pickle

    ws = copy_workspace(small_trained, tmp_path)
    records = json.loads((ws / "checkpoints" / "manifest.json").read_text())["checkpoints"]
    target = ws / "checkpoints" / records[0]["file"]
    target.write_bytes(pickle.dumps({"x": Path("/")}))
    from sisa.workspace.files import sha256_file

    edit_manifest(ws / "checkpoints" / "manifest.json",
                  lambda m: m["checkpoints"][0].update(sha256=sha256_file(target)))
    result = run_cli("audit", "--workdir", ws, "--json")
    assert result.code == 1 and not any("weights_only=False" in p for p in result.json["problems"])
    repaired = run_cli("repair", "--workdir", ws)
    assert repaired.code == 0 and "nothing needed repair" not in repaired.out
    assert "cannot be loaded" in repaired.out


def test_a_long_id_list_is_summarised(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    ids = ",".join(str(i) for i in range(900000, 900500))
    result = run_cli("delete", "--workdir", ws, "--ids", ids, "--ignore-missing", "--dry-run")
    assert result.code == 0 and "and 490 more (500 in all)" in result.out and len(result.out) < 1000
