"""``sisa train``: retraining over a workspace (--force) never brings a deleted row back, and
test data that would score a training row as unseen is refused (issue 13)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from helpers import (
    FAST,
    FAST_SHAPE,
    checkpoint_shas,
    copy_workspace,
    deleted_ids,
    holdout_file,
    make_table,
    run_cli,
    training_ids,
    tree,
)

from sisa.workspace.files import Workspace
from sisa.workspace.ledger import Ledger

# -- train --force honours the ledger

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


def test_train_force_over_a_pending_deletion_completes_it(small_trained, tmp_path, small_source):
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
    assert run_cli("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST_SHAPE, "--force",
                   "--epochs", "3").code == 0
    assert not stale.exists()
    assert run_cli("audit", "--workdir", ws).code == 0


# -- test data never shares an id with training rows

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


def test_train_force_without_data_retrains_the_workspace_as_recorded(tmp_path, table_file):
    source = table_file("rows.parquet", n=150)
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{source}", "--workdir", ws, "--shards", "3", "--slices", "2",
                   "--epochs", "2", "--model", "logreg", "--seed", "5", "--test-fraction", "0.3").code == 0
    gone = training_ids(ws)[:2]
    assert run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, gone))).code == 0
    after_delete = checkpoint_shas(ws)
    again = run_cli("train", "--workdir", ws, "--force")
    assert again.code == 0 and "retraining as recorded" in again.err
    assert checkpoint_shas(ws) == after_delete  # the same data, settings and ledger: the same bits
    manifest = Workspace(ws).manifest()
    assert manifest.settings.seed == 5 and manifest.data.source_value("test_fraction") == 0.3
    changed = run_cli("train", "--workdir", ws, "--force", "--epochs", "3", "--json")
    assert changed.code == 0 and Workspace(ws).manifest().settings.replace(epochs=2) == manifest.settings
    fresh = run_cli("train", "--workdir", ws, "--force", "--data", f"parquet:{source}")
    assert fresh.code == 0 and Workspace(ws).manifest().settings.shards == 5  # --data: a new training


def test_evaluation_in_batches_equals_scoring_the_whole_test_set(small_trained):
    from sisa.aggregation import aggregate
    from sisa.ops.ensemble import Ensemble

    ensemble = Ensemble(Workspace(small_trained))
    rows = ensemble.test_rows()
    probas = ensemble.shard_probas(rows.X)  # the reference: every row at once
    sizes = [ensemble.shard_sizes()[r.shard] for r in ensemble.final_records()]
    expected = aggregate(ensemble.settings.aggregation, probas, sizes).argmax(1) == rows.label
    assert len(rows.label) > 7
    for batch_rows in (1, 7, 10**6):
        result = ensemble.evaluate(batch_rows=batch_rows)
        assert result["n_test"] == len(rows.label)
        assert result["accuracy"] == float(np.mean(expected))
        assert result["shard_accuracy"] == [float(np.mean(p.argmax(1) == rows.label)) for p in probas]


def test_train_shows_the_slice_plan_and_warns_of_slices_smaller_than_a_batch(tmp_path, table_file):
    import json

    path = table_file()
    small = run_cli("train", "--data", f"parquet:{path}", "--workdir", tmp_path / "small",
                    "--shards", "10", "--slices", "4", "--epochs", "1", "--batch-size", "16")
    assert small.code == 0
    assert "plan: 10 shards x 4 slices; rows of each slice" in small.err
    assert "smaller than one batch (16 rows)" in small.err and "use fewer slices" in small.err
    fine = run_cli("train", "--data", f"parquet:{path}", "--workdir", tmp_path / "fine", "--json",
                   "--shards", "2", "--slices", "2", "--epochs", "1", "--batch-size", "8")
    plan = json.loads(fine.out)["plan"]
    assert plan["small"] is None and "warning" not in fine.err
    assert plan["epochs"] == [1, 1] and len(plan["slice_rows_min"]) == 2
    assert min(plan["slice_rows_min"]) >= 8 and plan["trained_rows_mean"][1] > plan["trained_rows_mean"][0]
