"""MemoryStorage: the in-memory store, with seeded fault injection.

It has the blocking interface of SegmentedLog (write, sync, entries, term,
first_index, last_index, last_term, compacted_to, hard_state, conf_state,
groups, stats, close) and of SnapshotStore (begin_snapshot, save_snapshot,
save_snapshot_chunks, load_snapshot, load_snapshot_meta, snapshot_info,
open_snapshot_reader, iter_snapshot_chunks, delete_snapshot,
snapshot_groups), with the same validation (storage.batch) and semantics.
Unit tests (tests/test_storage_*.py) use it in place of the files, and
FileStorage can run over it; the simulator does not (yet): it models its
disk in multiraft/sim/disk.py.

Faults, all driven by one seeded random.Random:
- crash(): every write not yet synced is lost (a write with sync, or sync(),
  makes everything before it durable). With torn_tail, a random prefix of the
  unsynced records survives instead (cut at a record boundary, as the file
  log's recovery cuts a torn tail).
- sync_delay: each sync sleeps sync_delay * uniform(0.5, 1.5) seconds through
  the injectable `sleep` (a caller on a virtual clock passes one that advances it).
Snapshots are durable once committed; a writer not committed at a crash is lost.
"""

from __future__ import annotations

import collections
import io
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from multiraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

from .batch import (
    EMPTY_GROUP,
    OP_COMPACT,
    OP_CONF_STATE,
    OP_DROP,
    OP_ENTRIES,
    OP_HARD_STATE,
    OP_RESET,
    OP_TRUNCATE,
    GroupWrite,
    plan_group_write,
)
from .errors import (
    InvalidWriteError,
    LogCompactedError,
    LogUnavailableError,
    SnapshotError,
    StorageClosedError,
)
from .group_reads import GroupReads


class _MemGroup:
    """Invariant: entries[k].index == base_index + 1 + k."""

    __slots__ = ("group", "base_index", "base_term", "entries", "hs", "cs")

    def __init__(self, group: int) -> None:
        self.group = group
        self.base_index = 0
        self.base_term = 0
        self.entries: list[Entry] = []
        self.hs: HardState | None = None
        self.cs: ConfState | None = None

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    def term(self, i: int) -> int:
        if i == self.base_index:
            return self.base_term
        if i < self.base_index:
            raise LogCompactedError(self.group, i, self.base_index + 1)
        if i > self.last_index:
            raise LogUnavailableError(self.group, i, self.last_index)
        return self.entries[i - self.base_index - 1].term

    def copy(self) -> _MemGroup:
        g = _MemGroup(self.group)
        g.base_index, g.base_term, g.hs, g.cs = self.base_index, self.base_term, self.hs, self.cs
        g.entries = list(self.entries)
        return g

    def check_invariants(self) -> None:
        assert [e.index for e in self.entries] == list(range(self.base_index + 1, self.last_index + 1))


def _apply(groups: dict[int, _MemGroup], group: int, op: tuple) -> None:
    kind = op[0]
    if kind == OP_DROP:
        groups.pop(group, None)
        return
    st = groups.get(group)
    if st is None:
        st = groups[group] = _MemGroup(group)
    if kind == OP_ENTRIES:
        del st.entries[op[1] - st.base_index - 1 :]
        st.entries.extend(op[2])
    elif kind == OP_HARD_STATE:
        st.hs = op[1]
    elif kind == OP_CONF_STATE:
        st.cs = op[1]
    elif kind == OP_TRUNCATE:
        del st.entries[op[1] - st.base_index - 1 :]
    elif kind == OP_COMPACT:
        del st.entries[: op[1] - st.base_index]
        st.base_index, st.base_term = op[1], op[2]
    elif kind == OP_RESET:
        st.entries = []
        st.base_index, st.base_term = op[1], op[2]
    else:  # pragma: no cover
        raise AssertionError(op)


class _MemSnapshotWriter:
    def __init__(self, store: MemoryStorage, group: int, meta: SnapshotMeta) -> None:
        self._store = store
        self.group = group
        self.meta = meta
        self._parts: list[bytes] = []
        self._epoch = store._epoch
        self._done = False
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._done:
            raise SnapshotError("snapshot writer already committed or aborted")
        self._parts.append(bytes(chunk))
        self.size += len(chunk)

    def commit(self) -> None:
        if self._done:
            raise SnapshotError("snapshot writer already committed or aborted")
        self._done = True
        if self._epoch != self._store._epoch:
            raise SnapshotError("the store crashed while this snapshot was being written")
        self._store._snapshots[self.group] = Snapshot(self.meta, b"".join(self._parts))

    def abort(self) -> None:
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()


class _MemSnapshotReader(io.BytesIO):
    def __init__(self, snap: Snapshot) -> None:
        super().__init__(snap.data)
        self.meta = snap.meta
        self.size = len(snap.data)


