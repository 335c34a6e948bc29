"""The ``sisa`` command line: each subcommand's flags, output formats and errors."""

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    FAST,
    checkpoint_shas,
    copy_workspace,
    deleted_ids,
    edit_manifest,
    make_table,
    run_cli,
    training_ids,
    tree,
)


@pytest.mark.numerics
def test_default_train_on_digits_is_accurate_and_fast(tmp_path):
    """The README's main job: `sisa train` with no flags."""
    started = time.perf_counter()
    result = run_cli("train", "--workdir", tmp_path, "--json")
    seconds = time.perf_counter() - started
    assert result.code == 0, result.err
    summary = result.json
    assert summary["accuracy"] >= 0.95
    assert seconds < 60
    assert summary["shards"] == 5 and len(summary["shard_accuracy"]) == 5
    assert summary["seconds"] > 0
    lines = [line for line in result.err.splitlines() if line.startswith("shard ")]
    assert len(lines) == 5 * 4 and "samples" in lines[0]


def test_human_summary(tmp_path):
    result = run_cli("train", "--workdir", tmp_path, *FAST)
    assert result.code == 0
    assert "test accuracy" in result.out and "trained 3 shards x 2 slices" in result.out


def test_train_refuses_an_existing_workspace_unless_forced(tmp_path):
    assert run_cli("train", "--workdir", tmp_path, *FAST).code == 0
    before = tree(tmp_path)
    again = run_cli("train", "--workdir", tmp_path, *FAST, "--seed", "3")
    assert again.code == 1 and "already holds a sisa workspace" in again.err and "--force" in again.err
    assert tree(tmp_path) == before
    forced = run_cli("train", "--workdir", tmp_path, "--epochs", "1", "--shards", "2", "--slices", "1",
                     "--force")
    assert forced.code == 0
    shas = checkpoint_shas(tmp_path)
    assert sorted(shas) == [(0, 0), (1, 0)]
    files = sorted(p.name for p in (tmp_path / "checkpoints").rglob("*.pt"))
    assert len(files) == 4, "the old workspace's checkpoints are gone"  # a state and a weights file each


def test_status_reports_every_checkpoint(tmp_path):
    run_cli("train", "--workdir", tmp_path, *FAST)
    status = run_cli("status", "--workdir", tmp_path, "--json")
    assert status.code == 0
    s = status.json
    assert s["shards"] == 3 and s["slices"] == 2 and s["n_train"] > 1000 and s["ok"]
    assert len(s["checkpoints"]) == 6
    assert all(c["ok"] and len(c["sha256"]) == 64 for c in s["checkpoints"])
    assert {(c["shard"], c["slice"]) for c in s["checkpoints"]} == {(i, j) for i in range(3) for j in range(2)}
    assert sum(s["samples_per_shard"]) == s["n_train"]
    assert s["environment_differences"] == []
    human = run_cli("status", "--workdir", tmp_path)
    assert "all 6 checkpoints and 6 shard files match" in human.out  # one file per shard and slice and "note:" not in human.out
    manifest_path = tmp_path / "checkpoints" / "manifest.json"
    edit_manifest(manifest_path, lambda m: m["environment"].update(torch="1.0.0"))
    moved = run_cli("status", "--workdir", tmp_path, "--json").json
    assert moved["environment_differences"][0].startswith("torch: trained under '1.0.0'")


def test_status_reports_a_flipped_byte_and_predict_refuses_it(tmp_path):
    run_cli("train", "--workdir", tmp_path, *FAST)
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    target = next(r for r in manifest["checkpoints"] if r["shard"] == 2 and r["slice"] == 1)
    path = tmp_path / "checkpoints" / target["weights"]  # the file eval and predict read
    data = bytearray(path.read_bytes())
    data[100] ^= 0x40
    path.write_bytes(bytes(data))
    status = run_cli("status", "--workdir", tmp_path, "--json")
    assert status.code == 1
    bad = [c for c in status.json["checkpoints"] if not c["ok"]]
    assert [(c["shard"], c["slice"], c["problem"]) for c in bad] == [(2, 1, f"{target['weights']}: sha256 mismatch")]
    human = run_cli("status", "--workdir", tmp_path)
    assert "DAMAGED checkpoint shard 2 slice 1" in human.out
    for command in (("eval",), ("predict", "--input", "digits")):
        refused = run_cli(*command, "--workdir", tmp_path)
        assert refused.code == 1 and "does not match its recorded sha256" in refused.err


