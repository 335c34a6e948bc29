import hashlib

import numpy as np
import pytest
from helpers import reference_id_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from sisa.data.partition import assign, check_sizes, partition_keys, shard_order
from sisa.data.sources import held_out_mask
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


# The hashes of ids decide where rows live and which are held out in workspaces on disk: the
# vectorised ones must be the per-id loops they replace, bit for bit, errors included.


def reference_partition_keys(ids, seed):
    key = b"sisa-partition:%d" % seed
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(reference_id_bytes(i), digest_size=8, key=key).digest(), "little")
         for i in ids), dtype=np.uint64)


def reference_held_out_mask(ids, fraction):
    threshold = int(fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(reference_id_bytes(i), digest_size=8, person=b"sisa-test").digest(),
                        "little") < threshold for i in ids),
        dtype=bool, count=len(ids))


CHARS = st.characters(codec=None) | st.sampled_from(["\x00", "é", "😀", "\x80", "-", ":"])
TEXT = st.text(CHARS, max_size=10) | st.text(CHARS, max_size=5).map(lambda s: s + "\x00")


def object_array(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


ID_INPUTS = st.one_of(
    st.tuples(st.lists(st.integers(-2**63, 2**63 - 1) | st.sampled_from([-2**63, 2**63 - 1, 0]), max_size=30),
              st.sampled_from([list, tuple, object_array, lambda v: np.array(v, dtype=np.int64)])),
    st.tuples(st.lists(st.integers(0, 2**64 - 1), max_size=30),
              st.sampled_from([list, lambda v: np.array(v, dtype=np.uint64)])),
    st.tuples(st.lists(st.integers(0, 100), max_size=30),
              st.sampled_from([lambda v: np.array(v, dtype=np.int32), lambda v: np.array(v, dtype=np.uint8),
                               lambda v: [np.int64(i) for i in v], lambda v: range(len(v))])),
    st.tuples(st.lists(TEXT | TEXT.map(lambda s: s + "\ud800"), max_size=30),
              st.sampled_from([list, tuple, object_array, lambda v: np.array(v, dtype=str)])),
    st.tuples(st.lists(st.integers(-3, 3) | TEXT | st.booleans(), max_size=10),
              st.sampled_from([list, object_array])),
    st.tuples(st.lists(st.booleans(), max_size=5), st.sampled_from([list, lambda v: np.array(v, dtype=bool)])),
).map(lambda pair: pair[1](pair[0]))


def outcome(f, *args):
    """A call's result (its values, dtype and writability), or the type and text of its error."""
    try:
        out = f(*args)
    except Exception as exc:  # noqa: BLE001 - the error must be the same one
        return type(exc), str(exc)
    return out.tolist(), out.dtype, out.shape, out.flags.writeable


@settings(max_examples=300, deadline=None)
@given(ids=ID_INPUTS, seed=st.integers(-2**70, 2**70) | st.just(10**60))  # 10**60: a key too long
def test_partition_keys_are_the_per_id_loop(ids, seed):
    assert outcome(partition_keys, ids, seed) == outcome(reference_partition_keys, ids, seed)


@settings(max_examples=300, deadline=None)
@given(ids=ID_INPUTS, fraction=st.floats(0, 1, exclude_min=True, exclude_max=True)
       | st.sampled_from([0.2, 0.5, 0.0, 1.0, -0.5, 2.0, 1 - 2**-53, 2**-64, 2**-65, 0.99999999999999]))
def test_held_out_mask_is_the_per_id_loop(ids, fraction):
    assert outcome(held_out_mask, ids, fraction) == outcome(reference_held_out_mask, ids, fraction)


def test_hashes_of_many_ids_are_the_per_id_loop():
    ids = np.random.default_rng(1).integers(-2**63, 2**63 - 1, size=140_000)  # several pieces
    assert np.array_equal(partition_keys(ids, 3), reference_partition_keys(ids, 3))
    assert np.array_equal(held_out_mask(ids, 0.3), reference_held_out_mask(ids, 0.3))
    text = np.array([f"user-{i}" if i % 3 else f"usér-{i}-😀" for i in range(20_000)], dtype=object)
    assert np.array_equal(partition_keys(text, 0), reference_partition_keys(text, 0))
    assert np.array_equal(held_out_mask(text, 0.2), reference_held_out_mask(text, 0.2))
    assert np.array_equal(partition_keys(iter([1, "a"]), 5), reference_partition_keys([1, "a"], 5))
    for keys_of in ([], np.array([], dtype=np.int64), [1], np.array([1])):  # a key too long for blake2b
        assert outcome(partition_keys, keys_of, 10**60) == outcome(reference_partition_keys, keys_of, 10**60)
    for fraction in (float("nan"), float("inf")):
        assert outcome(held_out_mask, ids[:3], fraction) == outcome(reference_held_out_mask, ids[:3], fraction)
