import json
import shutil

import numpy as np
import pytest
import torch
from helpers import checkpoint_shas

from sisa.data.sources import load
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.jobs import DataSpec, ShardJob
from sisa.training.slices import run_shard_job
from sisa.workspace.files import Workspace

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default
SMALL = Settings(shards=3, slices=3, epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_same_settings_give_bit_identical_checkpoints(tmp_path, digits):
    train_workspace(tmp_path / "a", digits, SMALL)
    torch.manual_seed(12345)  # global RNG history must not matter
    np.random.seed(7)
    train_workspace(tmp_path / "b", digits, SMALL)
    a, b = checkpoint_shas(tmp_path / "a"), checkpoint_shas(tmp_path / "b")
    assert len(a) == 9 and a == b
    c = checkpoint_shas_after(tmp_path / "c", digits, SMALL.replace(seed=1))
    assert set(c.values()).isdisjoint(a.values())


def checkpoint_shas_after(path, dataset, settings):
    train_workspace(path, dataset, settings)
    return checkpoint_shas(path)


def test_resuming_from_any_slice_checkpoint_is_bit_identical(tmp_path, digits):
    """The property exact deletion relies on: restore slice r-1 and retrain from r."""
    ws_path = tmp_path / "ws"
    train_workspace(ws_path, digits, SMALL)
    before = checkpoint_shas(ws_path)
    manifest = Workspace(ws_path).manifest()
    records = Workspace(ws_path).checkpoints().checkpoints
    spec = DataSpec.from_info(manifest.data)
    shard = manifest.shards[1]
    for from_slice in range(SMALL.slices):
        copy = tmp_path / f"resume-{from_slice}"
        shutil.copytree(ws_path, copy)
        for r in records:  # later checkpoints are gone, as after a rollback
            if r.shard == 1 and r.slice >= from_slice:
                for name, _, _ in r.files():
                    (copy / "checkpoints" / name).unlink()
        start = next((r for r in records if r.shard == 1 and r.slice == from_slice - 1), None)
        files = tuple((p.file, p.sha256) for p in shard.parts)
        result = run_shard_job(ShardJob(str(copy), 1, SMALL, spec, files, from_slice=from_slice, start=start))
        assert [r.slice for r in result.checkpoints] == list(range(from_slice, SMALL.slices))
        for r in result.checkpoints:
            assert r.sha256 == before[(1, r.slice)]


def test_checkpoints_hold_model_optimizer_scheduler_and_counters(tmp_path, digits):
    settings = SMALL.replace(scheduler="cosine", optimizer="sgd", lr=0.05)
    train_workspace(tmp_path, digits, settings)
    ws = Workspace(tmp_path)
    records = ws.checkpoints().checkpoints
    epochs = settings.slice_epochs()
    for r in records:
        state = ws.load_checkpoint(r)
        assert set(state) == {"model", "optimizer", "scheduler", "counters"}
        assert state["optimizer"]["state"], "momentum buffers are saved"
        assert state["scheduler"]["last_epoch"] == sum(epochs[:r.slice + 1])
        assert state["counters"]["slice"] == r.slice and state["counters"]["samples"] == r.samples
        assert state["counters"]["epochs"] == sum(epochs[:r.slice + 1])
        assert len(r.ids_sha256) == 64 and r.ids_sha256[:16] in r.file
    env = ws.checkpoints().environment
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["cpu_capability"]


def test_threads_setting_is_restored_and_recorded(tmp_path, digits):
    before = torch.get_num_threads()
    train_workspace(tmp_path, digits, SMALL.replace(threads=2, shards=2, slices=1, epochs=1))
    assert torch.get_num_threads() == before
    assert not torch.are_deterministic_algorithms_enabled()
    env = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())["environment"]
    assert env["threads"] == 2


