import numpy as np
import pytest

from sisa.aggregation import AGGREGATORS, aggregate

PROBAS = np.array([
    [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
    [[0.1, 0.8, 0.1], [0.1, 0.2, 0.7]],
    [[0.4, 0.35, 0.25], [0.3, 0.4, 0.3]],
])


def test_mean_proba_averages():
    assert np.allclose(aggregate("mean-proba", PROBAS, [1, 1, 1]), PROBAS.mean(0))


def test_vote_counts_argmax_and_breaks_ties_low():
    out = aggregate("vote", PROBAS, [10, 1, 1])
    assert np.allclose(out[0], [2 / 3, 1 / 3, 0])
    assert np.allclose(out[1], [0, 2 / 3, 1 / 3])
    tie = aggregate("vote", np.array([[[0.9, 0.1]], [[0.2, 0.8]]]), [1, 1])
    assert tie.argmax(1).tolist() == [0]


def test_size_weighted_follows_shard_sizes():
    out = aggregate("size-weighted", PROBAS, [8, 1, 1])
    assert np.allclose(out, (8 * PROBAS[0] + PROBAS[1] + PROBAS[2]) / 10)
    # equal sizes reduce to the mean, and a large shard can flip the decision
    assert np.allclose(aggregate("size-weighted", PROBAS, [5, 5, 5]), PROBAS.mean(0))
    assert aggregate("size-weighted", PROBAS, [1, 100, 1])[0].argmax() == 1
    assert aggregate("size-weighted", PROBAS, [100, 1, 1])[0].argmax() == 0


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_every_aggregator_returns_distributions(name):
    out = aggregate(name, PROBAS, [3, 2, 1])
    assert out.shape == (2, 3)
    assert np.allclose(out.sum(1), 1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        aggregate("mean-proba", PROBAS, [1, 1])
