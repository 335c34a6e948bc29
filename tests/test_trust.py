"""Paths where a deletion could silently not happen or be undone, each closed (issue 13)."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    FAST,
    checkpoint_shas,
    copy_workspace,
    make_table,
    run_cli,
    training_ids,
    tree,
)

from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.estimator import SISAClassifier
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import InProcessExecutor
from sisa.workspace.files import Workspace


def deleted_ids(ws: Path) -> set:
    import sqlite3

    db = sqlite3.connect(ws / "shards" / "ledger.sqlite")
    try:
        return {key for (key,) in db.execute("SELECT id FROM deleted")}
    finally:
        db.close()


# -- 2. repeated --ids / --ids-file accumulate

def test_repeated_ids_flags_all_count(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    a, b, c, d, e = training_ids(ws)[:5]
    (tmp_path / "x.txt").write_text(f"{c}\n")
    (tmp_path / "y.txt").write_text(f"{d}\n")
    result = run_cli("delete", "--workdir", ws, "--ids", a, "--ids", b, "--ids-file", tmp_path / "x.txt",
                     "--ids-file", tmp_path / "y.txt", "--ids", e)
    assert result.code == 0, result.err
    assert deleted_ids(ws) == {f"i:{i}" for i in (a, b, c, d, e)}
    assert "deleted 5 of 5 id(s) asked for" in result.out
    assert not set(training_ids(ws)) & {a, b, c, d, e}


def test_the_text_output_shows_a_mismatch_between_asked_and_deleted(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    a, b = training_ids(ws)[:2]
    run_cli("delete", "--workdir", ws, "--ids", a)
    result = run_cli("delete", "--workdir", ws, "--ids", f"{a},{b}", "--ids", "999999", "--ignore-missing")
    assert result.code == 0
    assert "deleted 1 of 3 id(s) asked for" in result.out
    assert "already deleted" in result.out and "not in the training data" in result.out


# -- 3. train --force honours the ledger

def test_train_force_never_learns_deleted_rows_again(small_trained, tmp_path, small_source):
    ws = copy_workspace(small_trained, tmp_path)
    gone = training_ids(ws)[:3]
    assert run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, gone))).code == 0
    result = run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force")
    assert result.code == 0, result.err
    assert "3 rows excluded: deleted earlier" in result.out
    assert not set(training_ids(ws)) & set(gone)
    assert deleted_ids(ws) == {f"i:{i}" for i in gone}  # the ledger and its history survive
    assert run_cli("audit", "--workdir", ws, "--ids", ",".join(map(str, gone))).code == 0
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0
    status = run_cli("status", "--workdir", ws, "--json").json
    assert status["deletions"]["deleted_ids"] == 3
    # deleting them again is a no-op, not an error
    again = run_cli("delete", "--workdir", ws, "--ids", str(gone[0]), "--json").json
    assert again["already_deleted"] == [gone[0]] and again["deleted"] == []


def test_train_force_equals_training_without_the_deleted_rows(small_trained, tmp_path, small_source):
    ws = copy_workspace(small_trained, tmp_path)
    gone = training_ids(ws)[:4]
    run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, gone)))
    run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force")
    table = pq.read_table(small_source)
    keep = ~np.isin(np.asarray(table.column("id").to_pylist()), gone)
    pq.write_table(table.filter(keep), tmp_path / "without.parquet")
    fresh = tmp_path / "fresh"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'without.parquet'}", "--workdir", fresh, *FAST).code == 0
    assert checkpoint_shas(ws) == checkpoint_shas(fresh)


def test_only_an_explicit_flag_discards_the_ledger(small_trained, tmp_path, small_source):
    ws = copy_workspace(small_trained, tmp_path)
    gone = training_ids(ws)[:2]
    run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, gone)))
    refused = run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--discard-deletions")
    assert refused.code == 1 and "only applies with --force" in refused.err
    result = run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force",
                     "--discard-deletions")
    assert result.code == 0 and "trained on again" in result.out
    assert set(gone) <= set(training_ids(ws))
    assert not (ws / "shards" / "ledger.sqlite").exists()


def test_the_python_api_honours_the_ledger_on_refit(tmp_path):
    X = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    y = np.arange(120) % 2
    clf = SISAClassifier(tmp_path / "ws", shards=2, slices=2, epochs=1).fit(X, y)
    clf.delete([0, 1, 2])
    clf.fit(X, y, force=True)
    assert clf.summary_["excluded_deleted"] == 3
    assert not {0, 1, 2} & set(training_ids(tmp_path / "ws"))


# -- 5. --json failures print one object on stdout

@pytest.mark.parametrize("argv, code", [
    (["delete", "--ids", "nope"], 1),
    (["delete", "--bogus"], 2),
    (["status"], 1),
    (["audit", "--ids", "x"], 1),
    (["train", "--data", "nonsense"], 1),
    (["eval"], 1),
])
def test_json_failures_print_one_object_on_stdout(tmp_path, small_trained, argv, code):
    ws = tmp_path / "empty" if argv[0] in ("status", "eval") else small_trained
    result = run_cli(*argv, "--workdir", ws, "--json")
    assert result.code == code
    obj = json.loads(result.out)
    assert obj["ok"] is False and obj["exit_code"] == code and obj["error"]
    assert result.err  # the human line stays on stderr


def test_json_success_says_ok(small_trained):
    assert run_cli("status", "--workdir", small_trained, "--json").json["ok"] is True


# -- 6. a Ray worker that writes its checkpoints where the driver cannot see them

class ElsewhereExecutor:
    """Runs each job against another copy of the workspace folder, as a Ray worker without
    shared storage (but with its own copy of the folder) would."""

    def __init__(self, other: Path) -> None:
        self.other = other

    def run(self, jobs, progress=None):
        for job in jobs:
            target = self.other / Path(job.workdir).name
            if not target.exists():
                shutil.copytree(job.workdir, target)
            yield from InProcessExecutor().run([dataclasses.replace(job, workdir=str(target))], progress)


def test_checkpoints_the_driver_cannot_see_are_never_committed(tmp_path, small_source):
    dataset = load(f"parquet:{small_source}")
    with pytest.raises(SisaError, match="nothing was committed.*shared storage"):
        train_workspace(tmp_path / "ws", dataset, Settings(shards=2, slices=2, epochs=1),
                        executor=ElsewhereExecutor(tmp_path / "elsewhere"))
    assert not (tmp_path / "ws" / "shards" / "manifest.json").exists()
    assert not list((tmp_path / "ws").glob(".sisa-staging-*"))


def test_a_deletion_retrained_elsewhere_is_not_committed(small_trained, tmp_path):
    from sisa.ops.delete import delete

    ws = copy_workspace(small_trained, tmp_path)
    with pytest.raises(SisaError, match="nothing was committed"):
        delete(Workspace(ws), training_ids(ws)[:1], executor=ElsewhereExecutor(tmp_path / "elsewhere"))
    records = json.loads((ws / "checkpoints" / "manifest.json").read_text())["checkpoints"]
    assert all((ws / "checkpoints" / r["file"]).is_file() for r in records)  # no record of a file not here
    status = run_cli("status", "--workdir", ws, "--json").json
    assert status["deletions"]["pending"] == 1  # the request stays open: the next command finishes it
    assert run_cli("recover", "--workdir", ws).code == 0
    assert run_cli("audit", "--workdir", ws).code == 0


# -- 7. the Python API refuses what the CLI refuses

@pytest.mark.parametrize("X, y, message", [
    (np.r_[np.full((1, 3), np.nan), np.ones((39, 3))], np.arange(40) % 2, "NaN or infinite"),
    (np.r_[np.full((1, 3), np.inf), np.ones((39, 3))], np.arange(40) % 2, "NaN or infinite"),
    (np.full((40, 3), 3.4e39), np.arange(40) % 2, "float32"),
    (np.ones((40, 3)), np.linspace(0, 1, 40), "non-integer"),
    (np.ones((40, 3)), np.r_[np.inf, np.zeros(39)], "infinite labels"),
    (np.ones((40, 3)), np.r_[1e30, np.zeros(39)], "beyond 2\\^53"),
    (np.ones(40), np.arange(40) % 2, "2-D"),
])
def test_fit_refuses_bad_arrays_with_a_value_error(tmp_path, X, y, message):
    with pytest.raises(ValueError, match=message):
        SISAClassifier(tmp_path / "ws", shards=2, slices=1, epochs=1).fit(X, y)
    assert not (tmp_path / "ws" / "shards" / "manifest.json").exists()


def test_sisa_error_is_a_value_error():
    assert issubclass(SisaError, ValueError)


# -- 8. smaller things that misled

def test_audit_names_ids_never_requested(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    never = training_ids(ws)[0]
    result = run_cli("audit", "--workdir", ws, "--ids", never, "--json")
    assert result.code == 1
    assert "never requested for deletion" in result.json["problems"][0]
    assert not any("holds deleted ids" in p for p in result.json["problems"])


def test_help_states_the_per_dataset_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    result = run_cli("train", "--help")
    assert "fashion-mnist 5" in result.out and "fashion-mnist 0.003" in result.out
    assert "cifar10 10" in result.out
    from sisa.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"sisa {name} {action.option_strings[0]} has no help text"


def test_test_data_sharing_ids_with_training_rows_is_refused(tmp_path, table_file):
    train = table_file("train.parquet", n=120)
    test = table_file("test.parquet", n=40)  # the same ids 1000..1039
    ws = tmp_path / "ws"
    before = tree(tmp_path)
    result = run_cli("train", "--data", f"parquet:{train}", "--test-data", f"parquet:{test}", "--workdir", ws,
                     *FAST)
    assert result.code == 1 and "40 of the 40 test rows share ids with training rows" in result.err
    assert tree(tmp_path) == before


def test_test_ids_of_another_kind_are_refused(tmp_path, table_file):
    train = table_file("train.parquet", n=120, str_ids=True)
    test = table_file("test.parquet", n=40)
    result = run_cli("train", "--data", f"parquet:{train}", "--test-data", f"parquet:{test}",
                     "--workdir", tmp_path / "ws", *FAST)
    assert result.code == 1 and "the test data's ids are integers but the training data's are text" in result.err


def test_builtin_test_rows_have_ids_of_their_own():
    digits = load("digits")
    assert not set(digits.train.ids.tolist()) & set(digits.test.ids.tolist())


def test_train_force_over_a_pending_deletion_completes_it(small_trained, tmp_path, small_source):
    from sisa.workspace.ledger import Ledger

    ws = copy_workspace(small_trained, tmp_path)
    gone = training_ids(ws)[0]
    with Ledger(ws / "shards" / "ledger.sqlite") as ledger:  # recorded, then the process died
        ledger.add_request([(f"i:{gone}", 0, 0)])
    result = run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force")
    assert result.code == 0, result.err
    assert gone not in training_ids(ws)
    assert run_cli("status", "--workdir", ws, "--json").json["deletions"] == {"deleted_ids": 1, "pending": 0}
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0


def test_a_source_whose_ids_now_load_as_text_brings_no_one_back(tmp_path):
    """Deleted as the integer 7; the new source has a text id, so every id loads as text."""
    import pyarrow as pa

    table = make_table(n=120)
    pq.write_table(table, tmp_path / "a.parquet")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'a.parquet'}", "--workdir", ws, *FAST).code == 0
    gone = training_ids(ws)[:2]
    assert run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, gone))).code == 0
    as_text = table.set_column(0, "id", pa.array([str(i) for i in table.column("id").to_pylist()]))
    pq.write_table(as_text, tmp_path / "b.parquet")
    result = run_cli("train", "--data", f"parquet:{tmp_path / 'b.parquet'}", "--workdir", ws, *FAST, "--force")
    assert result.code == 0 and "2 rows excluded: deleted earlier" in result.out
    assert not {str(i) for i in gone} & set(map(str, training_ids(ws)))
    assert run_cli("audit", "--workdir", ws).code == 0


def test_a_held_out_row_deleted_before_train_force_keeps_the_audit_passing(small_trained, tmp_path, small_source):
    from conftest import holdout_file

    ws = copy_workspace(small_trained, tmp_path)
    held = pq.read_table(holdout_file(ws)).column("id").to_pylist()[0]
    assert run_cli("delete", "--workdir", ws, "--ids", held).code == 0
    assert run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force").code == 0
    assert held not in pq.read_table(holdout_file(ws)).column("id").to_pylist()
    assert run_cli("audit", "--workdir", ws).code == 0


def test_discard_deletions_drops_the_ledger_even_beside_a_lost_manifest(small_trained, tmp_path, small_source):
    ws = copy_workspace(small_trained, tmp_path)
    gone = training_ids(ws)[0]
    run_cli("delete", "--workdir", ws, "--ids", gone)
    (ws / "shards" / "manifest.json").rename(tmp_path / "lost.json")
    result = run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force",
                     "--discard-deletions")
    assert result.code == 0, result.err
    assert not (ws / "shards" / "ledger.sqlite").exists() and gone in training_ids(ws)
    assert run_cli("audit", "--workdir", ws).code == 0


def test_train_force_leaves_no_stale_file_of_the_old_workspace(small_trained, tmp_path, small_source):
    ws = copy_workspace(small_trained, tmp_path)
    stale = ws / "shards" / "shard-000-0123456789ab.parquet"  # as a crash between purge steps leaves
    stale.write_bytes(next((ws / "shards").glob("shard-000-*.parquet")).read_bytes())
    assert run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, "--force",
                   "--epochs", "3").code == 0
    assert not stale.exists()
    assert run_cli("audit", "--workdir", ws).code == 0