@pytest.mark.numerics
def test_eval_json(tmp_path):
    train = run_cli("train", "--workdir", tmp_path, *FAST, "--json")
    result = run_cli("eval", "--workdir", tmp_path, "--json")
    assert result.code == 0
    assert result.json["accuracy"] == pytest.approx(train.json["accuracy"])
    assert len(result.json["shard_accuracy"]) == 3
    assert 0.5 < result.json["accuracy"] <= 1


@pytest.mark.numerics
@pytest.mark.parametrize("aggregation", ["mean-proba", "vote", "size-weighted"])
def test_each_aggregator_through_the_cli(tmp_path, aggregation):
    result = run_cli("train", "--workdir", tmp_path, *FAST, "--aggregation", aggregation, "--json")
    assert result.code == 0 and result.json["aggregation"] == aggregation
    assert result.json["accuracy"] > 0.5


def test_predict_tables_in_every_output_format(tmp_path, table_file):
    data = table_file("train.parquet", n=300)
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{data}", "--workdir", ws, *FAST).code == 0
    new = make_table(n=20, seed=0).drop(["id", "label"])  # no id or label: rows are numbered
    pq.write_table(new, tmp_path / "new.parquet")
    refused = run_cli("predict", "--workdir", ws, "--input", f"parquet:{tmp_path / 'new.parquet'}")
    assert refused.code == 1 and "no id column 'id'" in refused.err and not refused.out
    out = run_cli("predict", "--workdir", ws, "--input", f"parquet:{tmp_path / 'new.parquet'}", "--json", "--no-ids")
    assert out.code == 0
    result = out.json
    assert result["ids"] == list(range(20)) and len(result["labels"]) == 20
    assert np.allclose(np.sum(result["probabilities"], axis=1), 1, atol=1e-5)
    assert set(result["labels"]) <= {0, 1, 2}
    csv = run_cli("predict", "--workdir", ws, "--input", tmp_path / "new.parquet", "--no-ids")
    assert csv.out.splitlines()[0] == '"id","label","proba_0","proba_1","proba_2"'
    for suffix in ("csv", "parquet", "json"):
        target = tmp_path / f"pred.{suffix}"
        done = run_cli("predict", "--workdir", ws, "--input", tmp_path / "new.parquet", "--output", target,
                       "--no-ids")
        assert done.code == 0 and target.exists() and "wrote 20 predictions" in done.err
    assert pq.read_table(tmp_path / "pred.parquet").column("label").to_pylist() == result["labels"]
    missing = make_table(n=5).drop(["f3"])
    pq.write_table(missing, tmp_path / "missing.parquet")
    bad = run_cli("predict", "--workdir", ws, "--input", tmp_path / "missing.parquet")
    assert bad.code == 1 and "missing feature columns 'f3'" in bad.err


def test_predict_on_a_builtin_dataset_matches_eval(tmp_path):
    run_cli("train", "--workdir", tmp_path, *FAST)
    pred = run_cli("predict", "--workdir", tmp_path, "--input", "digits", "--json").json
    assert len(pred["labels"]) == json.loads((tmp_path / "shards" / "manifest.json").read_text())["data"]["n_test"]


def test_shuffled_parquet_rows_give_identical_checkpoints(tmp_path):
    table = make_table(n=300)
    pq.write_table(table, tmp_path / "a.parquet")
    perm = np.random.default_rng(0).permutation(300)
    pq.write_table(table.take(perm), tmp_path / "b.parquet")
    for name in ("a", "b"):
        result = run_cli("train", "--data", f"parquet:{tmp_path / (name + '.parquet')}",
                         "--workdir", tmp_path / f"ws-{name}", *FAST)
        assert result.code == 0, result.err
    a, b = checkpoint_shas(tmp_path / "ws-a"), checkpoint_shas(tmp_path / "ws-b")
    assert len(a) == 6 and a == b
    files_a = sorted((tmp_path / "ws-a" / "shards").glob("shard-*.parquet"))
    files_b = sorted((tmp_path / "ws-b" / "shards").glob("shard-*.parquet"))
    assert [f.name for f in files_a] == [f.name for f in files_b] and len(files_a) == 6
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files_a, files_b))


