"""Table tests for the core's pure math: quorums (majority and joint, thesis
§4.3) and membership changes (apply_conf_change / uses_joint, thesis §4.1, §4.3).

Learners are never passed to the quorum functions; the tests check that a
learner's acknowledgement or vote cannot matter even when it is in the map.
"""

from __future__ import annotations

import pytest

from multiraft.raft.confchange import (
    LEAVE_JOINT,
    ChangeKind,
    ConfChange,
    SingleChange,
    add_learner,
    add_voter,
    apply_conf_change,
    decode_conf_change,
    encode_conf_change,
    remove_node,
    uses_joint,
)
from multiraft.raft.errors import ConfChangeRejected
from multiraft.raft.quorum import (
    VoteResult,
    has_quorum,
    joint_index,
    joint_vote,
    majority_index,
    majority_vote,
)
from multiraft.raft.types import ConfState

BIG = 1 << 62
W, L, P = VoteResult.WON, VoteResult.LOST, VoteResult.PENDING


def fs(s: str) -> frozenset:
    return frozenset(s.split()) if s else frozenset()


# ---- majority_index ------------------------------------------------------------

MAJORITY_INDEX = [
    # voters, acked, expected
    ("", {}, BIG),  # empty half: no constraint
    ("a", {"a": 7}, 7),
    ("a", {}, 0),
    ("a b", {"a": 5, "b": 3}, 3),  # two voters: both needed
    ("a b c", {"a": 5, "b": 3, "c": 1}, 3),
    ("a b c", {"a": 5}, 0),  # missing voters count as 0
    ("a b c", {"a": 5, "b": 5}, 5),
    ("a b c d", {"a": 9, "b": 8, "c": 7, "d": 6}, 7),  # 3 of 4 needed
    ("a b c d e", {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, 3),
    # a learner "z" in the map never counts
    ("a b c", {"a": 5, "z": 100}, 0),
    ("a b", {"a": 5, "z": 5}, 0),
]


@pytest.mark.parametrize("voters, acked, expected", MAJORITY_INDEX)
def test_majority_index_is_largest_index_a_majority_acked_thesis_4_3(voters, acked, expected):
    assert majority_index(fs(voters), acked) == expected


# ---- joint_index ---------------------------------------------------------------

JOINT_INDEX = [
    # incoming, outgoing, acked, expected
    ("a b c", "", {"a": 4, "b": 4, "c": 1}, 4),  # not joint: plain majority
    ("", "a b c", {"a": 4, "b": 4, "c": 1}, 4),  # an empty half is no constraint
    ("a b c", "a b c", {"a": 4, "b": 2, "c": 1}, 2),
    # Incoming {a,d,e} has a majority at 9, outgoing {a,b,c} only at 1.
    ("a d e", "a b c", {"a": 9, "d": 9, "e": 9, "b": 1, "c": 1}, 1),
    # And the other way round.
    ("a d e", "a b c", {"a": 9, "b": 9, "c": 9, "d": 1, "e": 1}, 1),
    ("a d e", "a b c", {"a": 9, "b": 9, "d": 7, "c": 0, "e": 0}, 7),
    ("a", "a b c", {"a": 3, "b": 3, "c": 0}, 3),
    ("a", "a b c", {"a": 3}, 0),
]


@pytest.mark.parametrize("incoming, outgoing, acked, expected", JOINT_INDEX)
def test_joint_index_needs_both_majorities_thesis_4_3(incoming, outgoing, acked, expected):
    assert joint_index(fs(incoming), fs(outgoing), acked) == expected


def test_joint_index_of_two_empty_halves_places_no_constraint():
    # The caller (commit rule) then checks the term of a huge index: never commits.
    assert joint_index(frozenset(), frozenset(), {"a": 3}) == BIG


# ---- majority_vote / joint_vote -----------------------------------------------

MAJORITY_VOTE = [
    ("", {}, W),  # empty config: trivially won (callers never campaign with none)
    ("a", {"a": True}, W),
    ("a", {"a": False}, L),
    ("a", {}, P),
    ("a b", {"a": True}, P),
    ("a b", {"a": True, "b": False}, L),
    ("a b", {"a": True, "b": True}, W),
    ("a b c", {"a": True}, P),
    ("a b c", {"a": True, "b": True}, W),
    ("a b c", {"a": True, "b": False}, P),
    ("a b c", {"a": True, "b": False, "c": False}, L),
    ("a b c d", {"a": True, "b": True}, P),  # 2 of 4: not a majority
    ("a b c d", {"a": True, "b": True, "c": False, "d": False}, L),  # split vote
    ("a b c d", {"a": True, "b": True, "c": True}, W),
    # learner "z" granting cannot turn a pending election into a win
    ("a b c", {"a": True, "z": True}, P),
    ("a b", {"a": True, "z": True, "y": True}, P),
]


@pytest.mark.parametrize("voters, votes, expected", MAJORITY_VOTE)
def test_majority_vote_counts_only_voters_5_2(voters, votes, expected):
    assert majority_vote(fs(voters), votes) == expected


JOINT_VOTE = [
    # incoming, outgoing, votes, expected
    ("a b c", "", {"a": True, "b": True}, W),
    ("", "a b c", {"a": True, "b": True}, W),  # empty incoming half
    ("", "", {}, W),
    ("a d e", "a b c", {"a": True, "d": True, "e": True}, P),  # outgoing pending
    ("a d e", "a b c", {"a": True, "d": True, "b": True}, W),
    ("a d e", "a b c", {"a": True, "d": True, "b": False, "c": False}, L),
    ("a d e", "a b c", {"a": True, "b": True, "d": False, "e": False}, L),
    ("a d e", "a b c", {"a": True}, P),
    # both halves lost
    ("a b", "c d", {"a": False, "c": False}, L),
    ("a", "a b c", {"a": True}, P),
    ("a", "a b c", {"a": True, "c": True}, W),
]


@pytest.mark.parametrize("incoming, outgoing, votes, expected", JOINT_VOTE)
def test_joint_vote_needs_both_majorities_thesis_4_3(incoming, outgoing, votes, expected):
    assert joint_vote(fs(incoming), fs(outgoing), votes) == expected


HAS_QUORUM = [
    ("a b c", "", "a", False),
    ("a b c", "", "a b", True),
    ("a b c", "", "a z y", False),  # learners/unknowns alive do not help
    ("a d e", "a b c", "a d e", False),
    ("a d e", "a b c", "a d b", True),
    ("a", "", "a", True),
]


@pytest.mark.parametrize("incoming, outgoing, alive, expected", HAS_QUORUM)
def test_has_quorum_check_quorum_thesis_6_2(incoming, outgoing, alive, expected):
    assert has_quorum(fs(incoming), fs(outgoing), fs(alive)) is expected


# ---- apply_conf_change / uses_joint ------------------------------------------


def cs(voters="", learners="", outgoing="", learners_next="", auto_leave=False) -> ConfState:
    return ConfState(fs(voters), fs(learners), fs(outgoing), fs(learners_next), auto_leave)


def cc(*pairs, joint=False) -> ConfChange:
    kinds = {"+v": ChangeKind.ADD_VOTER, "+l": ChangeKind.ADD_LEARNER, "-": ChangeKind.REMOVE_NODE}
    return ConfChange(tuple(SingleChange(kinds[k], n) for k, n in pairs), joint)


APPLY_OK = [
    # name, before, change, uses_joint, after
    ("bootstrap", cs(), add_voter("a", "b", "c"), False, cs("a b c")),
    ("add one voter simple", cs("a b c"), add_voter("d"), False, cs("a b c d")),
    ("remove one voter simple", cs("a b c"), remove_node("c"), False, cs("a b")),
    ("add learner", cs("a b c"), add_learner("d"), False, cs("a b c", "d")),
    ("promote learner simple", cs("a b c", "d"), add_voter("d"), False, cs("a b c d")),
    ("demote voter simple", cs("a b c"), add_learner("c"), False, cs("a b", "c")),
    ("remove learner", cs("a b c", "d"), remove_node("d"), False, cs("a b c")),
    ("re-add existing voter is a no-op", cs("a b c"), add_voter("a"), False, cs("a b c")),
    ("remove unknown node is a no-op", cs("a b c"), remove_node("z"), False, cs("a b c")),
    (
        "replace two voters: joint",
        cs("a b c"),
        cc(("+v", "d"), ("+v", "e"), ("-", "b"), ("-", "c")),
        True,
        cs("a d e", "", "a b c", "", True),
    ),
    (
        "add two voters: joint",
        cs("a b c"),
        add_voter("d", "e"),
        True,
        cs("a b c d e", "", "a b c", "", True),
    ),
    (
        "single change forced joint",
        cs("a b c"),
        cc(("+v", "d"), joint=True),
        True,
        cs("a b c d", "", "a b c", "", True),
    ),
    (
        "swap voter for voter: joint (two voters change)",
        cs("a b c"),
        cc(("-", "c"), ("+v", "d")),
        True,
        cs("a b d", "", "a b c", "", True),
    ),
    (
        "demotion in joint goes through learners_next",
        cs("a b c"),
        cc(("+l", "c"), ("+v", "d")),
        True,
        cs("a b d", "", "a b c", "c", True),
    ),
    (
        "joint keeps existing learners",
        cs("a b c", "z"),
        cc(("+v", "d"), ("+v", "e")),
        True,
        cs("a b c d e", "z", "a b c", "", True),
    ),
    (
        "joint promoting a learner",
        cs("a b c", "z"),
        cc(("+v", "z"), ("-", "a")),
        True,
        cs("b c z", "", "a b c", "", True),
    ),
    ("leave joint", cs("a d e", "", "a b c", "", True), LEAVE_JOINT, False, cs("a d e")),
    (
        "leave joint turns learners_next into learners",
        cs("a b d", "", "a b c", "c", True),
        LEAVE_JOINT,
        False,
        cs("a b d", "c"),
    ),
    (
        "leave joint keeps learners",
        cs("a b c d e", "z", "a b c", "", True),
        LEAVE_JOINT,
        False,
        cs("a b c d e", "z"),
    ),
]


@pytest.mark.parametrize(
    "before, change, joint, after", [r[1:] for r in APPLY_OK], ids=[r[0] for r in APPLY_OK]
)
def test_apply_conf_change_table_thesis_4_3(before, change, joint, after):
    if not change.is_leave_joint:
        assert uses_joint(change, before) is joint
    got = apply_conf_change(before, change)
    got.check_invariants()
    assert got == after
    # The change survives its log encoding unchanged.
    assert decode_conf_change(encode_conf_change(change)) == change


APPLY_REJECTED = [
    ("zero voters after remove", cs("a"), remove_node("a")),
    ("zero voters after demote", cs("a"), add_learner("a")),
    ("zero voters at bootstrap", cs(), add_learner("a")),
    ("node named twice", cs("a b c"), cc(("+v", "d"), ("-", "d"))),
    ("node named twice same kind", cs("a b c"), add_voter("d", "d")),
    ("change while joint", cs("a d e", "", "a b c", "", True), add_voter("f")),
    ("learner change while joint", cs("a d e", "", "a b c", "", True), add_learner("f")),
    ("leave joint when not joint", cs("a b c"), LEAVE_JOINT),
    ("remove every voter in joint", cs("a b"), remove_node("a", "b")),
]


@pytest.mark.parametrize(
    "before, change", [r[1:] for r in APPLY_REJECTED], ids=[r[0] for r in APPLY_REJECTED]
)
def test_apply_conf_change_rejects_unsafe_changes_thesis_4_3(before, change):
    with pytest.raises(ConfChangeRejected):
        apply_conf_change(before, change)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"[[[9,\"a\"]],false]", b"[[[0,\"\"]],false]", b"[[[0,3]],false]", b"{}"],
)
def test_decode_conf_change_rejects_garbage_with_typed_error(data):
    with pytest.raises(ConfChangeRejected):
        decode_conf_change(data)


def test_joint_config_invariants_hold_for_every_table_result():
    # learners_next is a subset of voters_outgoing; joint <=> outgoing non-empty.
    for _, before, change, _, _ in APPLY_OK:
        after = apply_conf_change(before, change)
        assert after.learners_next <= after.voters_outgoing
        assert after.joint == bool(after.voters_outgoing)
        assert not (after.voters & after.learners)
