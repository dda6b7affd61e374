"""Unit tests of RaftLog and Progress: the log-level claims of §5.3 and §5.4.1
and the flow-control bookkeeping, without a network."""

from __future__ import annotations

import pytest

from multiraft.raft.log import LogCompacted, RaftLog
from multiraft.raft.progress import Inflights, Progress, ProgressState
from multiraft.raft.types import ConfState, Entry, EntryType, Snapshot, SnapshotMeta


def E(index, term, data=b""):
    return Entry(term, index, EntryType.NORMAL, data)


def log_of(*terms, snapshot=(0, 0)) -> RaftLog:
    """A log whose entries after the snapshot have the given terms."""
    si, st = snapshot
    lg = RaftLog(snapshot_index=si, snapshot_term=st, committed=si, applied=si, applying=si,
                 stable_index=si)
    lg.append([E(si + 1 + k, t) for k, t in enumerate(terms)])
    return lg


def terms(lg: RaftLog) -> list[int]:
    return [e.term for e in lg.entries]


# ---- §5.4.1 election restriction ----------------------------------------------

UP_TO_DATE = [
    # my log terms, candidate (last_index, last_term), granted?
    ((1, 1, 2), (3, 2), True),  # identical
    ((1, 1, 2), (4, 2), True),  # same last term, longer
    ((1, 1, 2), (2, 2), False),  # same last term, shorter
    ((1, 1, 2), (1, 3), True),  # higher last term wins even if much shorter
    ((1, 1, 2), (9, 1), False),  # lower last term loses even if much longer
    ((), (0, 0), True),  # both empty
    ((1,), (0, 0), False),  # empty candidate vs non-empty voter
    ((), (1, 1), True),
]


@pytest.mark.parametrize("mine, cand, granted", UP_TO_DATE)
def test_election_restriction_candidate_log_must_be_up_to_date_5_4_1(mine, cand, granted):
    assert log_of(*mine).is_up_to_date(*cand) is granted


def test_election_restriction_uses_snapshot_term_when_log_is_compacted_5_4_1():
    lg = log_of(snapshot=(10, 3))
    assert lg.is_up_to_date(10, 3)
    assert not lg.is_up_to_date(9, 3)
    assert not lg.is_up_to_date(20, 2)


# ---- §5.3 log matching and consistency check ----------------------------------


def test_append_consistency_check_rejects_mismatched_prev_5_3():
    lg = log_of(1, 1, 2)
    assert lg.maybe_append(3, 1, 0, (E(4, 2),)) is None  # prev term differs
    assert lg.maybe_append(5, 2, 0, (E(6, 2),)) is None  # prev beyond the end
    assert terms(lg) == [1, 1, 2]


def test_append_replaces_conflicting_suffix_5_3():
    lg = log_of(1, 1, 2, 2, 2)
    last = lg.maybe_append(2, 1, 0, (E(3, 3), E(4, 3)))
    assert last == 4
    assert terms(lg) == [1, 1, 3, 3]  # entry 5 (term 2) went with the conflict
    assert lg.stable_index <= 2  # the replaced entries are no longer durable


def test_log_matching_same_index_and_term_implies_same_prefix_5_3():
    a, b = log_of(1, 1, 2), log_of(1, 1)
    assert b.maybe_append(2, 1, 0, (E(3, 2),)) == 3
    assert a.entries == b.entries


@pytest.mark.parametrize("replay", [(E(2, 1),), (E(2, 1), E(3, 2)), ()])
def test_duplicate_or_reordered_append_never_truncates_matching_entries_5_3(replay):
    lg = log_of(1, 1, 2, 2, 2)
    before = list(lg.entries)
    # An old append (prev=1) carrying a prefix of what we already have.
    assert lg.maybe_append(1, 1, 0, replay) == 1 + len(replay)
    assert lg.entries == before


def test_append_does_not_move_commit_past_the_last_new_entry_5_3():
    # The leader's commit may be ahead; a follower only commits what it knows
    # matches (up to prev + len(entries)), not its possibly stale suffix.
    lg = log_of(1, 1, 1, 1)
    lg.maybe_append(2, 1, 10, ())
    assert lg.committed == 2


def test_append_below_snapshot_skips_compacted_entries():
    lg = log_of(2, 2, snapshot=(5, 2))
    lg.committed = lg.applied = lg.applying = 5
    # An append whose first entries are already compacted into the snapshot.
    assert lg.maybe_append(5, 2, 5, (E(6, 2), E(7, 2), E(8, 2))) == 8
    assert [e.index for e in lg.entries] == [6, 7, 8]


