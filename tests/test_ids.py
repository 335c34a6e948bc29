"""Ids: the digest that records which rows a checkpoint was trained on."""

import hashlib

import numpy as np
import pytest
from helpers import reference_id_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from sisa.ids import id_bytes_array, id_mask, ids_digest, key_text, prefix_digests


def test_ids_digest_is_a_set_hash():
    assert ids_digest([1, 2, 3]) == ids_digest([3, 2, 1])
    assert ids_digest([1, 2]) != ids_digest(["1", "2"])
    assert ids_digest(["a", "bc"]) != ids_digest(["ab", "c"])


# The vectorised digest must give the bytes the per-id loop gave: workspaces on disk record them.



def reference_digest(ids):
    digest = hashlib.sha256()
    for b in sorted(reference_id_bytes(i) for i in ids):
        digest.update(len(b).to_bytes(8, "little"))
        digest.update(b)
    return digest.hexdigest()


INT64 = st.integers(-2**63, 2**63 - 1) | st.sampled_from([-2**63, 2**63 - 1, 0, -1, 1, 9, 10, -10])
CHARS = st.characters(codec=None) | st.sampled_from(["\x00", "é", "😀", "\x7f", "\x80", "-", ":", "\uffff"])
TEXT = st.text(CHARS, max_size=12) | st.text(CHARS, max_size=6).map(lambda s: s + "\x00")  # NUL last
BAD_TEXT = TEXT.map(lambda s: s + "\ud800")  # a lone surrogate: not UTF-8


def as_list(values):
    return list(values)


def as_tuple(values):
    return tuple(values)


