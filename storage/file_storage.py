"""FileStorage: raft-lite's async storage API over the blocking engines.

storage never imports trio: the caller passes `run_sync`, an
`async def run_sync(fn, *args)` that runs a blocking call on a worker thread.
A trio worker passes

    functools.partial(trio.to_thread.run_sync,
                      limiter=trio.CapacityLimiter(options.max_io_threads))

With run_sync=None, the async methods call the blocking engine inline (fine
for scripts and tests; it blocks the event loop while it runs).

Raft-lite keyed everything by RaftId(group, node); here one FileStorage
belongs to one node (node_id) and is keyed by group id.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from multiraft.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

from .batch import GroupWrite
from .options import FileStorageOptions
from .segment_log import SegmentedLog
from .snapshots import SnapshotStore

RunSync = Callable[..., Awaitable[Any]]


class FileStorage:
    """One worker's storage: the segmented log and the snapshot store.

    `log` and `snapshots` may be given instead of being opened from options
    (e.g. one MemoryStorage for both, in tests). Attributes `log` and
    `snapshots` expose the blocking engines for callers already on a thread.
    """

    def __init__(
        self,
        options: FileStorageOptions | None = None,
        *,
        node_id: str = "local",
        run_sync: RunSync | None = None,
        log=None,
        snapshots=None,
    ) -> None:
        self.options = options if options is not None else FileStorageOptions()
        self.node_id = node_id
        self._run_sync = run_sync
        self.log = log if log is not None else SegmentedLog(self.options)
        if snapshots is None:
            try:
                snapshots = SnapshotStore(
                    self.options.snapshot_dir(),
                    node_id,
                    verify_checksum=self.options.verify_snapshot_checksum,
                    sync=True,
                    chunk_size=self.options.snapshot_chunk_size,
                )
            except BaseException:
                if log is None:
                    self.log.close()
                raise
        self.snapshots = snapshots

    @classmethod
    async def open(
        cls,
        options: FileStorageOptions | None = None,
        *,
        node_id: str = "local",
        run_sync: RunSync | None = None,
    ) -> FileStorage:
        """Open (and recover) on a worker thread: recovery reads the whole log."""
        make = functools.partial(cls, options, node_id=node_id, run_sync=run_sync)
        if run_sync is None:
            return make()
        return await run_sync(make)

    async def _call(self, fn, *args):
        if self._run_sync is None:
            return fn(*args)
        return await self._run_sync(fn, *args)

    # -- the batch API (what the worker uses) ------------------------------------

    async def write(self, batch: Sequence[GroupWrite], sync: bool | None = None) -> None:
        """Many groups' hard states, entries, configs and compactions: one write, one fsync."""
        await self._call(self.log.write, batch, sync)

    async def sync(self) -> None:
        await self._call(self.log.sync)

    # -- hard state and membership ------------------------------------------------

    async def save_hard_state(self, group: int, hard_state: HardState) -> None:
        await self.write([GroupWrite(group, hard_state=hard_state)])

    async def load_hard_state(self, group: int) -> HardState | None:
        return await self._call(self.log.hard_state, group)

    async def save_cluster_config(self, group: int, conf: ConfState) -> None:
        await self.write([GroupWrite(group, conf_state=conf)])

    async def load_cluster_config(self, group: int) -> ConfState:
        """The saved membership, or an empty ConfState (as raft-lite)."""
        conf = await self._call(self.log.conf_state, group)
        return conf if conf is not None else ConfState()

    # -- entries -------------------------------------------------------------------

    async def append_log_entries(self, group: int, entries: Sequence[Entry]) -> None:
        """Write entries at entries[0].index, replacing any stored from there on."""
        await self.write([GroupWrite(group, entries=entries)])

    async def get_log_entries(self, group: int, low: int, high: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with low <= index < high."""
        return await self._call(self.log.entries, group, low, high, max_bytes)

    async def get_log_entries_term(self, group: int, low: int, high: int) -> list[tuple[int, int]]:
        """(index, term) for low <= index < high."""

        def terms():
            return [(i, self.log.term(group, i)) for i in range(low, high)]

        return await self._call(terms)

    async def get_log_term(self, group: int, index: int) -> int:
        return await self._call(self.log.term, group, index)

    async def get_first_log_index(self, group: int) -> int:
        return await self._call(self.log.first_index, group)

    async def get_last_log_index(self, group: int) -> tuple[int, int]:
        """(last index, its term); (base index, base term) when no entries are stored."""

        def last():
            i = self.log.last_index(group)
            return (i, self.log.term(group, i))

        return await self._call(last)

    async def truncate_log_suffix(self, group: int, index: int) -> None:
        """Remove entries with index >= `index`."""
        await self.write([GroupWrite(group, truncate_from=index)])

    async def compact_log_prefix(self, group: int, index: int, term: int | None = None) -> None:
        """Remove entries with index <= `index` (after a snapshot at index).

        term defaults to the stored term of `index`; see GroupWrite.compact_to."""

        def compact():
            t = self.log.term(group, index) if term is None else term
            self.log.write([GroupWrite(group, compact_to=(index, t))])

        await self._call(compact)

    async def compacted_to(self, group: int) -> tuple[int, int]:
        return await self._call(self.log.compacted_to, group)

    async def remove_group(self, group: int) -> None:
        """Forget a group's log state (and its snapshot)."""
        await self.write([GroupWrite(group, remove=True)])
        await self._call(self.snapshots.delete_snapshot, group)

    async def groups(self) -> list[int]:
        return await self._call(self.log.groups)

    # -- snapshots -------------------------------------------------------------------

    async def save_snapshot(self, group: int, snapshot: Snapshot) -> None:
        """Store a snapshot durably (the log is not touched: compact it separately)."""
        await self._call(self.snapshots.save_snapshot, group, snapshot)

    async def load_snapshot(self, group: int) -> Snapshot | None:
        """The whole snapshot in memory; stream large ones with snapshot_chunks()."""
        return await self._call(self.snapshots.load_snapshot, group)

    async def load_snapshot_meta(self, group: int) -> SnapshotMeta | None:
        return await self._call(self.snapshots.load_snapshot_meta, group)

    async def save_snapshot_chunks(
        self, group: int, meta: SnapshotMeta, chunks: Iterable[bytes] | AsyncIterable[bytes]
    ) -> None:
        """Stream a snapshot in; each chunk is written on a worker thread."""
        w = await self._call(self.snapshots.begin_snapshot, group, meta)
        try:
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    await self._call(w.write, chunk)
            else:
                for chunk in chunks:
                    await self._call(w.write, chunk)
        except BaseException:
            await self._call(w.abort)
            raise
        await self._call(w.commit)

    async def snapshot_chunks(self, group: int, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """Stream a snapshot out. Verification (if on) raises at the end of the stream."""
        r = await self._call(self.snapshots.open_snapshot_reader, group)
        if r is None:
            return
        n = chunk_size or self.options.snapshot_chunk_size
        try:
            while True:
                chunk = await self._call(r.read, n)
                if not chunk:
                    return
                yield chunk
        finally:
            r.close()

    async def delete_snapshot(self, group: int) -> None:
        await self._call(self.snapshots.delete_snapshot, group)

    async def list_snapshots(self) -> list[int]:
        return await self._call(self.snapshots.snapshot_groups)

    # -- statistics and closing ------------------------------------------------------

    async def statistics(self) -> dict:
        """The log's counters (see SegmentedLog.stats) plus the snapshot count."""

        def stats():
            out = dict(self.log.stats())
            out["snapshots"] = len(self.snapshots.snapshot_groups())
            return out

        return await self._call(stats)

    async def close(self) -> None:
        await self._call(self.log.close)

    async def __aenter__(self) -> FileStorage:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
