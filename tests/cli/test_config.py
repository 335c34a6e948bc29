"""``sisa train --config FILE`` and ``--print-config``: config files in TOML or YAML."""

import hashlib
import json
import math

import pytest
import yaml
from helpers import checkpoint_shas, run_cli, tree
from hypothesis import example, given
from hypothesis import strategies as st

from sisa.cli.config import _yaml_classes, dump_config, toml_value

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: sisa reads TOML with tomli there
    import tomli as tomllib

TINY = ("--shards", "2", "--slices", "2", "--epochs", "1", "--executor", "local")
"""The flags of the workspace the config files are compared against."""


@pytest.fixture(scope="module")
def flag_trained(tmp_path_factory):
    """A workspace trained from flags only: what every config file below must reproduce."""
    ws = tmp_path_factory.mktemp("flags") / "ws"
    result = run_cli("train", "--workdir", ws, *TINY, "--batch-size", "16", "--lr", "0.002")
    assert result.code == 0, result.err
    return ws


def write(path, text):
    path.write_text(text)
    return path


# -- training from a file


@pytest.mark.numerics
def test_toml_and_yaml_configs_train_like_the_same_flags(flag_trained, tmp_path):
    toml_file = write(tmp_path / "run.toml", 'shards = 2\nslices = 2\nepochs = 1\nexecutor = "local"\n'
                                             'batch-size = 16\nlr = 0.002\n')
    yaml_file = write(tmp_path / "run.yml", "shards: 2\nslices: 2\nepochs: 1\nexecutor: local\n"
                                            "batch_size: 16\nlr: 2e-3\n")  # YAML 1.1 would read 2e-3 as text
    for config in (toml_file, yaml_file):
        ws = tmp_path / config.suffix[1:]
        result = run_cli("train", "--config", config, "--workdir", ws)
        assert result.code == 0, result.err
        assert checkpoint_shas(ws) == checkpoint_shas(flag_trained), config.name


def test_a_flag_given_overrides_the_file_which_overrides_the_data_defaults(tmp_path):
    config = write(tmp_path / "run.toml", "shards = 3\nslices = 2\nepochs = 1\nseed = 7\n")
    result = run_cli("train", "--config", config, "--shards", "2", "--workdir", tmp_path / "ws", "--json")
    assert result.code == 0, result.err
    settings = run_cli("status", "--workdir", tmp_path / "ws", "--json").json["settings"]
    assert (settings["shards"], settings["slices"], settings["seed"]) == (2, 2, 7)

    from PIL import Image

    images = tmp_path / "images"  # an image folder's data default is the cnn: a file's model wins over it
    for label in "ab":
        (images / label).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (3, 2), i * 40).save(images / label / f"{i}.png")
    printed = lambda *argv: tomllib.loads(run_cli("train", "--print-config", "--data", f"imagefolder:{images}",
                                                  *argv).out)
    assert printed()["model"] == "cnn" and printed()["image_size"] == [2, 3]
    assert printed("--config", write(tmp_path / "mlp.toml", 'model = "mlp"\n'))["model"] == "mlp"


# -- refusals


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", 'shards = "8"\n', 'shards = \'8\' is text; expected a whole number'),
    ("c.toml", 'lr = "fast"\n', "lr = 'fast' is text; expected a number"),
    ("c.toml", "shards = 0\n", "shards = 0: shards must be a positive integer"),
    ("c.toml", 'optimizer = "lbfgs"\n', "optimizer = 'lbfgs'; expected one of: adam, adamw, sgd"),
    ("c.toml", "image-size = [32, 1.5]\n", "image-size = [32, 1.5] is a list of more than whole numbers"),
    ("c.yaml", "id_col: true\n", "id_col = True is true or false; expected text"),
    ("c.toml", 'colour = "red"\n', "unknown key 'colour'; a config file takes train's flags: data,"),
    ("c.toml", "force = true\n", "force is a command-line flag only"),
    ("c.toml", "quiet = true\n", "quiet is a command-line flag only (it is how this run reports"),
    ("c.toml", 'log-dir = "logs"\n', "log-dir is a command-line flag only (it is where this run writes"),
    ("c.toml", "[training]\nshards = 2\n", "training is a table or section; a config file is flat"),
    ("c.toml", "batch-size = 16\nbatch_size = 32\n", "batch_size given twice (as 'batch-size' and 'batch_size')"),
    ("c.toml", "shards = 2\nshards = 3\n", "(at line 2, column 11): shards = 3; a key given twice?"),
    ("c.yaml", "shards: 2\nshards: 3\n", "key 'shards' given twice; give it once (at line 2, column 1)"),
    ("c.toml", "shards = [2\n", "is not valid TOML: Unclosed array"),
    ("c.yml", "shards: [2\n", "is not valid YAML: expected ',' or ']'"),
    ("c.yaml", "- shards\n", "holds a list; expected 'key: value' lines"),
    ("c.json", "{}", "name it .toml, .yaml or .yml"),
    (None, None, "not found; check the path given to --config"),
    ("dir.toml", None, "cannot read config file"),
])
def test_a_bad_config_is_refused_by_name_before_anything_is_touched(tmp_path, name, text, message):
    path = tmp_path / (name or "missing.toml")
    if text is not None:
        path.write_text(text)
    elif name is not None:
        path.mkdir()
    ws = tmp_path / "ws"
    (ws / "shards").mkdir(parents=True)
    (ws / "shards" / "README.md").write_text("user file\n")
    before = tree(ws)
    for workdir in (ws, tmp_path / "new"):
        result = run_cli("train", "--config", path, "--workdir", workdir, *TINY[:-2])
        assert result.code == 1 and f"config file {path}" in result.err and message in result.err, result.err
        assert "Traceback" not in result.err
    assert tree(ws) == before and not (tmp_path / "new").exists()


