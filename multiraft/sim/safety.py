"""Safety properties, checked after every step (Raft paper §5.2, §5.3, §5.4).

Each check raises SafetyViolation naming the property and the evidence.
"""

from __future__ import annotations

from multiraft.raft.types import Entry


class SafetyViolation(Exception):
    pass


class SafetyChecker:
    def __init__(self) -> None:
        # Election Safety: at most one leader per (group, term).
        self._leaders: dict[tuple[int, int], str] = {}
        # Log Matching, by induction: every (group, index, term) names one
        # entry, and that entry always follows the same previous term. If two
        # logs hold the same (index, term), their previous terms agree, and so
        # on down to index 1: the logs agree on the whole prefix.
        self._entries: dict[tuple[int, int, int], tuple[int, bytes, int]] = {}
        # State Machine Safety: every replica applies the same entry at an index.
        self._applied: dict[int, dict[int, tuple[int, bytes]]] = {}
        # Leader Completeness: entries known committed, by (group) -> index ->
        # (entry term, term of the leader that committed it).
        self._committed: dict[int, dict[int, tuple[int, int]]] = {}
        self._committed_max: dict[int, int] = {}

    def on_leader(self, group: int, term: int, node: str, log) -> None:
        key = (group, term)
        other = self._leaders.get(key)
        if other is not None and other != node:
            raise SafetyViolation(
                f"election safety: group {group} term {term} has two leaders, {other} and {node}"
            )
        self._leaders[key] = node
        if other is None:
            self._check_complete(group, node, term, log)

    def _check_complete(self, group: int, node: str, term: int, log) -> None:
        """§5.4, Figure 3: an entry committed in a term is in the log of every
        leader of a *higher* term. (A leader of an older term can still be
        elected late, say when a paused candidate resumes and tallies votes
        granted long ago; it can commit nothing, as every voter has moved on,
        and commit safety and state machine safety below would catch it.)"""
        committed = self._committed.get(group, {})
        for index in range(log.snapshot_index + 1, self._committed_max.get(group, 0) + 1):
            known = committed.get(index)
            if known is None or known[1] >= term:
                continue
            want = known[0]
            have = log.term(index)
            if have != want:
                raise SafetyViolation(
                    f"leader completeness: group {group} new leader {node} has term {have} "
                    f"at committed index {index}, expected term {want}"
                )

    def on_persist(self, group: int, node: str, entries, prev_term_of) -> None:
        for e in entries:
            prev = prev_term_of(e.index - 1)
            key = (group, e.index, e.term)
            seen = self._entries.get(key)
            value = (e.type, e.data, prev)
            if seen is None:
                self._entries[key] = value
            elif seen[:2] != value[:2]:
                raise SafetyViolation(
                    f"log matching: group {group} index {e.index} term {e.term} holds two "
                    f"different entries (node {node})"
                )
            elif prev is not None and seen[2] is not None and seen[2] != prev:
                raise SafetyViolation(
                    f"log matching: group {group} node {node} entry ({e.index}, {e.term}) "
                    f"follows term {prev}, elsewhere term {seen[2]}"
                )

    def on_commit(self, group: int, log, old: int, new: int, leader_term: int) -> None:
        committed = self._committed.setdefault(group, {})
        for index in range(max(old + 1, log.snapshot_index + 1), new + 1):
            term = log.term(index)
            have = committed.get(index)
            if have is not None and have[0] != term:
                raise SafetyViolation(
                    f"commit safety: group {group} index {index} committed with term {have[0]} "
                    f"and with term {term}"
                )
            if have is None or leader_term < have[1]:
                committed[index] = (term, leader_term)
        self._committed_max[group] = max(self._committed_max.get(group, 0), new)

    def on_apply(self, group: int, node: str, e: Entry) -> None:
        applied = self._applied.setdefault(group, {})
        have = applied.get(e.index)
        if have is None:
            applied[e.index] = (e.term, e.data)
        elif have != (e.term, e.data):
            raise SafetyViolation(
                f"state machine safety: group {group} node {node} applied a different entry "
                f"at index {e.index} (term {e.term}, elsewhere term {have[0]})"
            )
