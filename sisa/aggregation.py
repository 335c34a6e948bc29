"""Aggregators: combine the shard models' class probabilities into one prediction.

None of them is fitted on data: anything learned from the training rows would remember
deleted rows after the shards have forgotten them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from sisa.registry import Registry

Aggregator = Callable[[np.ndarray, Sequence[int]], np.ndarray]
"""(probas of shape (shards, rows, classes), training samples per shard) -> (rows, classes)."""

AGGREGATORS: Registry[Aggregator] = Registry("aggregation")


@AGGREGATORS.register("mean-proba")
def mean_proba(probas: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Average of the shards' probability vectors (SISA's better aggregator)."""
    return probas.mean(axis=0)


@AGGREGATORS.register("vote")
def vote(probas: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Share of shards voting for each class; ties go to the lower class index."""
    n_classes = probas.shape[2]
    votes = np.eye(n_classes, dtype=probas.dtype)[probas.argmax(axis=2)]
    return votes.mean(axis=0)


@AGGREGATORS.register("size-weighted")
def size_weighted(probas: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Probability average weighted by each shard's number of training samples."""
    weights = np.asarray(sizes, dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("size-weighted aggregation needs at least one non-empty shard")
    weights = weights / weights.sum()
    return np.tensordot(weights, probas, axes=1).astype(probas.dtype)


def aggregate(name: str, probas: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Combine shard probabilities with the aggregator called ``name``.

    >>> p = np.array([[[0.9, 0.1]], [[0.4, 0.6]], [[0.3, 0.7]]])
    >>> aggregate("vote", p, [1, 1, 1]).round(3).tolist()
    [[0.333, 0.667]]
    >>> aggregate("mean-proba", p, [1, 1, 1]).round(3).tolist()
    [[0.533, 0.467]]
    """
    if probas.ndim != 3 or probas.shape[0] != len(sizes):
        raise ValueError(f"expected probas of shape (shards, rows, classes) for {len(sizes)} shards, "
                         f"got {probas.shape}")
    return AGGREGATORS.get(name)(probas, sizes)
