import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sisa.data.partition import assign, check_sizes, shard_order
from sisa.errors import SisaError


@settings(max_examples=30, deadline=None)
@given(ids=st.sets(st.integers(-2**62, 2**62) | st.text(min_size=1, max_size=8), min_size=2, max_size=60),
       seed=st.integers(0, 1000), shards=st.integers(1, 6), slices=st.integers(1, 5),
       data=st.data())
def test_removing_rows_never_moves_another(ids, seed, shards, slices, data):
    ids = list(ids)
    removed = set(data.draw(st.lists(st.sampled_from(ids), max_size=len(ids) - 1)))
    kept = [i for i in ids if i not in removed]
    full = assign(ids, seed=seed, shards=shards, slices=slices)
    after = assign(kept, seed=seed, shards=shards, slices=slices)
    where = {i: (full.shard[k], full.slice[k], full.key[k]) for k, i in enumerate(ids)}
    for k, i in enumerate(kept):
        assert (after.shard[k], after.slice[k], after.key[k]) == where[i]


def test_order_of_rows_does_not_matter_and_seed_does():
    ids = np.arange(500)
    a = assign(ids, seed=1, shards=4, slices=3)
    perm = np.random.default_rng(0).permutation(500)
    b = assign(ids[perm], seed=1, shards=4, slices=3)
    assert np.array_equal(a.shard[perm], b.shard)
    assert np.array_equal(a.slice[perm], b.slice)
    for s in range(4):  # the canonical order within a shard is the same set, same order
        assert np.array_equal(ids[shard_order(a, s)], ids[perm][shard_order(b, s)])
    c = assign(ids, seed=2, shards=4, slices=3)
    assert not np.array_equal(a.shard, c.shard)


def test_shards_are_roughly_balanced_and_ints_differ_from_strings():
    a = assign(np.arange(8000), seed=0, shards=8, slices=4)
    counts = np.bincount(a.shard, minlength=8)
    assert counts.min() > 850 and counts.max() < 1150
    assert not np.array_equal(assign([str(i) for i in range(64)], seed=0, shards=8, slices=1).shard,
                              assign(list(range(64)), seed=0, shards=8, slices=1).shard)


def test_canonical_order_is_slice_then_key():
    a = assign(np.arange(300), seed=3, shards=2, slices=3)
    rows = shard_order(a, 1)
    assert np.all(a.shard[rows] == 1)
    pairs = list(zip(a.slice[rows], a.key[rows]))
    assert pairs == sorted(pairs)


def test_size_checks():
    with pytest.raises(SisaError, match="more shards than samples: 5 shards for 3"):
        check_sizes(assign([1, 2, 3], seed=0, shards=5, slices=1), shards=5, slices=1)
    with pytest.raises(SisaError, match="more slices than samples in a shard"):
        check_sizes(assign(range(12), seed=0, shards=2, slices=10), shards=2, slices=10)
    counts = check_sizes(assign(range(400), seed=0, shards=4, slices=2), shards=4, slices=2)
    assert counts.sum() == 400 and counts.shape == (4, 2)