def as_object_array(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def as_typed_array(dtype):
    return lambda values: np.array(values, dtype=dtype)


def id_inputs():
    """Ids in every shape the digest and the hashes accept, or refuse."""
    ints, uints = st.lists(INT64, max_size=40), st.lists(st.integers(0, 2**64 - 1), max_size=40)
    texts = st.lists(TEXT, max_size=40)
    return st.one_of(
        st.tuples(ints, st.sampled_from([as_list, as_tuple, as_object_array, as_typed_array(np.int64)])),
        st.tuples(st.lists(st.integers(0, 127), max_size=20),
                  st.sampled_from([as_typed_array(np.int32), as_typed_array(np.uint8), as_typed_array(np.int8),
                                   as_typed_array(np.uint16), lambda v: [np.int32(i) for i in v],
                                   lambda v: [np.uint32(i) for i in v] + [-1]])),
        st.tuples(uints, st.sampled_from([as_list, as_typed_array(np.uint64), as_object_array])),
        st.tuples(st.lists(st.integers(-2**70, 2**70), max_size=20), st.sampled_from([as_list, as_object_array])),
        st.tuples(texts, st.sampled_from([as_list, as_tuple, as_object_array, as_typed_array(str)])),
        st.tuples(st.lists(TEXT | BAD_TEXT, max_size=10), st.sampled_from([as_list, as_typed_array(str)])),
        st.tuples(st.lists(INT64 | TEXT, max_size=20), st.sampled_from([as_list, as_object_array])),
        st.tuples(st.lists(st.booleans() | st.integers(-5, 5), max_size=10),
                  st.sampled_from([as_list, as_object_array, as_typed_array(bool)])),
        st.tuples(st.lists(st.integers(0, 200), max_size=20),
                  st.sampled_from([lambda v: [np.int64(i) for i in v], lambda v: [np.uint8(i) for i in v],
                                   lambda v: [np.str_(str(i)) for i in v], lambda v: range(len(v))])),
    ).map(lambda pair: pair[1](pair[0]))


def outcome(f, *args):
    """What a call gives: its result, or the type and text of the error it raises."""
    try:
        return f(*args)
    except Exception as exc:  # noqa: BLE001 - the error must be the same one
        return type(exc), str(exc)


@settings(max_examples=400, deadline=None)
@given(ids=id_inputs())
def test_ids_digest_is_the_per_id_loop(ids):
    assert outcome(ids_digest, ids) == outcome(reference_digest, ids)


@settings(max_examples=200, deadline=None)
@given(ids=id_inputs())
def test_id_bytes_array_is_each_ids_bytes_or_nothing(ids):
    canonical = outcome(id_bytes_array, ids)
    if canonical is not None:
        assert isinstance(canonical, np.ndarray) and canonical.dtype.kind == "S"
        assert canonical.tolist() == [reference_id_bytes(i) for i in ids]


@pytest.mark.parametrize("ids", [
    [], (), np.array([], dtype=np.int64), np.array([], dtype=str), np.array([], dtype=object),
    np.array([], dtype=bool), [""], ["", ""], np.array(["", "a"], dtype=str), ["a\x00"], ["\x00"],
    ["a\x00", "a"], ["a\x00b", "a", "ab"], [-2**63, 2**63 - 1, 0], np.array([-2**63, 2**63 - 1, 0]),
    np.array([2**64 - 1, 0], dtype=np.uint64), [2**63], [True], np.array([True, False]), [1, True],
    ["x", 1], np.array([[1, 2], [3, 4]]), ["\ud800"], ["😀", "é", "e", "f"],
])
def test_ids_digest_edge_cases(ids):
    assert outcome(ids_digest, ids) == outcome(reference_digest, ids)


def test_ids_digest_of_other_iterables_and_large_inputs():
    assert ids_digest(iter([3, 1])) == reference_digest([3, 1]) == ids_digest({1, 3})
    assert ids_digest(i for i in ["b", "a"]) == reference_digest(["a", "b"])
    big = np.random.default_rng(0).integers(-2**63, 2**63 - 1, size=150_000)  # over several pieces
    assert ids_digest(big) == reference_digest(big.tolist())
    text = [f"user-{i}" if i % 3 else f"usér-{i}-😀" for i in range(70_000)]
    assert ids_digest(text) == ids_digest(np.array(text, dtype=object)) == reference_digest(text)
    long_one = ["a" * 200_000] + [str(i) for i in range(1000)]  # padding every id would be large
    assert ids_digest(long_one) == reference_digest(long_one)


def test_id_bytes_array_covers_the_usual_ids_and_only_exact_ones():
    for ids in (np.arange(3), [1, -2], np.array(["a", "b\x00c"], dtype=object), np.array(["é"]), ["", "x"]):
        assert id_bytes_array(ids) is not None
    for ids in (["a\x00"], [True], np.array([True]), [1, "a"], [2**63], iter([1]), ["\ud800"], np.zeros((2, 2))):
        assert id_bytes_array(ids) is None


# -- id_mask: the vectorised "is this id's key among these keys"

@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(-2**63, 2**63 - 1), max_size=30, unique=True),
       keys=st.sets(st.one_of(st.integers(-2**64, 2**64).map(lambda v: f"i:{v}"),
                              st.integers(-50, 50).map(lambda v: f"s:{v}"),
                              st.sampled_from(["i:007", "i:+7", "i:", "s:", "i:-0", "x:7"])), max_size=10))
def test_id_mask_over_integers_matches_key_text(ids, keys):
    ids = ids + [v for v in (7, 0) if v not in ids]  # the ids "i:007", "i:+7" and "i:-0" would wrongly name
    keys |= {key_text(v) for v in ids[::3]}  # some present
    expected = [key_text(v) in keys for v in ids]
    assert id_mask(np.array(ids, dtype=np.int64), keys).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.text(max_size=6), max_size=20, unique=True),
       keys=st.sets(st.text(max_size=6).map(lambda v: f"s:{v}"), max_size=5))
def test_id_mask_over_text_matches_key_text(ids, keys):
    keys |= {key_text(v) for v in ids[::2]} | {"i:3"}
    expected = [key_text(v) in keys for v in ids]
    assert id_mask(np.array(ids, dtype=object), keys).tolist() == expected


@settings(max_examples=150, deadline=None)
@given(ids=st.one_of(st.lists(st.integers(-2**63, 2**63 - 1), max_size=40, unique=True),
                     st.lists(st.text(max_size=5), max_size=40, unique=True)),
       cuts=st.lists(st.integers(0, 40), max_size=6))
def test_prefix_digests_are_the_digests_of_the_prefixes(ids, cuts):
    array = np.array(ids, dtype=object if ids and isinstance(ids[0], str) else np.int64)
    ends = sorted(min(c, len(ids)) for c in cuts)
    assert list(prefix_digests(array, ends)) == [ids_digest(array[:end]) for end in ends]
