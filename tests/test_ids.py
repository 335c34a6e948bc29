"""Ids: the digest that records which rows a checkpoint was trained on."""

from sisa.ids import ids_digest


def test_ids_digest_is_a_set_hash():
    assert ids_digest([1, 2, 3]) == ids_digest([3, 2, 1])
    assert ids_digest([1, 2]) != ids_digest(["1", "2"])
    assert ids_digest(["a", "bc"]) != ids_digest(["ab", "c"])