def test_shard_files_hold_id_shard_slice_label_features(tmp_path, table_file):
    data = table_file("d.csv", n=200, str_ids=True)
    run_cli("train", "--data", f"csv:{data}", "--workdir", tmp_path / "ws", *FAST)
    for slice_ in range(2):
        [path] = (tmp_path / "ws" / "shards").glob(f"shard-001-{slice_:03d}-*.parquet")
        table = pq.read_table(path)
        assert table.column_names == ["id", "shard", "slice", "label", "features"]
        assert set(table.column("shard").to_pylist()) == {1} and set(table.column("slice").to_pylist()) == {slice_}
    assert all(i.startswith("user-") for i in table.column("id").to_pylist())
    assert len(table.column("features")[0]) == 6


@pytest.mark.parametrize("content, flags, message", [
    ("id,label,x\n1,0,1\n1,1,2\n", (), "duplicate ids"),
    ("id,label,x\n1,0,1\n,1,2\n", (), "missing values"),
    ("id,x\n1,1\n2,2\n", (), "no label column 'label'"),
    ("id,label,x\n1,0,1\n2,1,oops\n", (), "not numeric"),
    ("id,label,x\n1,0,1\n2,1,nan\n", ("--shards", "1", "--slices", "1"), "NaN"),
    # found while the rows are written (features are streamed), still before anything is kept
    ("id,label,x\n" + "".join(f"{i},{i % 2},{i}\n" for i in range(40)) + "40,0,inf\n", (), "NaN"),
    ("id,label,x\n" + "".join(f"{i},{i % 2},{i}\n" for i in range(6)), ("--shards", "50"),
     "more shards than samples"),
    ("id,label,x\n" + "".join(f"{i},{i % 2},{i}\n" for i in range(40)), ("--shards", "2", "--slices", "30"),
     "more slices than samples in a shard"),
    ("id,label,x\n" + "".join(f"{i},{i % 2},{i}\n" for i in range(40)), ("--model", "cnn"),
     "needs image data"),
    ("id,label,x\n" + "".join(f"{i},{i % 2},{i}\n" for i in range(40)), ("--model", "transformer"),
     "unknown model 'transformer'"),
])
def test_bad_input_fails_cleanly_and_leaves_the_workspace_alone(tmp_path, content, flags, message):
    ws = tmp_path / "ws"
    (ws / "shards").mkdir(parents=True)
    (ws / "shards" / "README.md").write_text("user file\n")
    before = tree(ws)
    path = tmp_path / "bad.csv"
    path.write_text(content)
    result = run_cli("train", "--data", f"csv:{path}", "--workdir", ws, "--epochs", "1", *flags)
    assert result.code == 1
    assert message in result.err and "Traceback" not in result.err
    assert tree(ws) == before


