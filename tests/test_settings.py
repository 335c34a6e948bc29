import pytest

from sisa.errors import SisaError
from sisa.settings import Settings


@pytest.mark.parametrize("change, message", [
    ({"shards": 0}, "shards must be a positive integer"),
    ({"slices": -1}, "slices must be a positive integer"),
    ({"epochs": 1.5}, "epochs must be a positive integer"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"seed": -3}, "seed must be an integer from 0 to 2\\^63 - 1"),
    ({"seed": 2**63}, "seed must be an integer from 0 to 2\\^63 - 1"),
    ({"slices": 10**15}, "slices must be at most 1000000"),
    ({"model": "gpt"}, "unknown model 'gpt'"),
    ({"aggregation": "median"}, "unknown aggregation 'median'"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_invalid_settings_name_the_problem(change, message):
    with pytest.raises(SisaError, match=message):
        Settings(**change)


@pytest.mark.parametrize("slices, epochs", [(1, 10), (2, 7), (4, 30), (5, 3), (8, 10), (8, 5)])
def test_recalibrated_epochs_follow_sisa(slices, epochs):
    """Where SISA's recalibration gives every slice an epoch (e' = 2Re/(R+1) >= R), sisa
    follows it exactly."""
    per_slice = Settings(slices=slices, epochs=epochs).slice_epochs()
    total = 2 * slices * epochs / (slices + 1)
    assert total >= slices
    assert len(per_slice) == slices
    assert sum(per_slice) == int(round(total, 9))
    # the sample-passes of the sliced shard match an unsliced shard's epochs * D, up to rounding
    passes = sum((i + 1) / slices * e for i, e in enumerate(per_slice))
    assert abs(passes - epochs) <= 1 + 1e-9


@pytest.mark.parametrize("slices, epochs", [(4, 1), (50, 5), (50, 20), (20, 1), (9, 4)])
def test_every_slice_trains_at_least_one_epoch(slices, epochs):
    """Recalibration alone would give some slices 0 epochs when e' < R ([0, 0, 1, 0] for R = 4,
    e = 1): their rows would never be trained on. Each slice gets at least one."""
    per_slice = Settings(slices=slices, epochs=epochs).slice_epochs()
    total = 2 * slices * epochs / (slices + 1)
    assert total < slices
    assert min(per_slice) == 1 and len(per_slice) == slices
    assert sum(per_slice) == slices  # the floor of one epoch per slice, and no more


def test_uniform_schedule_and_round_trip():
    s = Settings(slices=3, epochs=4, epoch_schedule="uniform")
    assert s.slice_epochs() == [4, 4, 4]
    assert Settings.from_dict(s.to_dict()) == s
    with pytest.raises(SisaError, match="unknown settings"):
        Settings.from_dict({**s.to_dict(), "colour": "red"})
