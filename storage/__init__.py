"""The per-worker segmented log and snapshot store (blocking I/O; no trio).

Public names:
- FileStorage, FileStorageOptions: raft-lite's async API (run_sync supplied by the caller).
- SegmentedLog, SnapshotStore: the blocking engines; GroupWrite: the batch unit.
- MemoryStorage: the in-memory store with seeded fault injection.
- the typed errors of storage.errors.
See docs/storage.md.
"""

from .batch import GroupWrite
from .errors import (
    CorruptLogError,
    CorruptSnapshotError,
    DiskFullError,
    InvalidWriteError,
    LogCompactedError,
    LogLockedError,
    LogUnavailableError,
    SnapshotChecksumError,
    SnapshotError,
    StorageClosedError,
    StorageError,
    StorageIOError,
)
from .file_storage import FileStorage
from .memory import MemoryStorage
from .options import FileStorageOptions
from .segment_log import SegmentedLog
from .snapshots import SnapshotReader, SnapshotStore, SnapshotWriter

__all__ = [
    "CorruptLogError",
    "CorruptSnapshotError",
    "DiskFullError",
    "FileStorage",
    "FileStorageOptions",
    "GroupWrite",
    "InvalidWriteError",
    "LogCompactedError",
    "LogLockedError",
    "LogUnavailableError",
    "MemoryStorage",
    "SegmentedLog",
    "SnapshotChecksumError",
    "SnapshotError",
    "SnapshotReader",
    "SnapshotStore",
    "SnapshotWriter",
    "StorageClosedError",
    "StorageError",
    "StorageIOError",
]