@pytest.mark.parametrize("argv, message", [
    (("train", "--data", "imagenet"), "unknown dataset 'imagenet'"),
    (("train", "--data", "csv:/no/such/file.csv"), "no such file"),
    (("train", "--shards", "0"), "shards must be a positive integer"),
    pytest.param(("train", "--device", "cuda"), "torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
    (("status",), "no sisa workspace"),
    (("eval",), "no sisa workspace"),
])
def test_usage_errors(tmp_path, argv, message):
    result = run_cli(*argv, "--workdir", tmp_path / "empty")
    assert result.code == 1 and message in result.err
    assert not (tmp_path / "empty" / "shards" / "manifest.json").exists()


def test_unknown_flag_is_a_usage_error(tmp_path):
    assert run_cli("train", "--colour", "red").code == 2


def test_a_hand_edited_manifest_is_detected(tmp_path):
    run_cli("train", "--workdir", tmp_path, *FAST)
    path = tmp_path / "shards" / "manifest.json"
    path.write_text(path.read_text().replace('"aggregation": "mean-proba"', '"aggregation": "vote"'))
    for command in (("status",), ("eval",), ("predict", "--input", "digits"), ("audit",)):
        result = run_cli(*command, "--workdir", tmp_path)
        assert result.code == 1 and "was edited or damaged" in result.err, command


def test_the_environment_is_read_when_a_command_runs_and_passed_on(monkeypatch):
    from sisa.cli import build_parser
    from sisa.cli.base import Environment

    monkeypatch.setenv("SISA_EXECUTOR", "ray")
    args = build_parser().parse_args(["delete", "--ids", "1"])
    assert args.executor is None  # the parser reads no environment: main() does, once
    env = Environment.from_mapping({"SISA_EXECUTOR": "local", "SISA_LOCK_TIMEOUT": "5", "HOME": "/"})
    assert env.to_mapping() == {"SISA_EXECUTOR": "local", "SISA_LOCK_TIMEOUT": "5"}  # what a client forwards
    assert env.default_executor() == "local" and env.lock_seconds() == 5.0
    assert Environment().default_executor() == "auto" and Environment().lock_seconds() == 600.0


def test_every_subcommand_has_its_own_module():
    from sisa.cli.app import commands

    modules = [type(command).__module__ for command in commands()]
    assert len(set(modules)) == len(modules) == 16
    assert all(module == f"sisa.cli.{command.name.replace('eval', 'evaluate')}"
               for module, command in zip(modules, commands()))


# -- repeated --ids / --ids-file accumulate; --json failures are one object on stdout (issue 13)

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
    assert obj["error"].removeprefix("sisa: ") in result.err  # the human line stays on stderr


def test_json_success_says_ok(small_trained):
    assert run_cli("status", "--workdir", small_trained, "--json").json["ok"] is True


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


@pytest.mark.parametrize("argv, flag", [
    (("train", "--shards", "2", "--shards", "8"), "--shards"),
    (("delete", "--ids", "3", "--workdir", "a", "--workdir", "b"), "--workdir"),
    (("revert", "--to", "1", "--to", "3"), "--to"),
    (("add", "--data", "csv:a.csv", "--data", "csv:b.csv"), "--data"),
])
def test_an_option_given_twice_is_refused_not_silently_overridden(tmp_path, argv, flag):
    result = run_cli(*argv, "--json")
    assert result.code == 2 and f"{flag} given twice" in result.err
    assert result.json["ok"] is False and "given twice" in result.json["error"]


def test_repeatable_options_still_add_up(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    ids = training_ids(ws)[:2]
    result = run_cli("delete", "--workdir", ws, "--ids", ids[0], "--ids", ids[1], "--json")
    assert result.code == 0 and sorted(result.json["deleted"]) == sorted(ids)


def test_predict_names_its_columns_as_the_training_data_did(tmp_path):
    table = make_table(n=200).rename_columns(["user", "y", *[f"f{j}" for j in range(6)]])
    pq.write_table(table, tmp_path / "train.parquet")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'train.parquet'}", "--id-col", "user",
                   "--label-col", "y", "--workdir", ws, *FAST).code == 0
    pq.write_table(table.slice(0, 5).drop(["y"]), tmp_path / "new.parquet")
    out = run_cli("predict", "--workdir", ws, "--input", tmp_path / "new.parquet")
    assert out.code == 0 and out.out.splitlines()[0] == '"user","y","proba_0","proba_1","proba_2"'
    assert out.out.splitlines()[1].startswith("1000,")
    pq.write_table(table.slice(0, 5).drop(["user", "y"]), tmp_path / "anon.parquet")
    refused = run_cli("predict", "--workdir", ws, "--input", tmp_path / "anon.parquet")
    assert refused.code == 1 and "no id column 'user'" in refused.err and "--no-ids" in refused.err


def test_predict_reads_standard_input(tmp_path, table_file, monkeypatch):
    import io
    import sys

    import pyarrow.csv as pcsv

    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{table_file('train.parquet', n=300)}", "--workdir", ws, *FAST).code == 0
    new = make_table(n=7, seed=1).drop(["label"])
    pcsv.write_csv(new, tmp_path / "new.csv")
    pq.write_table(new, tmp_path / "new.parquet")
    from_file = run_cli("predict", "--workdir", ws, "--input", tmp_path / "new.csv", "--json").json
    assert len(from_file["ids"]) == 7
    for spec, name in (("-", "new.csv"), ("parquet:-", "new.parquet")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((tmp_path / name).read_bytes())))
        assert run_cli("predict", "--workdir", ws, "--input", spec, "--json").json == from_file
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    empty = run_cli("predict", "--workdir", ws, "--input", "-")
    assert empty.code == 1 and "Traceback" not in empty.err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"secret-row-1,2,3" * 10)))
    garbage = run_cli("predict", "--workdir", ws, "--input", "parquet:-")
    assert garbage.code == 1 and "standard input" in garbage.err and "secret-row" not in garbage.err