def test_slices_train_on_the_union_so_far(tmp_path, digits):
    train_workspace(tmp_path, digits, SMALL)
    manifest = Workspace(tmp_path).manifest()
    records = Workspace(tmp_path).checkpoints().checkpoints
    for entry in manifest.shards:
        samples = [r.samples for r in records if r.shard == entry.shard]
        assert samples == np.cumsum(entry.slice_rows).tolist()
    assert sum(e.rows for e in manifest.shards) == len(digits.train)


def test_a_slice_left_empty_by_the_hash_trains_on_the_rows_before_it(tmp_path):
    from sisa.data.partition import assign
    from sisa.data.sources import Dataset, Table

    ids = np.arange(14)
    seed = next(s for s in range(200) if _has_empty_slice(assign(ids, seed=s, shards=2, slices=3)))
    X = np.random.default_rng(0).normal(size=(14, 4)).astype(np.float32)
    ds = Dataset("array", Table(ids, X, np.arange(14) % 2), None, (4,), [0, 1])
    train_workspace(tmp_path, ds, Settings(shards=2, slices=3, epochs=3, seed=seed))
    records = Workspace(tmp_path).checkpoints().checkpoints
    assert len(records) == 6
    samples = {(r.shard, r.slice): r.samples for r in records}
    assert any(samples[(s, r)] == samples[(s, r - 1)] for s in range(2) for r in range(1, 3)) or \
        any(samples[(s, 0)] == 0 for s in range(2))


def _has_empty_slice(a):
    counts = np.zeros((2, 3), dtype=int)
    np.add.at(counts, (a.shard, a.slice), 1)
    return (counts == 0).any() and (counts.sum(1) >= 3).all()


def test_watching_epochs_changes_no_trained_bit(digits):
    """train_slice's ``on_epoch`` sums the losses its steps computed anyway, detached: model
    and optimizer end byte for byte as unwatched, and each epoch's mean loss is reported."""
    import io

    from sisa.training.numerics import deterministic_torch
    from sisa.training.slices import make_training_state, train_slice

    settings = SMALL.replace(optimizer="sgd", lr=0.05, scheduler="cosine")
    X = np.asarray(digits.train.X[:300])
    spec = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, len(digits.classes))
    y = torch.from_numpy(digits.label_index(digits.train.y[:300], "training data"))

    def trained(on_epoch) -> bytes:
        with deterministic_torch(settings):
            model, optimizer, scheduler = make_training_state(settings, spec, 0)
            steps = train_slice(model, optimizer, scheduler, torch.from_numpy(X), y, settings=settings, data=spec,
                                shard=0, slice_=1, epochs=3, on_epoch=on_epoch)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "steps": steps}, buffer)
        return buffer.getvalue()

    losses = []
    watched = trained(lambda epoch, loss: losses.append((epoch, loss)))
    assert watched == trained(None)
    assert [epoch for epoch, _ in losses] == [0, 1, 2]
    assert all(np.isfinite(loss) and loss > 0 for _, loss in losses) and losses[-1][1] < losses[0][1]


def test_a_carried_job_returns_every_epochs_loss_with_its_result(tmp_path, digits):
    """How a Ray task's per-epoch losses reach the driver: in its result, not in the
    checkpoint records the checkpoints manifest persists."""
    from sisa.training.executors import run_carried
    from sisa.workspace.carried import CarriedFiles

    train_workspace(tmp_path, digits, SMALL)
    workspace = Workspace(tmp_path)
    manifest = workspace.manifest()
    job = ShardJob.for_shard(str(tmp_path), manifest, manifest.shards[2])
    files = CarriedFiles.gather(workspace, [name for name, _ in job.shard_files], [])
    [result] = run_carried([job], files)
    expected = [(r.slice, epoch, r.samples) for r in result.checkpoints for epoch in range(r.epochs)]
    assert [(e.slice, e.epoch, e.samples) for e in result.epochs] == expected
    assert len(expected) == sum(SMALL.slice_epochs()) and {e.shard for e in result.epochs} == {2}
    assert {r.sha256 for r in result.checkpoints} <= set(checkpoint_shas(tmp_path).values())
