"""Quorum arithmetic for simple majorities and joint configurations (thesis §4.3).

Only voters ever count. Learners are not passed in here at all, which is how
raft-lite's bug (learners counted in quorums) cannot happen.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from .types import NodeId


class VoteResult(enum.Enum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority_index(voters: Collection[NodeId], acked: Mapping[NodeId, int]) -> int:
    """The largest index acknowledged by a majority of `voters`.

    An empty voter set places no constraint: it returns a huge number so that
    `min()` with the other half of a joint config picks the other half. A voter
    missing from `acked` counts as having acknowledged 0.
    """
    n = len(voters)
    if n == 0:
        return 1 << 62
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return values[n // 2]


def joint_index(
    incoming: Collection[NodeId], outgoing: Collection[NodeId], acked: Mapping[NodeId, int]
) -> int:
    """Committed index of a (possibly joint) config: both majorities must agree."""
    return min(majority_index(incoming, acked), majority_index(outgoing, acked))


def majority_vote(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = len(voters) // 2 + 1
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def joint_vote(
    incoming: Collection[NodeId], outgoing: Collection[NodeId], votes: Mapping[NodeId, bool]
) -> VoteResult:
    a = majority_vote(incoming, votes)
    b = majority_vote(outgoing, votes)
    if a == b:
        return a
    if VoteResult.LOST in (a, b):
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(
    incoming: Collection[NodeId], outgoing: Collection[NodeId], alive: Collection[NodeId]
) -> bool:
    votes = {v: True for v in alive}
    return joint_vote(incoming, outgoing, votes) == VoteResult.WON
