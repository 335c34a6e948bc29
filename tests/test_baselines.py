"""Approximate unlearning methods: each changes the model, each lowers forget accuracy on an
over-fitted model, and Amnesiac's update log adds up exactly."""

import copy

import numpy as np
import pytest
import torch

from sisa.baselines import METHODS, AmnesiacLog, ForgetTask, amnesiac, run_method, saliency_mask, tiny_task
from sisa.compare import train_model
from sisa.data import load
from sisa.errors import SisaError
from sisa.settings import Settings
from sisa.training import DataSpec, make_training_state


def as_tensor(a):
    return torch.from_numpy(np.array(a, copy=True))


@pytest.fixture(scope="module")
def overfit():
    """An MLP trained long on 400 digits whose 40 forget rows carry wrong labels, so it can get
    them right only by memorising them (retraining without them gets them all wrong)."""
    digits = load("digits")
    X = digits.train.X[:400]
    y = digits.train.y[:400].astype(np.int64).copy()
    rng = np.random.default_rng(0)
    forget = np.zeros(400, dtype=bool)
    forget[rng.choice(400, 40, replace=False)] = True
    y[forget] = (y[forget] + rng.integers(1, 10, int(forget.sum()))) % 10
    settings = Settings(shards=1, slices=1, epochs=150)
    data = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, 10)
    model, _, log = train_model(settings, data, X, y, amnesiac_rows=forget)
    return model, log, X, y, forget, settings, data


def make_task(overfit):
    model, log, X, y, forget, settings, data = overfit
    return ForgetTask(copy.deepcopy(model), as_tensor(X[~forget]), as_tensor(y[~forget]),
                      as_tensor(X[forget]), as_tensor(y[forget]), data, settings, amnesiac_log=log)


def forget_accuracy(task):
    with torch.no_grad():
        return float((task.model(task.inputs(task.forget_X)).argmax(1) == task.forget_y).float().mean())


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_changes_the_model_on_tiny_data(name):
    task = tiny_task()
    if name == "amnesiac":
        task.amnesiac_log = AmnesiacLog(task.model, np.arange(len(task.retain_y) + len(task.forget_y)) < 20)
        task.amnesiac_log.total = {n: torch.full_like(t, 1e-3) for n, t in task.amnesiac_log.total.items()}
    before = copy.deepcopy(task.model.state_dict())
    out = run_method(name, task)
    assert out["seconds"] >= 0 and out["params"] == METHODS.get(name).defaults
    changed = [n for n, p in task.model.state_dict().items() if not torch.equal(p, before[n])]
    assert changed, f"{name} left every weight as it was"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_lowers_forget_accuracy_of_an_overfitted_model(overfit, name):
    original = make_task(overfit)
    assert forget_accuracy(original) == 1.0  # memorised
    task = make_task(overfit)
    run_method(name, task)
    assert forget_accuracy(task) < 1.0


def test_amnesiac_log_of_every_batch_undoes_training_exactly():
    """With every row tracked and no repair, subtracting the logged updates returns the
    weights to their initialisation."""
    digits = load("digits")
    X, y = digits.train.X[:300], digits.train.y[:300].astype(np.int64)
    settings = Settings(shards=1, slices=1, epochs=3, batch_size=32)
    data = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, 10)
    model, _, log = train_model(settings, data, X, y, amnesiac_rows=np.ones(300, dtype=bool))
    initial, _, _ = make_training_state(settings, data, 0)
    assert log.steps == 3 * 10 and len(log.batches) == log.steps
    assert sorted(np.concatenate(log.batches).tolist()) == sorted(list(range(300)) * 3)
    trained = copy.deepcopy(model.state_dict())
    assert any(not torch.equal(trained[n], p) for n, p in initial.state_dict().items())
    task = ForgetTask(model, as_tensor(X[:0]), as_tensor(y[:0]), as_tensor(X), as_tensor(y), data, settings,
                      amnesiac_log=log)
    amnesiac(task, repair_share=0.0, lr=0.01)
    for name, p in initial.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, rtol=0, atol=1e-6)


def test_amnesiac_log_forgets_a_subset_only_with_kept_updates():
    digits = load("digits")
    X, y = digits.train.X[:200], digits.train.y[:200].astype(np.int64)
    settings = Settings(shards=1, slices=1, epochs=2, batch_size=10)
    data = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, 10)
    tracked = np.zeros(200, dtype=bool)
    tracked[:3] = True
    _, _, summed = train_model(settings, data, X, y, amnesiac_rows=tracked)
    with pytest.raises(SisaError, match="keep_updates"):
        summed.updates_for(np.arange(2))
    with pytest.raises(SisaError, match="did not track"):
        summed.updates_for(np.arange(5))

    _, _, log = _train_with(settings, data, X, y, tracked)
    expected = {n: torch.zeros_like(t) for n, t in log.total.items()}
    for batch, update in zip(log.batches, log.updates):
        if (batch < 2).any():
            for n, u in update.items():
                expected[n] += u.double()
    subset = log.updates_for(np.arange(2))
    for n in expected:
        torch.testing.assert_close(subset[n], expected[n])
    assert log.updates_for(np.flatnonzero(tracked)) is log.total
    assert len(log.batches) < log.steps  # batches without a tracked row are not logged


def _train_with(settings, data, X, y, tracked):
    from sisa.training import deterministic_torch, train_slice

    with deterministic_torch(settings):
        model, optimizer, scheduler = make_training_state(settings, data, 0)
        log = AmnesiacLog(model, tracked, keep_updates=True)
        train_slice(model, optimizer, scheduler, as_tensor(X), as_tensor(y), settings=settings, data=data,
                    shard=0, slice_=0, epochs=settings.epochs, observer=log)
    return model, None, log


def test_salun_moves_only_the_salient_weights(overfit):
    task = make_task(overfit)
    mask = saliency_mask(task, 0.5)
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert abs(kept / total - 0.5) < 0.01
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    run_method("salun", task)
    for n, p in task.model.named_parameters():
        frozen = mask[n] == 0
        assert torch.equal(p.detach()[frozen], before[n][frozen])
        assert not torch.equal(p.detach()[~frozen], before[n][~frozen])


def test_ssd_only_shrinks_weights(overfit):
    task = make_task(overfit)
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    run_method("ssd", task)
    shrunk = 0
    for n, p in task.model.named_parameters():
        after = p.detach()
        assert (after.abs() <= before[n].abs()).all()
        assert (torch.sign(after) * torch.sign(before[n]) >= 0).all()
        shrunk += int((after != before[n]).sum())
    assert shrunk > 0


def test_unknown_method_or_setting_is_named():
    with pytest.raises(SisaError, match="unknown unlearning method 'forgetful'"):
        run_method("forgetful", tiny_task())
    with pytest.raises(SisaError, match="no setting momentum"):
        run_method("ft", tiny_task(), momentum=0.5)
    with pytest.raises(SisaError, match="update log"):
        run_method("amnesiac", tiny_task())
