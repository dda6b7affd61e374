"""Typed storage errors. Each says whose fault it is.

- The disk or the files (CorruptLogError, CorruptSnapshotError,
  SnapshotChecksumError): bytes on disk are not what we wrote. Nothing is
  deleted; an operator must look (tools/logdump.py helps).
- The environment (DiskFullError, StorageIOError, LogLockedError).
- The caller (InvalidWriteError, LogCompactedError, LogUnavailableError): a
  write that breaks the log's rules, or a read outside the stored range.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage error."""


class CorruptLogError(StorageError):
    """The disk's fault: a log record failed its checks. Refuse to start."""

    def __init__(self, path, offset: int | None, reason: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        where = self.path if offset is None else f"{self.path} at offset {offset}"
        super().__init__(f"corrupt log: {where}: {reason}")


class LogLockedError(StorageError):
    """Another process (or another open SegmentedLog) owns this log directory."""


class DiskFullError(StorageError):
    """A write would leave less than min_free_disk_space free. Nothing was written."""

    def __init__(self, needed: int, available: int, min_free: int) -> None:
        self.needed = needed
        self.available = available
        self.min_free = min_free
        super().__init__(
            f"disk full: writing {needed} bytes would leave {available - needed} "
            f"bytes free, below min_free_disk_space={min_free}"
        )


class StorageIOError(StorageError):
    """A write or fsync failed. After a failed fsync the log refuses all further
    calls: what reached the disk is unknown until it is reopened (recovered)."""


class StorageClosedError(StorageError):
    """The store was closed (or failed) and must be reopened."""


class InvalidWriteError(StorageError, ValueError):
    """The caller's fault: a write that breaks the log's rules (a gap, an index
    below the compacted prefix, decreasing terms, bad types). Nothing of the
    write call that carried it was applied."""


class LogCompactedError(StorageError):
    """The requested index is at or below the compacted prefix (use the snapshot)."""

    def __init__(self, group: int, index: int, first_index: int) -> None:
        self.group, self.index, self.first_index = group, index, first_index
        super().__init__(f"group {group}: index {index} is compacted (first index {first_index})")


class LogUnavailableError(StorageError):
    """The requested index is past the last stored entry."""

    def __init__(self, group: int, index: int, last_index: int) -> None:
        self.group, self.index, self.last_index = group, index, last_index
        super().__init__(f"group {group}: index {index} is past the last index {last_index}")


class SnapshotError(StorageError):
    """Base class of snapshot errors."""


class CorruptSnapshotError(SnapshotError):
    """The disk's fault: meta.json is missing, unreadable or inconsistent."""

    def __init__(self, path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"corrupt snapshot {self.path}: {reason}")


class SnapshotChecksumError(CorruptSnapshotError):
    """The disk's fault: data.bin does not match the size or SHA256 in meta.json."""

    def __init__(self, path, expected: str, actual: str) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(path, f"checksum mismatch: meta.json says {expected}, data.bin is {actual}")
