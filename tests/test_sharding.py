"""The key -> group mapping: stable forever, in range, spread evenly."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, strategies as st

from multiraft.sharding import KEY_HASH_NAME, group_for_key, key_hash


def test_key_hash_is_crc32_iso_hdlc_with_its_standard_check_value():
    assert KEY_HASH_NAME == "crc32-iso-hdlc-mod"
    assert key_hash(b"123456789") == 0xCBF43926


# Pinned: data is placed by these answers, so they must never change.
PINNED = [
    (b"", 0, [0, 0, 0, 0]),
    (b"a", 0xE8B7BE43, [0, 0, 3, 907]),
    (b"foo", 0x8C736521, [0, 2, 1, 769]),
    (b"user:1", 2074460802, [0, 0, 2, 802]),
    (b"user:2", 3802960696, [0, 1, 8, 696]),
    (b"\x00\xff" * 3, 3896294735, [0, 2, 15, 735]),
    ("ключ".encode(), 212833818, [0, 0, 10, 818]),
]


@pytest.mark.parametrize("key,hash_value,groups_answers", PINNED)
def test_group_for_key_matches_pinned_values(key, hash_value, groups_answers):
    assert key_hash(key) == hash_value
    assert [group_for_key(key, g) for g in (1, 3, 16, 1000)] == groups_answers


@given(st.binary(max_size=64), st.integers(1, 100_000))
def test_group_for_key_is_in_range_and_is_the_hash_modulo_groups(key, groups):
    group = group_for_key(key, groups)
    assert 0 <= group < groups
    assert group == key_hash(key) % groups


def test_group_for_key_accepts_any_bytes_like_key_with_the_same_answer():
    assert group_for_key(bytearray(b"foo"), 16) == group_for_key(memoryview(b"foo"), 16) == 1


def test_group_for_key_spreads_sequential_keys_evenly():
    groups = 16
    counts = collections.Counter(group_for_key(b"user:%d" % i, groups) for i in range(32_000))
    assert len(counts) == groups
    assert max(counts.values()) < 1.1 * 2000 and min(counts.values()) > 0.9 * 2000


@pytest.mark.parametrize("groups", [0, -1, 1.0, None])
def test_group_for_key_rejects_a_bad_group_count(groups):
    with pytest.raises(ValueError):
        group_for_key(b"k", groups)


@pytest.mark.parametrize("key", ["text", None, 5])
def test_group_for_key_rejects_non_bytes_keys(key):
    with pytest.raises(TypeError):
        group_for_key(key, 4)
    with pytest.raises(TypeError):
        key_hash(key)
