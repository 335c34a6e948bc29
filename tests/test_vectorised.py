"""Shards trained together as one vectorised model (Settings.vectorise > 1): isolation and
exactness hold on that path too, and it trains what one model at a time trains."""

import json
from pathlib import Path

import pytest
import torch

from sisa.api import train_workspace
from sisa.data import load
from sisa.settings import Settings
from sisa.store import Workspace
from sisa.unlearn import delete
from sisa.vectorised import work_units

from conftest import run_cli
from test_delete import assert_identical, records, shard_layout, without

# 3 shards in groups of 2: group 0 holds shards 0 and 1, group 1 holds shard 2 and an empty position
SETTINGS = Settings(shards=3, slices=3, epochs=2, batch_size=32, model="cnn", vectorise=2)
VARIANTS = {
    "adam": {},
    "sgd-cosine-decay": dict(optimizer="sgd", lr=0.01, weight_decay=0.01, scheduler="cosine"),
    "adamw-decay": dict(optimizer="adamw", weight_decay=0.01),
}


@pytest.fixture(scope="module")
def digits():
    return load("digits")  # 8x8 images: the cnn's convolutions run as grouped convolutions under vmap


def checkpoint_states(workdir: Path, slice_: int) -> dict:
    manifest = json.loads((workdir / "checkpoints" / "manifest.json").read_text())
    return {r["shard"]: torch.load(workdir / "checkpoints" / r["file"], weights_only=True)
            for r in manifest["checkpoints"] if r["slice"] == slice_}


@pytest.mark.parametrize("variant", VARIANTS)
def test_vectorised_delete_equals_training_without(variant, digits, tmp_path):
    settings = SETTINGS.replace(**VARIANTS[variant])
    train_workspace(tmp_path / "ws", digits, settings)
    layout = shard_layout(tmp_path / "ws")
    ids = sorted(layout)
    # both shards of group 0 from different slices, then shard 2 alone in group 1, then shard 0
    # again with its companion idle
    batches = [[next(i for i in ids if layout[i] == (0, 2)), next(i for i in ids if layout[i] == (1, 1))],
               [next(i for i in ids if layout[i] == (2, 0))],
               [i for i in ids if layout[i][0] == 0][5:8]]
    for batch in batches:
        delete(Workspace(tmp_path / "ws"), batch)
    removed = {i for batch in batches for i in batch}
    train_workspace(tmp_path / "fresh", without(digits, removed), settings)
    assert_identical(tmp_path / "ws", tmp_path / "fresh")


def test_a_shards_bits_do_not_depend_on_its_companions_rows(digits, tmp_path):
    """Isolation: removing rows of shard 1 leaves every checkpoint of shard 0, trained in the
    same vectorised group, bit for bit as it was."""
    settings = SETTINGS.replace(shards=2)
    train_workspace(tmp_path / "all", digits, settings)
    layout = shard_layout(tmp_path / "all")
    removed = [i for i in sorted(layout) if layout[i][0] == 1][::3]
    train_workspace(tmp_path / "fewer", without(digits, removed), settings)
    before, after = records(tmp_path / "all"), records(tmp_path / "fewer")
    assert {k: v for k, v in before.items() if k[0] == 0} == {k: v for k, v in after.items() if k[0] == 0}
    assert all(before[(1, r)] != after[(1, r)] for r in range(settings.slices))


@pytest.mark.parametrize("variant", VARIANTS)
def test_vectorised_training_matches_one_model_at_a_time(variant, digits, tmp_path):
    """The stacked optimizers follow torch's: weights and optimizer state agree with training
    each shard on its own up to float rounding (the kernels differ, so bits may too)."""
    states = {}
    for width in (1, 2):
        settings = SETTINGS.replace(shards=2, vectorise=width, **VARIANTS[variant])
        train_workspace(tmp_path / f"v{width}", digits, settings)
        states[width] = checkpoint_states(tmp_path / f"v{width}", settings.slices - 1)
    for shard in (0, 1):
        one, vec = states[1][shard], states[2][shard]
        for name, value in one["model"].items():
            torch.testing.assert_close(vec["model"][name], value, rtol=0, atol=1e-5)
        assert vec["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
        for index, state in one["optimizer"]["state"].items():
            assert set(vec["optimizer"]["state"][index]) == set(state)
            for key, value in state.items():
                torch.testing.assert_close(vec["optimizer"]["state"][index][key], value, rtol=0, atol=1e-5)
        assert vec["scheduler"] == one["scheduler"] and vec["counters"] == one["counters"]


def test_groups_are_fixed_by_shard_number(digits, tmp_path):
    train_workspace(tmp_path / "ws", digits, SETTINGS.replace(shards=5, slices=1, epochs=1, vectorise=2))
    manifest = json.loads((tmp_path / "ws" / "checkpoints" / "manifest.json").read_text())
    assert [r["shared_by"] for r in sorted(manifest["checkpoints"], key=lambda r: r["shard"])] == [2, 2, 2, 2, 1]

    class Job:
        def __init__(self, shard):
            self.shard, self.settings = shard, SETTINGS.replace(shards=5, vectorise=2)

    assert [[j.shard for j in unit] for unit in work_units([Job(4), Job(1), Job(2)])] == [[1], [2], [4]]
    assert [[j.shard for j in unit] for unit in work_units([Job(3), Job(0), Job(2), Job(1)])] == [[0, 1], [2, 3]]


def test_the_cli_trains_vectorised_and_audit_replays_it(tmp_path):
    done = run_cli("train", "--workdir", tmp_path / "ws", "--model", "cnn", "--shards", "2", "--slices", "2",
                   "--epochs", "2", "--vectorise", "2", "--json")
    assert done.code == 0, done.err
    assert done.json["accuracy"] > 0.5
    manifest = json.loads((tmp_path / "ws" / "shards" / "manifest.json").read_text())
    assert manifest["settings"]["vectorise"] == 2
    forget = sorted(shard_layout(tmp_path / "ws"))[:3]
    assert run_cli("delete", "--workdir", tmp_path / "ws", "--ids", ",".join(map(str, forget)), "--no-serve").code == 0
    audited = run_cli("audit", "--workdir", tmp_path / "ws", "--replay")
    assert audited.code == 0, audited.err + audited.out


def test_a_model_with_buffers_is_refused_before_anything_is_written(tmp_path):
    done = run_cli("train", "--workdir", tmp_path / "ws", "--model", "resnet18", "--vectorise", "2",
                   "--epochs", "1")
    assert done.code != 0
    assert "vectorise" in done.err and "buffers" in done.err
    assert not (tmp_path / "ws").exists()
    bad = run_cli("train", "--workdir", tmp_path / "ws", "--vectorise", "0")
    assert bad.code != 0 and "vectorise must be a positive integer" in bad.err
    assert not (tmp_path / "ws").exists()
