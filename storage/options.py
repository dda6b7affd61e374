"""FileStorageOptions: raft-lite's knobs, names and defaults, plus two of our own."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

MiB = 1024 * 1024


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class FileStorageOptions:
    """Options of one worker's FileStorage (see docs/storage.md).

    base_dir holds `logs/` (the segmented log) and `snapshots/`.
    """

    base_dir: Path = attrs.field(default=Path("./data"), converter=Path)
    # A segment rotates once it would grow past this (a single write batch is
    # never split, so a segment can exceed it by at most one batch).
    max_segment_size: int = attrs.field(default=64 * MiB, validator=_positive)
    # Threads the caller should give the async facade (the worker builds a
    # trio.CapacityLimiter of this size); storage itself starts no threads.
    max_io_threads: int = attrs.field(default=4, validator=_positive)
    # False skips the fsync after each write: UNSAFE, for benchmarks only. A
    # crash may then lose writes that were acknowledged.
    sync_on_write: bool = True
    # At most this many concurrent write() calls (from different threads) are
    # combined into one os.write and one fsync.
    batch_size: int = attrs.field(default=100, validator=_positive)
    # Recent entries kept in memory per group (0 disables the cache).
    cache_entries_size: int = attrs.field(default=1000, validator=_non_negative)
    # A write that would leave less free space than this fails with
    # DiskFullError before anything is written.
    min_free_disk_space: int = attrs.field(default=100 * MiB, validator=_non_negative)
    # Check a snapshot's SHA256 (and size) when it is read back.
    verify_snapshot_checksum: bool = True
    # Ours: once more than this many segments exist, the groups pinning the
    # oldest one are rewritten forward (when their live data is at most half
    # a segment), so that one lagging group cannot pin old segments forever.
    rewrite_after_segments: int = attrs.field(default=4, validator=_positive)
    # Ours: chunk size for streaming snapshots in and out.
    snapshot_chunk_size: int = attrs.field(default=1 * MiB, validator=_positive)

    @classmethod
    def with_base_dir(cls, base_dir: str | os.PathLike, **kwargs) -> FileStorageOptions:
        return cls(base_dir=Path(base_dir), **kwargs)

    def log_dir(self) -> Path:
        return self.base_dir / "logs"

    def snapshot_dir(self) -> Path:
        return self.base_dir / "snapshots"
