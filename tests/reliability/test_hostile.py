"""Hostile or malformed input: a clear error or a correct result, never a traceback or a
changed workspace on error."""

import pytest
from helpers import run_cli, tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00garbage\n", "is not UTF-8 text"),
    (b"12345678901234567890123\n", "outside the 64-bit integer range"),
    (b"abc\n", "is not an integer"),
    (b"\n\n  \n", "no ids given"),
    (b"99999999\n", "unknown ids"),
])
def test_bad_ids_files(ws, tmp_path, content, message):
    path = tmp_path / "ids.txt"
    path.write_bytes(content)
    before = tree(ws)
    result = run_cli("delete", "--workdir", ws, "--ids-file", path)
    assert result.code == 1 and message in result.err and "Traceback" not in result.err
    assert tree(ws) == before


@pytest.mark.slow
def test_a_million_line_ids_file_is_refused_quickly_and_names_a_few(ws, tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(str(10**9 + i) for i in range(1_000_000)) + "\n")
    before = tree(ws)
    result = run_cli("delete", "--workdir", ws, "--ids-file", path)
    assert result.code == 1 and "and 999990 more" in result.err
    assert tree(ws) == before


WORDS = st.sampled_from(["--ids", "--ids-file", "--input", "--output", "--shards", "--slices", "--epochs",
                         "--lr", "--model", "--data", "--threads", "--json", "--dry-run", "--no-wait",
                         "--ignore-missing", "--replay", "--aggregation", "--seed", "--executor"])
VALUES = st.one_of(st.text(max_size=12), st.integers(-5, 10**20).map(str),
                   st.sampled_from(["0", "-1", "nan", "inf", "1e400", "", ",", "1,,2", "\x00", "..", "/",
                                    "csv:/nonexistent", "parquet:", "digits", "cnn", "local", "ray"]))
COMMANDS = st.sampled_from(["status", "eval", "predict", "audit", "delete", "train"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=COMMANDS, rest=st.lists(st.one_of(WORDS, VALUES), max_size=6))
def test_fuzzed_command_lines_never_crash_or_corrupt(ws, command, rest):
    args = [command, *rest]
    if command == "delete" and "--dry-run" not in args:
        args.append("--dry-run")  # a real deletion would rightly change the workspace
    if command == "train" and "--workdir" not in args:
        args += ["--epochs", "1"]
    before = tree(ws)
    result = run_cli(*args, "--workdir", ws, "--executor" if command == "train" else "--no-wait",
                     *(["local"] if command == "train" else []))
    assert result.code in (0, 1, 2), (args, result.code)
    assert "Traceback" not in result.err, (args, result.err)
    if result.code != 0 or command != "train":
        assert tree(ws) == before, args