class MemoryStorage(GroupReads):
    """An in-memory log + snapshot store with seeded fault injection."""

    def __init__(
        self,
        seed: int = 0,
        *,
        node_id: str = "local",
        sync_on_write: bool = True,
        torn_tail: bool = False,
        sync_delay: float = 0.0,
        sleep: Callable[[float], object] = time.sleep,
        chunk_size: int = 1 << 20,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.node_id = node_id
        self.sync_on_write = sync_on_write
        self.torn_tail = torn_tail
        self.sync_delay = sync_delay
        self._sleep = sleep
        self.chunk_size = chunk_size
        self._lock = threading.RLock()
        self._live: dict[int, _MemGroup] = {}
        self._durable: dict[int, _MemGroup] = {}
        self._pending: list[list[tuple[int, tuple]]] = []  # unsynced writes, oldest first
        self._snapshots: dict[int, Snapshot] = {}
        self._epoch = 0
        self._closed = False
        self._st: collections.Counter[str] = collections.Counter()

    # -- faults ----------------------------------------------------------------

    def crash(self, torn_tail: bool | None = None) -> int:
        """Lose what was not synced (see the module docstring). Returns the
        number of records lost. The store stays usable, as if reopened."""
        with self._lock:
            torn = self.torn_tail if torn_tail is None else torn_tail
            flat = [x for w in self._pending for x in w]
            keep = self.rng.randint(0, len(flat)) if (torn and flat) else 0
            for g, op in flat[:keep]:
                _apply(self._durable, g, op)
            self._pending.clear()
            self._live = {g: st.copy() for g, st in self._durable.items()}
            self._epoch += 1
            self._closed = False
            self._st["crashes"] += 1
            self._st["records_lost"] += len(flat) - keep
            return len(flat) - keep

    # -- writing ---------------------------------------------------------------

    def write(self, batch: Sequence[GroupWrite], sync: bool | None = None) -> None:
        with self._lock:
            self._check_open()
            if len(batch) > 1 and len({gw.group for gw in batch}) != len(batch):
                raise InvalidWriteError("a batch may hold at most one GroupWrite per group")
            try:
                plans = [(gw.group, plan_group_write(gw, self._live.get(gw.group, EMPTY_GROUP))) for gw in batch]
            except (TypeError, AttributeError) as exc:
                raise InvalidWriteError(f"bad batch: {exc!r}") from None
            ops = [(g, op) for g, gops in plans for op in gops]
            for g, op in ops:
                _apply(self._live, g, op)
            if ops:
                self._pending.append(ops)
                self._st["writes"] += 1
                self._st["records_written"] += len(ops)
                self._st["entries_written"] += sum(len(op[2]) for _, op in ops if op[0] == OP_ENTRIES)
            if sync if sync is not None else self.sync_on_write:
                self._sync_locked()

    def sync(self) -> None:
        with self._lock:
            self._check_open()
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self.sync_delay:
            self._sleep(self.sync_delay * self.rng.uniform(0.5, 1.5))
        for w in self._pending:
            for g, op in w:
                _apply(self._durable, g, op)
        self._pending.clear()
        self._st["syncs"] += 1

    # -- reading ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError("the memory store is closed")

    def _group_states(self) -> dict:
        return self._live

    def entries(self, group: int, low: int, high: int, max_bytes: int | None = None) -> list[Entry]:
        with self._lock:
            self._check_open()
            st = self._group(group)
            if low <= st.base_index:
                raise LogCompactedError(group, low, st.base_index + 1)
            if high > st.last_index + 1:
                raise LogUnavailableError(group, high - 1, st.last_index)
            if low >= high:
                return []
            out = st.entries[low - st.base_index - 1 : high - st.base_index - 1]
            if max_bytes is not None:
                size = 0
                for k, e in enumerate(out):
                    size += len(e.data)
                    if size > max_bytes and k:
                        return out[:k]
            return out

    def stats(self) -> dict:
        with self._lock:
            out = {
                "groups": len(self._live),
                "unsynced_writes": len(self._pending),
                "snapshots": len(self._snapshots),
            }
            for key in ("writes", "syncs", "records_written", "entries_written", "crashes", "records_lost"):
                out[key] = self._st[key]
            return out

    def check_invariants(self) -> None:
        with self._lock:
            for st in self._live.values():
                st.check_invariants()
            for st in self._durable.values():
                st.check_invariants()

    def close(self) -> None:
        """Closing syncs (as the file log does); crash() reopens a closed store."""
        with self._lock:
            if not self._closed:
                self._sync_locked()
                self._closed = True

    # -- snapshots -------------------------------------------------------------

    def begin_snapshot(self, group: int, meta: SnapshotMeta) -> _MemSnapshotWriter:
        return _MemSnapshotWriter(self, group, meta)

    def save_snapshot(self, group: int, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshots[group] = Snapshot(snapshot.meta, bytes(snapshot.data))

    def save_snapshot_chunks(self, group: int, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        w = self.begin_snapshot(group, meta)
        for chunk in chunks:
            w.write(chunk)
        w.commit()

    def load_snapshot(self, group: int) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(group)

    def load_snapshot_meta(self, group: int) -> SnapshotMeta | None:
        snap = self.load_snapshot(group)
        return None if snap is None else snap.meta

    def snapshot_info(self, group: int) -> dict | None:
        snap = self.load_snapshot(group)
        if snap is None:
            return None
        return {"path": None, "index": snap.meta.index, "term": snap.meta.term, "size": len(snap.data), "sha256": None}

    def open_snapshot_reader(self, group: int) -> _MemSnapshotReader | None:
        snap = self.load_snapshot(group)
        return None if snap is None else _MemSnapshotReader(snap)

    def iter_snapshot_chunks(self, group: int, chunk_size: int | None = None) -> Iterator[bytes]:
        snap = self.load_snapshot(group)
        if snap is None:
            return
        n = chunk_size or self.chunk_size
        for i in range(0, len(snap.data), n):
            yield snap.data[i : i + n]

    def delete_snapshot(self, group: int) -> None:
        with self._lock:
            self._snapshots.pop(group, None)

    def snapshot_groups(self) -> list[int]:
        with self._lock:
            return sorted(self._snapshots)

    def __enter__(self) -> MemoryStorage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
