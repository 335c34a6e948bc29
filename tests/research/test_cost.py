"""SISA's expected deletion cost: the closed forms against a simulation of uniform requests."""

import numpy as np
import pytest

from sisa.research.cost import (
    expected_passes,
    expected_speedup,
    paper_batch_points,
    paper_one_by_one_points,
    paper_slicing_factor,
)
from sisa.settings import Settings


def simulate(settings: Settings, n: int, k: int, *, batch: bool, trials: int = 4000, seed: int = 0) -> float:
    """Mean sample-passes of serving k uniform requests, by drawing them."""
    rng = np.random.default_rng(seed)
    shards, slices = settings.shards, settings.slices
    epochs = settings.slice_epochs()
    per_slice = n / shards / slices
    from_slice = [sum((r + 1) * per_slice * epochs[r] for r in range(r0, slices)) for r0 in range(slices)]
    total = 0.0
    for _ in range(trials):
        shard = rng.integers(0, shards, k)
        slice_ = rng.integers(0, slices, k)
        if batch:
            total += sum(from_slice[slice_[shard == s].min()] for s in set(shard.tolist()))
        else:
            total += sum(from_slice[r] for r in slice_)
    return total / trials


@pytest.mark.parametrize("shards, slices, k", [(4, 1, 8), (8, 4, 8), (20, 50, 8), (5, 8, 64), (16, 4, 3)])
def test_expected_passes_match_a_simulation(shards, slices, k):
    settings = Settings(shards=shards, slices=slices, epochs=20)
    for batch in (False, True):
        expected = expected_passes(settings, 10_000, k, batch=batch)
        assert simulate(settings, 10_000, k, batch=batch) == pytest.approx(expected, rel=0.03)


def test_agrees_with_the_papers_formulas():
    n, e = 60_000, 10
    for shards in (2, 8, 20):
        for k in (1, 8, 64):
            one = Settings(shards=shards, slices=1, epochs=e)
            # the paper also counts the shrinking of a shard as its points are deleted
            assert expected_passes(one, n, k, batch=False) == pytest.approx(
                e * paper_one_by_one_points(n, shards, k), rel=0.01)
            assert expected_passes(one, n, k, batch=True) == pytest.approx(
                e * (paper_batch_points(n, shards, k) + k), rel=1e-9)
    for slices in (2, 4, 10):
        settings = Settings(shards=4, slices=slices, epochs=2 * (slices + 1))  # whole recalibrated epochs
        assert expected_passes(settings, 8000, 1, batch=False) == pytest.approx(
            paper_slicing_factor(slices) * settings.epochs * 2000)


def test_speedup_falls_as_requests_grow_past_the_shards():
    settings = Settings(shards=8, slices=4, epochs=10)  # 16 recalibrated epochs, 4 per slice
    one = expected_speedup(settings, 60_000, 1, batch=True)
    assert one == pytest.approx(8 / paper_slicing_factor(4))
    assert expected_speedup(settings, 60_000, 64, batch=True) < 1.2
    assert expected_speedup(settings, 60_000, 64, batch=False) == pytest.approx(one)
