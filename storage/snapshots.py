"""SnapshotStore: `snapshots/{group}_{node}/meta.json` + `data.bin` (raft-lite's layout).

meta.json holds the format version, group, node, index, term, membership
(ConfState.to_plain()), size and SHA256 of data.bin. A snapshot is written into
`{name}.tmp/`, both files fsynced, the directory fsynced; then the old
`{name}/` (if any) is renamed to `{name}.old/`, the new one renamed into place,
the parent fsynced, and `{name}.old/` removed. On open, leftovers are resolved:
a missing `{name}/` with a `{name}.old/` means a crash between the two renames,
and the old snapshot is put back; `.tmp` and `.old` leftovers are removed. So an
interrupted write always leaves the previous snapshot intact.

Data is streamed in both directions (SnapshotWriter.write(chunk),
SnapshotReader.read(n)); nothing requires the whole image in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from multiraft.raft.types import ConfState, Snapshot, SnapshotMeta

from .errors import CorruptSnapshotError, SnapshotChecksumError, SnapshotError
from .segment_log import fsync_dir

FORMAT = 1
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotWriter:
    """Streams one snapshot in: write(chunk)..., then commit() or abort()."""

    def __init__(self, store: SnapshotStore, group: int, meta: SnapshotMeta) -> None:
        self._store = store
        self.group = group
        self.meta = meta
        self._final = store._dir_for(group)
        self._tmp = self._final.with_name(self._final.name + ".tmp")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(parents=True)
        # noqa below: the file stays open across write() calls; finish()/abort() close it
        self._file = open(self._tmp / "data.bin", "wb")  # noqa: SIM115
        self._sha = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, chunk: bytes | memoryview) -> None:
        if self._done:
            raise SnapshotError("snapshot writer already committed or aborted")
        self._file.write(chunk)
        self._sha.update(chunk)
        self.size += len(chunk)

    def commit(self) -> None:
        """Make the snapshot durable and visible, replacing the previous one."""
        if self._done:
            raise SnapshotError("snapshot writer already committed or aborted")
        self._done = True
        sync = self._store.sync
        try:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._file.close()
            meta = {
                "format": FORMAT,
                "group": self.group,
                "node": self._store.node_id,
                "index": self.meta.index,
                "term": self.meta.term,
                "conf_state": self.meta.conf_state.to_plain(),
                "size": self.size,
                "sha256": self._sha.hexdigest(),
            }
            meta_path = self._tmp / "meta.json"
            with open(meta_path, "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            if sync:
                fsync_dir(self._tmp)
            old = self._final.with_name(self._final.name + ".old")
            if self._final.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.rename(self._final, old)
                if sync:
                    fsync_dir(self._final.parent)
            os.rename(self._tmp, self._final)
            if sync:
                fsync_dir(self._final.parent)
            if old.exists():
                shutil.rmtree(old)
        except BaseException:
            self._file.close()
            raise

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()


class SnapshotReader:
    """Streams one snapshot out. read(n) returns b"" at the end; when verifying,
    the end of the stream raises SnapshotChecksumError if data.bin does not
    match meta.json (so a consumer must not act on the data before the end)."""

    def __init__(self, path: Path, meta: SnapshotMeta, size: int, sha256: str, verify: bool) -> None:
        self.path = path
        self.meta = meta
        self.size = size
        self._expected = sha256
        self._verify = verify
        # noqa below: the file stays open across read() calls; close() closes it
        self._file = open(path / "data.bin", "rb")  # noqa: SIM115
        self._sha = hashlib.sha256() if verify else None
        self._read = 0
        if not verify:
            actual = os.fstat(self._file.fileno()).st_size
            if actual != size:
                self._file.close()
                raise SnapshotChecksumError(path, f"size {size}", f"size {actual}")

    def read(self, n: int = -1) -> bytes:
        chunk = self._file.read(n)
        self._read += len(chunk)
        if self._sha is not None:
            self._sha.update(chunk)
            if self._read > self.size:
                raise SnapshotChecksumError(self.path, f"size {self.size}", f"size > {self.size}")
            if not chunk or n is None or n < 0:
                self._finish()
        return chunk

    def _finish(self) -> None:
        if self._read != self.size:
            raise SnapshotChecksumError(self.path, f"size {self.size}", f"size {self._read}")
        assert self._sha is not None  # only a verifying reader finishes
        actual = self._sha.hexdigest()
        if actual != self._expected:
            raise SnapshotChecksumError(self.path, self._expected, actual)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SnapshotStore:
    """One snapshot per group for this node, under `directory`."""

    def __init__(
        self,
        directory,
        node_id: str,
        *,
        verify_checksum: bool = True,
        sync: bool = True,
        chunk_size: int = 1 << 20,
    ) -> None:
        if not _NODE_RE.match(node_id):
            raise ValueError(f"node id {node_id!r} cannot name a snapshot directory")
        self.directory = Path(directory)
        self.node_id = node_id
        self.verify_checksum = verify_checksum
        self.sync = sync
        self.chunk_size = chunk_size
        self.directory.mkdir(parents=True, exist_ok=True)
        self._recover()

    def _dir_for(self, group: int) -> Path:
        if type(group) is not int or group < 0:
            raise ValueError(f"group must be an int >= 0, got {group!r}")
        return self.directory / f"{group}_{self.node_id}"

    def _recover(self) -> None:
        for p in sorted(self.directory.iterdir()):
            if p.name.endswith(".old"):
                final = p.with_name(p.name[: -len(".old")])
                if not final.exists():
                    os.rename(p, final)  # crash between the renames: put the old one back
                else:
                    shutil.rmtree(p)
        for p in sorted(self.directory.iterdir()):
            if p.name.endswith(".tmp"):
                shutil.rmtree(p)  # an unfinished write
        fsync_dir(self.directory)

    # -- writing ---------------------------------------------------------------

    def begin_snapshot(self, group: int, meta: SnapshotMeta) -> SnapshotWriter:
        return SnapshotWriter(self, group, meta)

    def save_snapshot(self, group: int, snapshot: Snapshot) -> None:
        self.save_snapshot_chunks(group, snapshot.meta, _chunked(snapshot.data, self.chunk_size))

    def save_snapshot_chunks(self, group: int, meta: SnapshotMeta, chunks: Iterable[bytes | memoryview]) -> None:
        w = self.begin_snapshot(group, meta)
        try:
            for chunk in chunks:
                w.write(chunk)
        except BaseException:
            w.abort()
            raise
        w.commit()

    def delete_snapshot(self, group: int) -> None:
        d = self._dir_for(group)
        if d.exists():
            shutil.rmtree(d)
            fsync_dir(self.directory)

    # -- reading ---------------------------------------------------------------

    def _load_meta(self, group: int) -> tuple[Path, SnapshotMeta, int, str] | None:
        d = self._dir_for(group)
        meta_path = d / "meta.json"
        if not d.exists():
            return None
        try:
            with open(meta_path) as f:
                m = json.load(f)
            if m.get("format") != FORMAT:
                raise ValueError(f"unknown format {m.get('format')!r}")
            meta = SnapshotMeta(int(m["index"]), int(m["term"]), ConfState.from_plain(m["conf_state"]))
            size, sha = int(m["size"]), str(m["sha256"])
        except FileNotFoundError:
            raise CorruptSnapshotError(d, "meta.json is missing") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptSnapshotError(meta_path, f"unreadable: {exc}") from None
        return d, meta, size, sha

    def load_snapshot_meta(self, group: int) -> SnapshotMeta | None:
        found = self._load_meta(group)
        return None if found is None else found[1]

    def snapshot_info(self, group: int) -> dict | None:
        found = self._load_meta(group)
        if found is None:
            return None
        d, meta, size, sha = found
        return {"path": str(d), "index": meta.index, "term": meta.term, "size": size, "sha256": sha}

    def open_snapshot_reader(self, group: int) -> SnapshotReader | None:
        found = self._load_meta(group)
        if found is None:
            return None
        d, meta, size, sha = found
        try:
            return SnapshotReader(d, meta, size, sha, self.verify_checksum)
        except FileNotFoundError:
            raise CorruptSnapshotError(d, "data.bin is missing") from None

    def iter_snapshot_chunks(self, group: int, chunk_size: int | None = None) -> Iterator[bytes]:
        """Yield data.bin in chunks (raises SnapshotChecksumError at the end on mismatch)."""
        r = self.open_snapshot_reader(group)
        if r is None:
            return
        n = chunk_size or self.chunk_size
        with r:
            while True:
                chunk = r.read(n)
                if not chunk:
                    return
                yield chunk

    def load_snapshot(self, group: int) -> Snapshot | None:
        """The whole snapshot in memory (fine for small images; stream large ones)."""
        r = self.open_snapshot_reader(group)
        if r is None:
            return None
        with r:
            parts = []
            while True:
                chunk = r.read(self.chunk_size)
                if not chunk:
                    break
                parts.append(chunk)
        return Snapshot(r.meta, b"".join(parts))

    def snapshot_groups(self) -> list[int]:
        out = []
        suffix = "_" + self.node_id
        for p in self.directory.iterdir():
            if p.is_dir() and p.name.endswith(suffix):
                head = p.name[: -len(suffix)]
                if head.isdigit():
                    out.append(int(head))
        return sorted(out)

    def close(self) -> None:
        pass


def _chunked(data: bytes, size: int) -> Iterator[memoryview]:
    """Zero-copy slices of `data` (file writes and hashing take them as they are)."""
    mv = memoryview(data)
    for i in range(0, len(data), size):
        yield mv[i : i + size]