def test_format_needs_print_config(tmp_path):
    result = run_cli("train", "--format", "yaml", "--workdir", tmp_path / "ws")
    assert result.code == 1 and "--format only applies with --print-config" in result.err
    assert not (tmp_path / "ws").exists()


# -- --print-config


@pytest.mark.numerics
def test_print_config_round_trips_to_bit_identical_checkpoints(flag_trained, tmp_path):
    flags = (*TINY, "--batch-size", "16", "--lr", "0.002")
    ws = tmp_path / "ws"
    (ws / "shards").mkdir(parents=True)  # printing touches no workspace
    (ws / "shards" / "README.md").write_text("user file\n")
    before = tree(ws)
    printed = run_cli("train", "--print-config", *flags, "--workdir", ws)
    assert printed.code == 0, printed.err
    assert tree(ws) == before
    config = write(tmp_path / "printed.toml", printed.out)
    values = tomllib.loads(printed.out)
    assert values["lr"] == 0.002 and values["model"] == "mlp" and values["workdir"] == str(ws)
    as_yaml = run_cli("train", "--print-config", "--config", config, "--format", "yaml").out
    assert yaml.load(as_yaml, Loader=_yaml_classes()[0]) == values  # the same configuration, in YAML

    result = run_cli("train", "--config", config, "--workdir", tmp_path / "B")
    assert result.code == 0, result.err
    assert checkpoint_shas(tmp_path / "B") == checkpoint_shas(flag_trained)


# -- the workspace records its config


