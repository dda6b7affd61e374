"""Membership changes: validation and application (thesis §4.1 and §4.3).

A ConfChange is a list of single changes. Zero or one voter change may use the
simple mode (one step, C_old -> C_new, safe because any majority of C_old and
any majority of C_new overlap). More than one voter change goes through a joint
config C_old,new: `apply_conf_change` enters joint, and an empty ConfChange
(`LEAVE_JOINT`) leaves it. The core leaves joint by itself once the entering
entry is applied (auto_leave).

Everything here is a pure function of (ConfState, ConfChange) so that every
replica computes the same config from the same log.
"""

from __future__ import annotations

import enum
import json
from typing import NamedTuple

from .errors import ConfChangeRejected
from .types import ConfState, NodeId


class ChangeKind(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1  # also demotes a voter to learner
    REMOVE_NODE = 2


class SingleChange(NamedTuple):
    kind: int
    node: NodeId


class ConfChange(NamedTuple):
    """Changes applied together. Empty `changes` means "leave the joint config"."""

    changes: tuple[SingleChange, ...] = ()
    # Force joint consensus even for a single voter change (thesis §4.3).
    joint: bool = False

    @property
    def is_leave_joint(self) -> bool:
        return not self.changes


LEAVE_JOINT = ConfChange()


def add_voter(*nodes: NodeId) -> ConfChange:
    return ConfChange(tuple(SingleChange(ChangeKind.ADD_VOTER, n) for n in nodes))


def add_learner(*nodes: NodeId) -> ConfChange:
    return ConfChange(tuple(SingleChange(ChangeKind.ADD_LEARNER, n) for n in nodes))


def remove_node(*nodes: NodeId) -> ConfChange:
    return ConfChange(tuple(SingleChange(ChangeKind.REMOVE_NODE, n) for n in nodes))


def encode_conf_change(cc: ConfChange) -> bytes:
    # JSON: conf changes are rare, and the core may not depend on cbor2.
    return json.dumps(
        [[[int(c.kind), c.node] for c in cc.changes], cc.joint], separators=(",", ":")
    ).encode()


def decode_conf_change(data: bytes) -> ConfChange:
    """Decode a committed conf change. Raises ConfChangeRejected on garbage."""
    try:
        changes, joint = json.loads(data)
        out = []
        for kind, node in changes:
            if not isinstance(node, str) or not node:
                raise ValueError(f"bad node id {node!r}")
            out.append(SingleChange(ChangeKind(kind), node))
        return ConfChange(tuple(out), bool(joint))
    except (ValueError, TypeError) as e:
        raise ConfChangeRejected(f"malformed conf change: {e}") from None


def uses_joint(cc: ConfChange, conf: ConfState) -> bool:
    """Joint consensus is needed when more than one voter changes (or asked for)."""
    if not conf.voters:
        return False  # bootstrapping a group: there is no old majority to keep
    if cc.joint:
        return True
    voters_after = _apply_changes(conf.voters, conf.learners, cc)[0]
    return len(voters_after ^ conf.voters) > 1


def apply_conf_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The config after `cc`. Raises ConfChangeRejected if it is unsafe."""
    if cc.is_leave_joint:
        if not conf.joint:
            raise ConfChangeRejected("not in a joint config: nothing to leave")
        new = ConfState(
            voters=conf.voters,
            learners=conf.learners | conf.learners_next,
        )
        new.check_invariants()
        return new
    if conf.joint:
        raise ConfChangeRejected("config is joint: leave it before another change")
    seen: set[NodeId] = set()
    for c in cc.changes:
        if c.node in seen:
            raise ConfChangeRejected(f"node {c.node} named twice in one change")
        seen.add(c.node)
    voters, learners = _apply_changes(conf.voters, conf.learners, cc)
    if not voters:
        raise ConfChangeRejected("the change would leave no voters")
    if uses_joint(cc, conf):
        # Voters demoted to learners stay voters in the outgoing half until
        # the joint config is left (they must still vote for C_old).
        learners_next = frozenset(n for n in learners if n in conf.voters)
        new = ConfState(
            voters=frozenset(voters),
            learners=frozenset(learners - learners_next),
            voters_outgoing=conf.voters,
            learners_next=learners_next,
            auto_leave=True,
        )
    else:
        new = ConfState(voters=frozenset(voters), learners=frozenset(learners))
    new.check_invariants()
    return new


def _apply_changes(
    voters: frozenset[NodeId], learners: frozenset[NodeId], cc: ConfChange
) -> tuple[set[NodeId], set[NodeId]]:
    vs, ls = set(voters), set(learners)
    for c in cc.changes:
        if c.kind == ChangeKind.ADD_VOTER:
            ls.discard(c.node)
            vs.add(c.node)
        elif c.kind == ChangeKind.ADD_LEARNER:
            vs.discard(c.node)
            ls.add(c.node)
        elif c.kind == ChangeKind.REMOVE_NODE:
            vs.discard(c.node)
            ls.discard(c.node)
        else:  # pragma: no cover - ChangeKind() rejects unknown kinds on decode
            raise ConfChangeRejected(f"unknown change kind {c.kind}")
    return vs, ls
