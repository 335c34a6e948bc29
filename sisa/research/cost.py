"""Expected cost of deletions, from SISA's analysis (Bourtoule et al. 2021, section V).

Costs are sample-passes (rows x epochs trained), so they compare directly with a monolithic
retrain, which costs ``epochs * N``. Requests are uniform over the training rows.

``paper_*`` are the paper's closed forms; :func:`expected_passes` computes the same
expectation exactly for any number of slices and SISA's recalibrated epochs, so it also
covers batched requests with slicing, which the paper gives for sharding only.
"""

from __future__ import annotations

import math

from sisa.settings import Settings


def paper_one_by_one_points(n: int, shards: int, k: int) -> float:
    """Points retrained by K requests served one by one, sharding only:
    (N/S + 1/(2S) - 1) K - K^2/(2S)."""
    return (n / shards + 1 / (2 * shards) - 1) * k - k * k / (2 * shards)


def paper_batch_points(n: int, shards: int, k: int) -> float:
    """Points retrained by K requests served as one batch, sharding only: N (1 - (1 - 1/S)^K) - K."""
    return n * (1 - (1 - 1 / shards) ** k) - k


def paper_slicing_factor(slices: int) -> float:
    """Sample-passes of one request with slicing, as a share of retraining the whole shard:
    2/3 + 1/(3R) (so slicing alone saves at most 1.5x)."""
    return 2 / 3 + 1 / (3 * slices)


def _from_slice_passes(settings: Settings, shard_rows: float) -> list[float]:
    """Sample-passes of retraining a shard of ``shard_rows`` rows from each slice on."""
    epochs = settings.slice_epochs()
    per_slice = shard_rows / settings.slices
    cost = [(r + 1) * per_slice * epochs[r] for r in range(settings.slices)]
    return [sum(cost[r:]) for r in range(settings.slices)]


def expected_passes(settings: Settings, n: int, k: int, *, batch: bool) -> float:
    """Expected sample-passes to serve ``k`` uniform requests on ``n`` rows, one by one or as
    one batch, with ``settings``' shards, slices and (recalibrated) epochs.

    One by one, each request retrains its shard from its slice (rows shrink as they go, a
    second-order effect left out here, as the paper's slicing formula does). As a batch, each
    shard that any request hits retrains once, from its earliest affected slice.

    >>> s = Settings(shards=4, slices=1, epochs=10)
    >>> round(expected_passes(s, 1000, 8, batch=True)) == round(10 * (paper_batch_points(1000, 4, 8) + 8))
    True
    >>> s = Settings(shards=4, slices=4, epochs=30)  # one request: the paper's 2/3 + 1/(3R) of a shard
    >>> expected_passes(s, 1000, 1, batch=False) / (30 * 250) == paper_slicing_factor(4)
    True
    """
    shards, slices = settings.shards, settings.slices
    from_slice = _from_slice_passes(settings, n / shards)
    one_request = sum(from_slice) / slices
    if not batch:
        return k * one_request
    total = 0.0
    for j in range(1, k + 1):  # requests that land in a given shard: Binomial(k, 1/S)
        p_j = math.comb(k, j) * (1 / shards) ** j * (1 - 1 / shards) ** (k - j)
        # earliest affected slice of j uniform requests: P(min >= r) = ((R - r) / R)^j
        expected = sum((((slices - r) / slices) ** j - ((slices - r - 1) / slices) ** j) * from_slice[r]
                       for r in range(slices))
        total += p_j * expected
    return shards * total


def expected_speedup(settings: Settings, n: int, k: int, *, batch: bool) -> float:
    """K monolithic retrains (epochs x N sample-passes each; one when batched) over the
    expected sample-passes of serving the K requests with SISA."""
    monolithic = settings.epochs * n * (1 if batch else k)
    return monolithic / expected_passes(settings, n, k, batch=batch)