def test_the_workspace_records_the_config_and_force_retrains_without_it(flag_trained, tmp_path):
    config = write(tmp_path / "run.toml", "shards = 2\nslices = 2\nepochs = 1\nbatch_size = 16\nlr = 0.002\n")
    ws = tmp_path / "ws"
    assert run_cli("train", "--config", config, "--workdir", ws).code == 0
    data = run_cli("status", "--workdir", ws, "--json").json["data"]
    assert data["config_file"] == str(config.resolve())
    assert data["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert f"config: {config.resolve()}" in run_cli("status", "--workdir", ws).out

    # retrained as recorded (no --data, no --config): the same settings, so the same bits
    forced = run_cli("train", "--force", "--workdir", ws)
    assert forced.code == 0, forced.err
    assert checkpoint_shas(ws) == checkpoint_shas(flag_trained)
    assert run_cli("status", "--workdir", ws, "--json").json["data"]["config_file"] is None


def test_a_workspace_from_before_config_files_still_loads(flag_trained):
    manifest = json.loads((flag_trained / "shards" / "manifest.json").read_text())
    assert "config_file" not in manifest["data"]  # trained from flags: nothing recorded
    status = run_cli("status", "--workdir", flag_trained, "--json")
    assert status.code == 0 and status.json["data"]["config_file"] is None


# -- the writer


names = st.from_regex(r"[a-z_][a-z0-9_-]{0,15}", fullmatch=True)
numberlike = st.from_regex(r"[-+]?[0-9._]+(e[-+]?[0-9]+)?", fullmatch=True)  # text that must stay text
values = st.one_of(st.text(), numberlike, st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                   st.booleans(), st.lists(st.integers(0, 10**6), max_size=3))


@given(st.dictionaries(names, values, max_size=8))
@example({"data": "csv:a\x85b.csv", "id_col": "1e-3", "lr": 1e-3, "label_col": 'say "no"\n'})
def test_every_written_config_reads_back_to_the_same_values(config):
    assert tomllib.loads(dump_config(config, "toml", header="a comment\n\nover lines")) == config
    assert yaml.load(dump_config(config, "yaml", header="a comment"), Loader=_yaml_classes()[0]) == config


def test_toml_writes_every_float_exactly():
    for number in (0.1, 1e-05, 3e-3, 1e16, 5e-324, -0.0, 1.7976931348623157e308, math.inf, -math.inf):
        assert tomllib.loads(f"x = {toml_value(number)}")["x"] == number
    assert math.isnan(tomllib.loads(f"x = {toml_value(math.nan)}")["x"])


# -- what a review that tried to break it found


@pytest.mark.parametrize("text, expected", [("0123", 123), ("010", 10), ("+7", 7)])
def test_yaml_integers_read_as_the_flag_reads_them(tmp_path, text, expected):
    config = write(tmp_path / "c.yaml", f"seed: {text}\n")  # YAML 1.1: 0123 is octal 83, 010 is 8
    result = run_cli("train", "--config", config, "--print-config", "--json")
    assert result.code == 0, result.err
    assert result.json["config"]["seed"] == expected == int(text)


@pytest.mark.parametrize("text", ["1:30", "0x10", "0o17", "0b101"])
def test_yaml_numbers_a_flag_would_refuse_are_refused(tmp_path, text):
    config = write(tmp_path / "c.yaml", f"seed: {text}\n")  # YAML 1.1: base 60 (90), hex, octal, binary
    result = run_cli("train", "--config", config, "--print-config")
    assert result.code == 1 and f"seed = '{text}' is text; expected a whole number" in result.err


def test_yaml_yes_and_no_are_text(tmp_path):
    config = write(tmp_path / "c.yaml", "label_col: no\nid_col: yes\n")
    result = run_cli("train", "--config", config, "--print-config", "--json")
    assert result.code == 0, result.err
    assert (result.json["config"]["label_col"], result.json["config"]["id_col"]) == ("no", "yes")


def test_nested_yaml_aliases_are_refused_quickly(tmp_path):
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
               f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    config = write(tmp_path / "c.yaml", "\n".join(levels) + "\nimage_size: *a8\n")  # 10^9 values if expanded
    result = run_cli("train", "--config", config, "--print-config")
    assert result.code == 1 and len(result.err) < 2000


def test_a_toml_file_with_a_byte_order_mark_reads(tmp_path):
    config = tmp_path / "c.toml"
    config.write_bytes("\ufeffshards = 3\n".encode())
    result = run_cli("train", "--config", config, "--print-config", "--json")
    assert result.code == 0 and result.json["config"]["shards"] == 3, result.err


def test_an_error_in_values_from_a_file_names_the_file(tmp_path):
    config = write(tmp_path / "c.toml", "image_size = [32, 32]\n")  # digits is no image folder
    result = run_cli("train", "--config", config, "--workdir", tmp_path / "ws")
    assert result.code == 1 and "--image-size applies to imagefolder" in result.err and "c.toml" in result.err
    config = write(tmp_path / "d.toml", "cpus_per_shard = -1\n")
    result = run_cli("train", "--config", config, "--print-config")
    assert result.code == 1 and "--cpus-per-shard must be >= 0" in result.err and "d.toml" in result.err


def test_retraining_as_recorded_reads_the_file_it_was_trained_on(tmp_path, monkeypatch):
    import pyarrow.csv as pcsv
    from helpers import make_table

    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name / "data").mkdir(parents=True)
        pcsv.write_csv(make_table(n=80, features=3, seed=seed), tmp_path / name / "data" / "rows.csv")
    monkeypatch.chdir(tmp_path / "a")
    assert run_cli("train", "--data", "csv:data/rows.csv", "--workdir", tmp_path / "ws", *TINY).code == 0
    before = checkpoint_shas(tmp_path / "ws")
    monkeypatch.chdir(tmp_path / "b")  # holds another data/rows.csv
    result = run_cli("train", "--workdir", tmp_path / "ws", "--force", *TINY)
    assert result.code == 0, result.err
    assert f"--data csv:{tmp_path / 'a' / 'data' / 'rows.csv'}" in result.err
    assert checkpoint_shas(tmp_path / "ws") == before


def test_log_dir_is_checked_before_training(tmp_path):
    ws = tmp_path / "ws"
    for log_dir, message in ((ws / "checkpoints", "inside the workspace"), (ws, "inside the workspace")):
        result = run_cli("train", "--workdir", ws, *TINY, "--log-dir", log_dir)
        assert result.code == 1 and message in result.err and not ws.exists()
    (tmp_path / "file").write_text("x")
    result = run_cli("train", "--workdir", ws, *TINY, "--log-dir", tmp_path / "file" / "logs")
    assert result.code == 1 and "cannot be made" in result.err and not ws.exists()
    result = run_cli("train", "--workdir", ws, *TINY, "--vectorise", "2", "--log-dir", tmp_path / "logs")
    assert result.code == 1 and "--vectorise" in result.err and not ws.exists() and not (tmp_path / "logs").exists()
