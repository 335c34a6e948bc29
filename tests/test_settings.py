import pytest

from sisa.errors import SisaError
from sisa.settings import Settings


@pytest.mark.parametrize("change, message", [
    ({"shards": 0}, "shards must be a positive integer"),
    ({"slices": -1}, "slices must be a positive integer"),
    ({"epochs": 1.5}, "epochs must be a positive integer"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"seed": -3}, "seed must be a non-negative integer"),
    ({"model": "gpt"}, "unknown model 'gpt'"),
    ({"aggregation": "median"}, "unknown aggregation 'median'"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_invalid_settings_name_the_problem(change, message):
    with pytest.raises(SisaError, match=message):
        Settings(**change)


@pytest.mark.parametrize("slices, epochs", [(1, 10), (2, 7), (4, 30), (5, 3), (8, 10), (50, 20)])
def test_recalibrated_epochs_follow_sisa(slices, epochs):
    per_slice = Settings(slices=slices, epochs=epochs).slice_epochs()
    total = 2 * slices * epochs / (slices + 1)
    assert len(per_slice) == slices
    assert all(e >= 0 for e in per_slice)
    assert sum(per_slice) == int(round(total, 9))
    # the sample-passes of the sliced shard match an unsliced shard's epochs * D, up to rounding
    passes = sum((i + 1) / slices * e for i, e in enumerate(per_slice))
    assert abs(passes - epochs) <= 1 + 1e-9


def test_uniform_schedule_and_round_trip():
    s = Settings(slices=3, epochs=4, epoch_schedule="uniform")
    assert s.slice_epochs() == [4, 4, 4]
    assert Settings.from_dict(s.to_dict()) == s
    with pytest.raises(SisaError, match="unknown settings"):
        Settings.from_dict({**s.to_dict(), "colour": "red"})
