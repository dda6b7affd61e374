"""Restarting one group from the log and the snapshot store (blocking).

A persist round writes in this order (workers/worker.py, docs/storage.md):
the snapshot first (durable: files fsynced, renamed, the directory fsynced),
then one log write carrying the log's new base (compact_to), the entries and
the hard state, then one fsync. A crash can stop between any two of these, and
a power loss keeps only a prefix of the unsynced write. recover_group() loads a
group, finishes what such a crash interrupted (multiraft.raft.log.follow_snapshot,
the same rule the simulator's disk applies), writes that repair durably and
says why; anything a crash cannot explain is refused with
LogDoesNotFollowSnapshot naming the group and the files, changing nothing.
"""

from __future__ import annotations

import logging

import attrs

from multiraft.raft.errors import LogDoesNotFollowSnapshot
from multiraft.raft.log import check_follows_snapshot, follow_snapshot, reset_needed
from multiraft.raft.types import Entry, HardState, Snapshot

from .batch import GroupWrite

logger = logging.getLogger(__name__)


@attrs.frozen
class RecoveredGroup:
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: list[Entry]
    # Why the log was repaired on the way in (None: it was consistent).
    repaired: str | None = None


def recover_group(log, snapshots, group: int, *, sync: bool = True) -> RecoveredGroup:
    """Load `group` from a SegmentedLog (or any GroupReads engine with write())
    and a SnapshotStore. Raises LogDoesNotFollowSnapshot (nothing written) for
    a log that does not follow the snapshot; StorageError for unreadable files."""
    snap = snapshots.load_snapshot(group)
    hs = log.hard_state(group)
    base, _base_term = log.compacted_to(group)
    first, last = log.first_index(group), log.last_index(group)
    entries = log.entries(group, first, last + 1) if last >= first else []
    meta = snap.meta if snap is not None else None
    snap_index = meta.index if meta is not None else 0
    where = f"the log in {log.path} and the snapshot store in {snapshots.directory}"
    if base > snap_index:
        what = f"the snapshot ends at index {snap_index}" if snap is not None else "there is no snapshot"
        raise LogDoesNotFollowSnapshot(
            f"the log is compacted to index {base} but {what} ({where}): "
            "a snapshot older than the log's compaction, or lost",
            group,
        )
    if meta is not None and hs is None:
        info = snapshots.snapshot_info(group)
        raise LogDoesNotFollowSnapshot(
            f"the snapshot {info['path'] if info else ''} (index {meta.index}, term {meta.term}) "
            f"has no hard state in the log in {log.path}: an emptied or lost log segment; nothing changed",
            group,
        )
    hs2, entries2, reason = follow_snapshot(meta, hs or HardState(), entries)
    reset = reset_needed(meta, base, entries2)
    if reset and not entries and meta is not None:  # (with entries, follow_snapshot said why)
        reason = "; ".join(
            filter(None, [reason, f"the log's base {base} is behind the snapshot at {meta.index}: reset to it"])
        )
    try:
        check_follows_snapshot(meta, hs2, entries2)
    except LogDoesNotFollowSnapshot as exc:
        raise LogDoesNotFollowSnapshot(f"{exc.reason} ({where}); nothing changed", group) from None
    if reason is None:
        return RecoveredGroup(hs, snap, entries)
    logger.warning("group %d: repairing the log after a crash in the middle of a round: %s", group, reason)
    assert meta is not None or len(entries2) == len(entries)
    log.write(
        [
            GroupWrite(
                group,
                compact_to=(meta.index, meta.term) if reset and meta is not None else None,
                hard_state=hs2 if hs2 != hs else None,
            )
        ],
        sync=sync,
    )
    return RecoveredGroup(hs2, snap, entries2, reason)