def test_find_conflict_by_term_skips_whole_terms_fast_backoff_5_3():
    lg = log_of(1, 1, 2, 2, 2, 4, 4)
    assert lg.find_conflict_by_term(7, 3) == 5  # last index with term <= 3
    assert lg.find_conflict_by_term(7, 5) == 7
    assert lg.find_conflict_by_term(20, 2) == 5  # clamped to the last index
    assert lg.find_conflict_by_term(7, 0) == 0
    compacted = log_of(5, 6, snapshot=(4, 3))
    assert compacted.find_conflict_by_term(6, 1) == 4  # stops at the snapshot


def test_slice_respects_size_limit_but_returns_at_least_one_entry():
    lg = RaftLog()
    lg.append([E(i, 1, b"x" * 100) for i in range(1, 6)])
    assert len(lg.slice(1, 6, 1)) == 1
    assert len(lg.slice(1, 6, 2 * 124)) == 2
    assert len(lg.slice(1, 6, 1 << 30)) == 5
    with pytest.raises(LogCompacted):
        log_of(1, snapshot=(3, 1)).slice(2, 4, 100)


def test_restore_snapshot_replaces_log_and_compact_keeps_suffix():
    lg = log_of(1, 1, 2, 2)
    lg.committed = lg.applied = lg.applying = 3
    lg.compact(2)
    assert (lg.snapshot_index, lg.snapshot_term) == (2, 1)
    assert lg.term(2) == 1 and lg.term(1) is None
    assert [e.index for e in lg.entries] == [3, 4]
    lg.check_invariants()
    snap = Snapshot(SnapshotMeta(9, 3, ConfState(frozenset({"a"}))), b"")
    lg.restore(snap)
    assert (lg.last_index(), lg.last_term(), lg.committed) == (9, 3, 9)
    lg.check_invariants()


# ---- Progress: the leader's view of a follower --------------------------------


def progress(match=0, next_index=1, state=ProgressState.PROBE, count=4, nbytes=1 << 20):
    return Progress(match, next_index, Inflights(count, nbytes), state)


def test_rejected_append_never_raises_match_index_raft_lite_bug():
    pr = progress(match=3, next_index=8, state=ProgressState.REPLICATE)
    assert pr.maybe_decrease_to(rejected=7, hint=5)
    assert pr.match == 3
    pr.become_probe()
    assert pr.next_index == 4
    # Even a rejection that contradicts an earlier ack cannot lower or raise match.
    pr.maybe_decrease_to(rejected=3, hint=0)
    assert (pr.match, pr.next_index) == (3, 4)
    assert pr.maybe_decrease_to(rejected=6, hint=9) is False  # not the outstanding probe
    assert (pr.match, pr.next_index) == (3, 4)


def test_probe_rejection_uses_hint_but_never_goes_below_match_plus_one():
    pr = progress(match=2, next_index=10)
    assert pr.maybe_decrease_to(rejected=9, hint=5)
    assert pr.next_index == 6
    pr = progress(match=2, next_index=10)
    assert pr.maybe_decrease_to(rejected=9, hint=0)
    assert pr.next_index == 3


def test_stale_rejection_in_replicate_is_ignored():
    pr = progress(match=5, next_index=9, state=ProgressState.REPLICATE)
    assert pr.maybe_decrease_to(rejected=4, hint=1) is False
    assert (pr.match, pr.next_index) == (5, 9)


def test_duplicate_ack_does_not_move_match_backwards():
    pr = progress(match=5, next_index=6)
    assert pr.maybe_update(5) is False
    assert pr.maybe_update(3) is False
    assert pr.match == 5
    assert pr.maybe_update(8)
    assert (pr.match, pr.next_index) == (8, 9)


def test_inflights_bounded_by_count_and_bytes():
    fl = Inflights(count_max=3, bytes_max=1000)
    fl.add(1, 10)
    fl.add(2, 10)
    assert not fl.full()
    fl.add(3, 10)
    assert fl.full()  # count bound
    fl.free_to(2)
    assert len(fl) == 1 and not fl.full()
    fl.add(4, 995)
    assert fl.full()  # byte bound (1005 >= 1000) with only 2 in flight
    fl.free_first()
    assert not fl.full()
    fl.reset()
    assert len(fl) == 0


def test_probe_state_pauses_after_one_append_and_snapshot_state_always_pauses():
    pr = progress()
    assert not pr.is_paused()
    pr.probe_sent = True
    assert pr.is_paused()
    pr.become_snapshot(10)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next_index == 11 and not pr.is_paused()
