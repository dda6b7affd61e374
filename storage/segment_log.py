"""SegmentedLog: one worker's durable log, shared by all of its groups.

Blocking I/O, no trio. Records of many groups are interleaved in
`logs/segment_*.log` (format: storage/records.py, docs/storage.md). One write()
call (one batch of GroupWrites for many groups) becomes one os.write and at
most one fsync. Concurrent write() calls from several threads are combined
(group commit, up to options.batch_size calls per fsync).

In memory, per group: the log's base (compacted index and term), the extents
(one per ENTRIES record: first index, count, LSN and length of the record, its
term if uniform), hard state, conf state, and a bounded cache of recent entries.
An LSN is a global byte position across segments; a segment is named by the LSN
of its first byte.

Each group "pins" the segment holding its oldest needed record; segments are
deleted, oldest first, once nothing pins them. When more than
options.rewrite_after_segments segments exist, the groups pinning the oldest
one are rewritten forward (RESET, ENTRIES, CONF_STATE, HARD_STATE records at
the head) so that it can go.
"""

from __future__ import annotations

import bisect
import collections
import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from typing import Sequence

from multiraft.raft.types import ConfState, Entry, HardState

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
    CorruptLogError,
    DiskFullError,
    InvalidWriteError,
    LogCompactedError,
    LogLockedError,
    LogUnavailableError,
    StorageClosedError,
    StorageError,
    StorageIOError,
)
from .options import FileStorageOptions
from .records import (
    CRC_START,
    ENTRIES_HEAD,
    ENTRIES_HEAD_SIZE,
    ENTRY_TABLE_BYTES,
    HEADER,
    HEADER_SIZE,
    INDEX_BODY,
    INDEX_TERM_BODY,
    MAX_ENTRIES_BODY,
    RECORD_MAGIC,
    RECORD_MAGIC_BYTES,
    SEGMENT_HEADER_SIZE,
    RecordType,
    check_segment_header,
    conf_state_body,
    decode_conf_state,
    decode_entries,
    decode_hard_state,
    hard_state_body,
    parse_segment_name,
    put_entries,
    put_record,
    segment_header,
    segment_name,
)

logger = logging.getLogger(__name__)

SECTOR = 512
_U64 = struct.Struct("<Q")
ZERO_RUN = 64  # a torn write shows as zeroed sectors: a run this long (or a whole short record)


def disk_free_bytes(path) -> int:
    """Bytes available to us on path's file system (tests monkeypatch this)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("base", "path", "fd", "size")

    def __init__(self, base: int, path, fd: int, size: int) -> None:
        self.base = base  # LSN of the segment's first byte (its header)
        self.path = path
        self.fd = fd
        self.size = size  # bytes of valid data, header included


class _Group:
    """One group's state in the index.

    Invariants (check_invariants):
    - extents are sorted, contiguous, non-empty, and cover exactly
      base_index + 1 .. last_index;
    - ext_term[k] == -1 iff mixed holds the terms of the record at ext_lsn[k];
    - the cache is empty, or holds entries cache_first .. last_index, with
      cache_first > base_index.
    """

    __slots__ = (
        "group",
        "base_index",
        "base_term",
        "base_lsn",
        "hs",
        "hs_lsn",
        "cs",
        "cs_lsn",
        "ext_first",
        "ext_count",
        "ext_lsn",
        "ext_len",
        "ext_term",
        "mixed",
        "cache",
        "cache_first",
    )

    def __init__(self, group: int) -> None:
        self.group = group
        self.base_index = 0
        self.base_term = 0
        self.base_lsn = -1  # LSN of the COMPACT/RESET record that set the base (-1: none)
        self.hs: HardState | None = None
        self.hs_lsn = -1
        self.cs: ConfState | None = None
        self.cs_lsn = -1
        self.ext_first = array("q")
        self.ext_count = array("q")
        self.ext_lsn = array("q")
        self.ext_len = array("q")
        self.ext_term = array("q")  # the record's term, or -1: see mixed
        self.mixed: dict[int, tuple[int, tuple[int, ...]]] = {}  # lsn -> (record first index, terms)
        self.cache: list[Entry] = []
        self.cache_first = 0

    @property
    def last_index(self) -> int:
        ef = self.ext_first
        if ef:
            return ef[-1] + self.ext_count[-1] - 1
        return self.base_index

    def term(self, i: int) -> int:
        c = self.cache
        if c and i >= self.cache_first and i - self.cache_first < len(c):
            return c[i - self.cache_first].term
        if i == self.base_index:
            return self.base_term
        if i < self.base_index:
            raise LogCompactedError(self.group, i, self.base_index + 1)
        ef = self.ext_first
        if not ef or i >= ef[-1] + self.ext_count[-1]:
            raise LogUnavailableError(self.group, i, self.last_index)
        k = bisect.bisect_right(ef, i) - 1
        t = self.ext_term[k]
        if t >= 0:
            return t
        rec_first, terms = self.mixed[self.ext_lsn[k]]
        return terms[i - rec_first]

    def min_lsn(self) -> int:
        """LSN of the oldest record this group still needs (-1: none)."""
        m = -1
        for v in (self.hs_lsn, self.cs_lsn, self.base_lsn, self.ext_lsn[0] if self.ext_lsn else -1):
            if v >= 0 and (m < 0 or v < m):
                m = v
        return m

    def live_bytes(self) -> int:
        return sum(self.ext_len) + 256

    # -- the record semantics (shared by recovery and the write path) --------

    def add_extent(self, first, n, lsn, ln, term, mixed_terms, entries, cache_cap) -> None:
        ef = self.ext_first
        if ef and ef[-1] + self.ext_count[-1] > first:
            self.truncate(first)  # an append replaces everything from its first index on
        ef.append(first)
        self.ext_count.append(n)
        self.ext_lsn.append(lsn)
        self.ext_len.append(ln)
        self.ext_term.append(term)
        if term < 0:
            self.mixed[lsn] = (first, mixed_terms)
        c = self.cache
        if entries is not None and cache_cap:
            if c and self.cache_first + len(c) == first:
                c.extend(entries)
            else:
                c[:] = entries
                self.cache_first = first
            excess = len(c) - cache_cap
            if excess > 0:
                del c[:excess]
                self.cache_first += excess
        elif c:
            c.clear()

    def _drop_extents(self, sl: slice) -> None:
        if self.mixed:
            for lsn in self.ext_lsn[sl]:
                self.mixed.pop(lsn, None)
        del self.ext_first[sl]
        del self.ext_count[sl]
        del self.ext_lsn[sl]
        del self.ext_len[sl]
        del self.ext_term[sl]

    def truncate(self, i: int) -> None:
        """Remove entries >= i."""
        ef = self.ext_first
        k = bisect.bisect_left(ef, i)
        if k < len(ef):
            self._drop_extents(slice(k, None))
        if k > 0 and ef[k - 1] + self.ext_count[k - 1] > i:
            self.ext_count[k - 1] = i - ef[k - 1]
        c = self.cache
        if c:
            keep = i - self.cache_first
            if keep <= 0:
                c.clear()
            elif keep < len(c):
                del c[keep:]

    def compact(self, i: int, t: int, lsn: int) -> None:
        """Remove entries <= i; the base becomes (i, t)."""
        ef = self.ext_first
        k = bisect.bisect_right(ef, i)
        if k:
            j = k - 1
            if ef[j] + self.ext_count[j] - 1 > i:
                self.ext_count[j] -= i + 1 - ef[j]
                ef[j] = i + 1
                drop = j
            else:
                drop = k
            if drop:
                self._drop_extents(slice(0, drop))
        self.base_index, self.base_term, self.base_lsn = i, t, lsn
        c = self.cache
        if c:
            cut = i + 1 - self.cache_first
            if cut >= len(c):
                c.clear()
            elif cut > 0:
                del c[:cut]
                self.cache_first = i + 1

    def reset(self, i: int, t: int, lsn: int) -> None:
        """Remove every entry; the base becomes (i, t)."""
        self._drop_extents(slice(None))
        self.mixed.clear()
        self.cache.clear()
        self.base_index, self.base_term, self.base_lsn = i, t, lsn

    def holes(self) -> str | None:
        """None if the extents cover base+1..last contiguously, else a description."""
        ef, ec = self.ext_first, self.ext_count
        if not ef:
            return None
        if ef[0] != self.base_index + 1:
            return f"entries {self.base_index + 1}..{ef[0] - 1} missing (base {self.base_index})"
        for k in range(1, len(ef)):
            if ef[k] != ef[k - 1] + ec[k - 1]:
                return f"entries {ef[k - 1] + ec[k - 1]}..{ef[k] - 1} missing"
        return None

    def check_invariants(self) -> None:
        assert self.holes() is None, (self.group, self.holes())
        n = len(self.ext_first)
        assert len(self.ext_count) == len(self.ext_lsn) == len(self.ext_len) == len(self.ext_term) == n
        assert all(c > 0 for c in self.ext_count)
        assert list(self.ext_lsn) == sorted(self.ext_lsn)
        assert {lsn for lsn, t in zip(self.ext_lsn, self.ext_term) if t < 0} == set(self.mixed)
        if self.cache:
            assert self.cache_first > self.base_index
            assert self.cache_first + len(self.cache) - 1 == self.last_index
            assert [e.index for e in self.cache] == list(range(self.cache_first, self.last_index + 1))


class _Request:
    __slots__ = ("batch", "sync", "done", "error")

    def __init__(self, batch, sync) -> None:
        self.batch = batch
        self.sync = sync
        self.done = False
        self.error: BaseException | None = None


class SegmentedLog:
    """The blocking log engine. Thread-safe; see the module docstring.

    SegmentedLog(options) opens (creating if needed) options.log_dir(),
    recovers it and takes an exclusive lock on it. read_only=True recovers
    without modifying anything and without the lock (for tools).
    """

    def __init__(self, options: FileStorageOptions | None = None, *, read_only: bool = False) -> None:
        self.options = options if options is not None else FileStorageOptions()
        self.path = self.options.log_dir()
        self.read_only = read_only
        self._lock = threading.Lock()  # guards everything below, and the files
        self._pending_lock = threading.Lock()
        self._pending: collections.deque[_Request] = collections.deque()
        self._groups: dict[int, _Group] = {}
        self._segments: list[_Segment] = []
        self._bases: list[int] = []
        self._pinners: dict[int, set[int]] = {}  # segment base -> groups whose oldest record is there
        self._pin_of: dict[int, int] = {}  # group -> segment base it pins
        self._durable = 0  # LSN up to which an fsync has completed
        self._dirty = False  # bytes written since the last fsync
        self._closed = False
        self._failed: BaseException | None = None
        self._reclaim_hint = False
        self._lock_fd: int | None = None
        self._cache_cap = self.options.cache_entries_size
        self._st = collections.Counter()
        self.recovery: dict = {}
        if not read_only:
            os.makedirs(self.path, exist_ok=True)
            self._take_lock()
        elif not self.path.is_dir():
            raise StorageError(f"no log directory at {self.path}")
        try:
            self._recover()
        except BaseException:
            self._close_files()
            raise

    # -- opening ---------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogLockedError(f"{self.path} is in use by another process (or another open log)") from None
        self._lock_fd = fd

    def _recover(self) -> None:
        t0 = time.perf_counter()
        found = []
        for name in os.listdir(self.path):
            base = parse_segment_name(name)
            if base is not None:
                found.append((base, name))
        found.sort()
        torn: tuple | None = None  # (segment index, cut offset, reason)
        scanned = 0
        for k, (base, name) in enumerate(found):
            path = self.path / name
            is_last = k == len(found) - 1
            with open(path, "rb") as f:
                data = f.read()
            scanned += len(data)
            if self._segments:
                prev = self._segments[-1]
                if prev.base + prev.size != base:
                    raise CorruptLogError(
                        path, 0, f"log data missing between LSN {prev.base + prev.size} and this segment's {base}"
                    )
            hdr = check_segment_header(data)
            if hdr is None:
                # The header is fsynced before any record goes in, so a short
                # last segment with a bad header is an interrupted rotation.
                if is_last and len(data) <= SEGMENT_HEADER_SIZE:
                    torn = (k, 0, "interrupted segment creation")
                    end = SEGMENT_HEADER_SIZE
                else:
                    raise CorruptLogError(path, 0, "bad segment header")
            elif hdr != base:
                raise CorruptLogError(path, 0, f"segment header says LSN {hdr}, its name says {base}")
            else:
                end = self._scan(path, base, data, is_last)
                if end < len(data):
                    torn = (k, end, f"torn tail of {len(data) - end} bytes")
            flags = os.O_RDWR if (is_last and not self.read_only) else os.O_RDONLY
            fd = os.open(path, flags)
            self._segments.append(_Segment(base, path, fd, end))
            self._bases.append(base)
            self._pinners[base] = set()
            del data
        for g, st in self._groups.items():
            hole = st.holes()
            if hole is not None:
                raise CorruptLogError(self.path, None, f"group {g}: {hole}")
        if not self.read_only:
            if torn is not None:
                k, cut, reason = torn
                seg = self._segments[k]
                logger.warning("log %s: cutting %s at offset %d", seg.path, reason, cut)
                if cut == 0:
                    os.ftruncate(seg.fd, 0)
                    os.pwrite(seg.fd, segment_header(seg.base), 0)
                else:
                    os.ftruncate(seg.fd, cut)
                os.fsync(seg.fd)
            if not self._segments:
                self._create_segment(0)
            else:
                os.fsync(self._segments[-1].fd)  # what a crashed process left in the page cache
                os.lseek(self._segments[-1].fd, self._segments[-1].size, os.SEEK_SET)
        if self._segments:
            last = self._segments[-1]
            self._durable = last.base + last.size
        for g in self._groups:
            self._update_pin(g)
        dt = time.perf_counter() - t0
        self.recovery = {
            "seconds": dt,
            "bytes": scanned,
            "segments": len(found),
            "groups": len(self._groups),
            "torn_tail": None if torn is None else {"segment": str(self._segments[torn[0]].path), "offset": torn[1], "reason": torn[2]},
        }

    def _scan(self, path, base: int, data: bytes, is_last: bool) -> int:
        """Replay one segment's records; return the end of its valid data."""
        groups = self._groups
        get = groups.get
        unpack = HEADER.unpack_from
        eunpack = ENTRIES_HEAD.unpack_from
        qunpack = _U64.unpack_from
        crc32 = zlib.crc32
        mv = memoryview(data)
        end = len(data)
        pos = SEGMENT_HEADER_SIZE
        nrec = 0
        bad = None
        while pos < end:
            if pos + HEADER_SIZE > end:
                bad = "truncated record header"
                break
            magic, crc, blen, rtype, _flags, _r, group, _durable = unpack(data, pos)
            rend = pos + HEADER_SIZE + blen
            if magic != RECORD_MAGIC:
                bad = "bad record magic"
                break
            if rend > end:
                bad = "record runs past the end of the file"
                break
            if crc32(mv[pos + CRC_START : rend]) != crc:
                bad = "checksum mismatch"
                break
            st = get(group)
            if st is None:
                st = groups[group] = _Group(group)
            lsn = base + pos
            b = pos + HEADER_SIZE
            try:
                if rtype == 1:  # ENTRIES
                    first, n = eunpack(data, b)
                    if n == 0 or ENTRIES_HEAD_SIZE + ENTRY_TABLE_BYTES * n > blen:
                        raise ValueError(f"entries table of {n} entries does not fit")
                    tp = b + ENTRIES_HEAD_SIZE
                    t0 = qunpack(data, tp)[0]
                    ef = st.ext_first
                    if (ef and ef[-1] + st.ext_count[-1] > first) or (n > 1 and qunpack(data, tp + 8 * n - 8)[0] != t0):
                        # the general path: a replacing append, or mixed terms
                        if n > 1 and qunpack(data, tp + 8 * n - 8)[0] != t0:
                            st.add_extent(first, n, lsn, rend - pos, -1, struct.unpack_from(f"<{n}Q", data, tp), None, 0)
                        else:
                            st.add_extent(first, n, lsn, rend - pos, t0, None, None, 0)
                    else:  # the common case, inlined: an append with one term
                        ef.append(first)
                        st.ext_count.append(n)
                        st.ext_lsn.append(lsn)
                        st.ext_len.append(rend - pos)
                        st.ext_term.append(t0)
                elif rtype == 2:
                    st.hs = decode_hard_state(mv[b:rend])
                    st.hs_lsn = lsn
                elif rtype == 3:
                    st.cs = decode_conf_state(mv[b:rend])
                    st.cs_lsn = lsn
                elif rtype == 4:
                    st.truncate(INDEX_BODY.unpack_from(data, b)[0])
                elif rtype == 5:
                    i, t = INDEX_TERM_BODY.unpack_from(data, b)
                    st.compact(i, t, lsn)
                elif rtype == 6:
                    i, t = INDEX_TERM_BODY.unpack_from(data, b)
                    st.reset(i, t, lsn)
                elif rtype == 7:
                    del groups[group]
                else:
                    raise ValueError(f"unknown record type {rtype}")
            except (ValueError, TypeError, struct.error, UnicodeDecodeError, OverflowError) as exc:
                mv.release()
                raise CorruptLogError(path, pos, f"record of type {rtype} for group {group}: {exc}") from None
            pos = rend
            nrec += 1
        self._st["records_recovered"] += nrec
        if bad is None:
            mv.release()
            return pos
        mv.release()
        if not is_last:
            raise CorruptLogError(path, pos, bad)
        verdict = _tail_verdict(data, pos, base)
        if verdict is not None:
            raise CorruptLogError(path, pos, f"{bad}; {verdict}")
        return pos

    def _create_segment(self, base: int) -> None:
        path = self.path / segment_name(base)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, segment_header(base))
            os.fsync(fd)
            fsync_dir(self.path)
        except OSError as exc:
            os.close(fd)
            raise StorageIOError(f"cannot create segment {path}: {exc}") from exc
        self._segments.append(_Segment(base, path, fd, SEGMENT_HEADER_SIZE))
        self._bases.append(base)
        self._pinners[base] = set()
        self._durable = base + SEGMENT_HEADER_SIZE
        self._dirty = False

    # -- writing ---------------------------------------------------------------

    def write(self, batch: Sequence[GroupWrite], sync: bool | None = None) -> None:
        """Persist a batch of GroupWrites (at most one per group) as one write.

        sync=None follows options.sync_on_write. When this returns with sync,
        the whole batch is durable. Raises InvalidWriteError (nothing of this
        batch applied), DiskFullError (nothing written), StorageIOError.
        Concurrent calls from several threads share one write and one fsync.
        """
        req = _Request(batch, sync)
        with self._pending_lock:
            self._pending.append(req)
        with self._lock:
            while not req.done:
                if self._closed or self._failed is not None:
                    with self._pending_lock:
                        try:
                            self._pending.remove(req)
                        except ValueError:
                            pass
                    self._check_open()
                self._commit_requests(self._take_requests())
        if req.error is not None:
            raise req.error

    def sync(self) -> None:
        """fsync whatever was written without sync."""
        with self._lock:
            self._check_open()
            if self._dirty:
                self._fsync()

    def _take_requests(self) -> list[_Request]:
        with self._pending_lock:
            pending = self._pending
            out = [pending.popleft()]
            if pending:
                seen = _groups_of(out[0].batch)
                limit = self.options.batch_size
                while seen is not None and pending and len(out) < limit:
                    gs = _groups_of(pending[0].batch)
                    if gs is None or not seen.isdisjoint(gs):
                        break  # keep each group at most once per physical write
                    seen |= gs
                    out.append(pending.popleft())
            return out

    def _commit_requests(self, reqs: list[_Request]) -> None:
        groups = self._groups
        planned = []
        default_sync = self.options.sync_on_write
        sync = False
        for r in reqs:
            # Requests taken together touch disjoint groups, so each plans
            # against the committed state independently.
            try:
                batch = r.batch
                if len(batch) > 1 and len({gw.group for gw in batch}) != len(batch):
                    raise InvalidWriteError("a batch may hold at most one GroupWrite per group")
                rplan = [(gw.group, plan_group_write(gw, groups.get(gw.group, EMPTY_GROUP))) for gw in batch]
            except InvalidWriteError as exc:
                r.error = exc
                r.done = True
                continue
            except (TypeError, AttributeError) as exc:
                r.error = InvalidWriteError(f"bad batch: {exc!r}")
                r.done = True
                continue
            planned.extend(rplan)
            if r.sync if r.sync is not None else default_sync:
                sync = True
        ok = [r for r in reqs if r.error is None]
        try:
            self._write_ops(planned, sync)
        except StorageError as exc:
            for r in ok:
                r.error = exc
                r.done = True
            return
        except BaseException as exc:
            # Our own bug mid-write: the index may no longer match the files.
            self._failed = exc
            for r in ok:
                r.error = StorageIOError(f"internal error: {exc!r}")
                r.done = True
            raise
        for r in ok:
            r.done = True
        self._st["writes"] += len(ok)
        if len(ok) > 1:
            self._st["combined_writes"] += len(ok) - 1
        if self._reclaim_hint:
            try:
                self._reclaim()
            except StorageError as exc:
                # The requests themselves succeeded; a failed fsync has set
                # _failed, so the next call reports it.
                logger.warning("log %s: reclaiming segments failed: %s", self.path, exc)

    def _write_ops(self, gops: list[tuple[int, list[tuple]]], sync: bool) -> None:
        """Encode, write (one os.write), fsync if sync, then apply to the index."""
        try:
            buf, recs = self._encode(gops)
        except (struct.error, TypeError, ValueError, OverflowError) as exc:
            raise InvalidWriteError(f"cannot encode the batch: {exc!r}") from None
        self._write_encoded(buf, recs, sync)

    def _encode(self, gops):
        buf = bytearray()
        durable = self._durable
        recs = []
        for group, ops in gops:
            for op in ops:
                kind = op[0]
                if kind == OP_ENTRIES:
                    _, first, ents, terms, types, datas = op
                    n = len(datas)
                    lens = list(map(len, datas)) if n > 1 else None
                    if n == 1 or sum(lens) + ENTRY_TABLE_BYTES * n <= MAX_ENTRIES_BODY:
                        rel = len(buf)
                        ln = put_entries(buf, group, durable, first, terms, types, datas, lens)
                        recs.append((group, kind, rel, ln, (first, n, terms, ents)))
                        continue
                    for a, b in _chunks(lens):
                        rel = len(buf)
                        ln = put_entries(buf, group, durable, first + a, terms[a:b], types[a:b], datas[a:b], lens[a:b])
                        recs.append((group, kind, rel, ln, (first + a, b - a, terms[a:b], ents[a:b])))
                elif kind == OP_HARD_STATE:
                    rel = len(buf)
                    ln = put_record(buf, RecordType.HARD_STATE, group, durable, hard_state_body(op[1]))
                    recs.append((group, kind, rel, ln, op[1]))
                elif kind == OP_CONF_STATE:
                    rel = len(buf)
                    ln = put_record(buf, RecordType.CONF_STATE, group, durable, conf_state_body(op[1]))
                    recs.append((group, kind, rel, ln, op[1]))
                elif kind == OP_TRUNCATE:
                    rel = len(buf)
                    ln = put_record(buf, RecordType.TRUNCATE, group, durable, INDEX_BODY.pack(op[1]))
                    recs.append((group, kind, rel, ln, op[1]))
                elif kind == OP_COMPACT or kind == OP_RESET:
                    rel = len(buf)
                    ln = put_record(buf, kind, group, durable, INDEX_TERM_BODY.pack(op[1], op[2]))
                    recs.append((group, kind, rel, ln, (op[1], op[2])))
                    self._reclaim_hint = True
                elif kind == OP_DROP:
                    rel = len(buf)
                    ln = put_record(buf, RecordType.DROP, group, durable, b"")
                    recs.append((group, kind, rel, ln, None))
                    self._reclaim_hint = True
                else:  # pragma: no cover
                    raise AssertionError(op)
        return buf, recs

    def _write_encoded(self, buf: bytearray, recs: list, sync: bool) -> None:
        if not buf:
            if sync and self._dirty:
                self._fsync()
            return
        nbytes = len(buf)
        seg = self._segments[-1]
        if seg.size > SEGMENT_HEADER_SIZE and seg.size + nbytes > self.options.max_segment_size:
            self._rotate()
            seg = self._segments[-1]
        self._check_space(nbytes)
        start = seg.base + seg.size
        self._write_all(seg, buf)
        if sync:
            self._fsync()
        # Apply to the index: the same semantics as recovery.
        groups = self._groups
        cap = self._cache_cap
        touched = set()
        n_entries = 0
        append_only = set()
        for group, kind, rel, ln, payload in recs:
            lsn = start + rel
            if kind == OP_DROP:
                touched.add(group)
                append_only.discard(group)
                groups.pop(group, None)
                continue
            st = groups.get(group)
            if st is None:
                st = groups[group] = _Group(group)
            if kind == OP_ENTRIES:
                first, n, terms, ents = payload
                t0 = terms[0]
                ef = st.ext_first
                if ef and first > ef[0] and group not in touched:
                    append_only.add(group)  # the group's oldest record stays: its pin cannot move
                if terms[-1] == t0:
                    st.add_extent(first, n, lsn, ln, t0, None, ents, cap)
                else:
                    st.add_extent(first, n, lsn, ln, -1, tuple(terms), ents, cap)
                n_entries += n
                touched.add(group)
                continue
            touched.add(group)
            append_only.discard(group)
            if kind == OP_HARD_STATE:
                st.hs = payload
                st.hs_lsn = lsn
            elif kind == OP_CONF_STATE:
                st.cs = payload
                st.cs_lsn = lsn
            elif kind == OP_TRUNCATE:
                st.truncate(payload)
            elif kind == OP_COMPACT:
                st.compact(payload[0], payload[1], lsn)
            elif kind == OP_RESET:
                st.reset(payload[0], payload[1], lsn)
        update = self._update_pin
        for g in touched:
            if g not in append_only:
                update(g)
        s = self._st
        s["records_written"] += len(recs)
        s["entries_written"] += n_entries
        s["bytes_written"] += nbytes
        s["physical_writes"] += 1

    def _write_all(self, seg: _Segment, buf: bytearray) -> None:
        mv = memoryview(buf)
        off = 0
        try:
            while off < len(buf):
                off += os.write(seg.fd, mv[off:])
        except OSError as exc:
            # Cut the partial write so the file still ends at a record boundary.
            try:
                os.ftruncate(seg.fd, seg.size)
                os.lseek(seg.fd, seg.size, os.SEEK_SET)
            except OSError as exc2:
                self._failed = exc2
                raise StorageIOError(f"write to {seg.path} failed ({exc}) and could not be undone ({exc2})") from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(len(buf), 0, self.options.min_free_disk_space) from exc
            raise StorageIOError(f"write to {seg.path} failed: {exc}") from exc
        finally:
            mv.release()
        seg.size += len(buf)
        self._dirty = True

    def _fsync(self) -> None:
        seg = self._segments[-1]
        try:
            os.fsync(seg.fd)
        except OSError as exc:
            # After a failed fsync the page cache may have dropped our data:
            # nothing is certain until the log is reopened and recovered.
            self._failed = exc
            raise StorageIOError(f"fsync of {seg.path} failed: {exc}; the log must be reopened") from exc
        self._durable = seg.base + seg.size
        self._dirty = False
        self._st["syncs"] += 1

    def _check_space(self, nbytes: int) -> None:
        need = self.options.min_free_disk_space
        if need <= 0:
            return
        avail = disk_free_bytes(self.path)
        if avail - nbytes < need:
            self._st["disk_full_errors"] += 1
            raise DiskFullError(nbytes, avail, need)

    def _rotate(self) -> None:
        old = self._segments[-1]
        if self._dirty:
            self._fsync()  # an older segment is always whole on disk
        self._check_space(SEGMENT_HEADER_SIZE)
        self._create_segment(old.base + old.size)
        self._reclaim_hint = True
        self._st["rotations"] += 1

    # -- reclaiming segments ---------------------------------------------------

    def _update_pin(self, g: int) -> None:
        st = self._groups.get(g)
        new = -1
        if st is not None:
            lsn = st.min_lsn()
            if lsn >= 0:
                new = self._bases[bisect.bisect_right(self._bases, lsn) - 1]
        old = self._pin_of.get(g, -1)
        if new != old:
            if old >= 0:
                self._pinners[old].discard(g)
            if new >= 0:
                self._pinners[new].add(g)
                self._pin_of[g] = new
            else:
                del self._pin_of[g]

    def _reclaim(self) -> None:
        self._reclaim_hint = False
        self._delete_unpinned_prefix()
        if len(self._segments) <= self.options.rewrite_after_segments:
            return
        oldest = self._segments[0]
        pinners = sorted(self._pinners.get(oldest.base, ()))
        if not pinners:
            return
        cost = sum(self._groups[g].live_bytes() for g in pinners)
        if cost > self.options.max_segment_size // 2:
            self._st["rewrites_skipped"] += 1
            return
        gops = [(g, self._rewrite_ops(self._groups[g])) for g in pinners]
        try:
            self._write_ops(gops, sync=True)
        except DiskFullError:
            logger.warning("log %s: no space to rewrite %d lagging groups", self.path, len(pinners))
            return
        self._st["groups_rewritten"] += len(pinners)
        self._st["bytes_rewritten"] += cost
        self._delete_unpinned_prefix()

    def _rewrite_ops(self, st: _Group) -> list[tuple]:
        ops: list[tuple] = [(OP_RESET, st.base_index, st.base_term)]
        last = st.last_index
        if last > st.base_index:
            ents = self._read(st, st.base_index + 1, last + 1, None)
            terms, _idxs, types, datas = zip(*ents)
            ops.append((OP_ENTRIES, st.base_index + 1, ents, terms, types, datas))
        if st.cs is not None:
            ops.append((OP_CONF_STATE, st.cs))
        if st.hs is not None:
            ops.append((OP_HARD_STATE, st.hs))
        return ops

    def _delete_unpinned_prefix(self) -> None:
        segs = self._segments
        while len(segs) > 1 and not self._pinners.get(segs[0].base):
            if self._dirty:
                self._fsync()  # what unpinned the segment must be durable first
            seg = segs[0]
            try:
                os.unlink(seg.path)
                fsync_dir(self.path)  # one at a time: a crash never leaves a gap
            except OSError as exc:
                raise StorageIOError(f"cannot delete {seg.path}: {exc}") from exc
            segs.pop(0)
            self._bases.pop(0)
            self._pinners.pop(seg.base, None)
            os.close(seg.fd)
            self._st["segments_deleted"] += 1

    # -- reading ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failed is not None:
            raise StorageIOError(f"the log {self.path} failed ({self._failed!r}); reopen it")
        if self._closed:
            raise StorageClosedError(f"the log {self.path} is closed")

    def _group(self, group: int):
        return self._groups.get(group, EMPTY_GROUP)

    def entries(self, group: int, low: int, high: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries low <= index < high (at least one if any, then up to max_bytes of data)."""
        with self._lock:
            self._check_open()
            st = self._groups.get(group)
            base = st.base_index if st else 0
            last = st.last_index if st else 0
            if low <= base:
                raise LogCompactedError(group, low, base + 1)
            if high > last + 1:
                raise LogUnavailableError(group, high - 1, last)
            if low >= high:
                return []
            return self._read(st, low, high, max_bytes)

    def _read(self, st: _Group, low: int, high: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        c = st.cache
        disk_hi = min(high, st.cache_first) if c else high
        i = low
        size = 0
        if i < disk_hi:
            ef, ec = st.ext_first, st.ext_count
            k = bisect.bisect_right(ef, i) - 1
            while i < disk_hi:
                stop = min(disk_hi, ef[k] + ec[k])
                body = self._read_body(st.ext_lsn[k], st.ext_len[k])
                try:
                    _, ents = decode_entries(body, i, stop)
                except (ValueError, struct.error) as exc:
                    seg, off = self._where(st.ext_lsn[k])
                    raise CorruptLogError(seg.path, off, f"bad entries record: {exc}") from None
                self._st["entries_read_from_disk"] += len(ents)
                if max_bytes is None:
                    out.extend(ents)
                else:
                    for e in ents:
                        size += len(e.data)
                        if size > max_bytes and out:
                            return out
                        out.append(e)
                i = stop
                k += 1
        if i < high:
            part = c[i - st.cache_first : high - st.cache_first]
            self._st["entries_read_from_cache"] += len(part)
            if max_bytes is None:
                out.extend(part)
            else:
                for e in part:
                    size += len(e.data)
                    if size > max_bytes and out:
                        return out
                    out.append(e)
        return out

    def _where(self, lsn: int) -> tuple[_Segment, int]:
        seg = self._segments[bisect.bisect_right(self._bases, lsn) - 1]
        return seg, lsn - seg.base

    def _read_body(self, lsn: int, ln: int) -> memoryview:
        seg, off = self._where(lsn)
        data = os.pread(seg.fd, ln, off)
        if len(data) != ln:
            raise CorruptLogError(seg.path, off, "record is shorter on disk than when it was indexed")
        magic, crc, blen = struct.unpack_from("<III", data, 0)
        if magic != RECORD_MAGIC or blen + HEADER_SIZE != ln or zlib.crc32(memoryview(data)[CRC_START:]) != crc:
            raise CorruptLogError(seg.path, off, "record changed on disk since it was written")
        return memoryview(data)[HEADER_SIZE:]

    def term(self, group: int, index: int) -> int:
        """The term of entry `index` (the base index answers with the base term)."""
        with self._lock:
            self._check_open()
            st = self._groups.get(group)
            if st is None:
                if index == 0:
                    return 0
                if index < 0:
                    raise LogCompactedError(group, index, 1)
                raise LogUnavailableError(group, index, 0)
            return st.term(index)

    def first_index(self, group: int) -> int:
        """The first index that entries() can return (base index + 1)."""
        with self._lock:
            self._check_open()
            return self._group(group).base_index + 1

    def last_index(self, group: int) -> int:
        with self._lock:
            self._check_open()
            return self._group(group).last_index

    def last_term(self, group: int) -> int:
        with self._lock:
            self._check_open()
            st = self._group(group)
            return st.term(st.last_index)

    def compacted_to(self, group: int) -> tuple[int, int]:
        """(index, term) of the log's base: what the last compaction kept."""
        with self._lock:
            self._check_open()
            st = self._group(group)
            return (st.base_index, st.base_term)

    def hard_state(self, group: int) -> HardState | None:
        with self._lock:
            self._check_open()
            st = self._groups.get(group)
            return None if st is None else st.hs

    def conf_state(self, group: int) -> ConfState | None:
        with self._lock:
            self._check_open()
            st = self._groups.get(group)
            return None if st is None else st.cs

    def groups(self) -> list[int]:
        """Groups with any state in the log."""
        with self._lock:
            self._check_open()
            return sorted(self._groups)

    def stats(self) -> dict:
        with self._lock:
            segs = self._segments
            out = {
                "log_dir": str(self.path),
                "segments": len(segs),
                "log_bytes": sum(s.size for s in segs),
                "first_lsn": segs[0].base if segs else 0,
                "end_lsn": segs[-1].base + segs[-1].size if segs else 0,
                "durable_lsn": self._durable,
                "groups": len(self._groups),
                "cached_entries": sum(len(st.cache) for st in self._groups.values()),
                "pinned_segments": sum(1 for v in self._pinners.values() if v),
                "recovery_seconds": self.recovery.get("seconds", 0.0),
                "recovery_bytes": self.recovery.get("bytes", 0),
                "torn_tail": self.recovery.get("torn_tail"),
            }
            for key in (
                "writes",
                "combined_writes",
                "physical_writes",
                "syncs",
                "records_written",
                "entries_written",
                "bytes_written",
                "rotations",
                "segments_deleted",
                "groups_rewritten",
                "bytes_rewritten",
                "rewrites_skipped",
                "entries_read_from_cache",
                "entries_read_from_disk",
                "records_recovered",
                "disk_full_errors",
            ):
                out[key] = self._st[key]
            return out

    @property
    def end_lsn(self) -> int:
        """The LSN just past the last byte written (cheap; for benchmarks and tools)."""
        seg = self._segments[-1]
        return seg.base + seg.size

    def check_invariants(self) -> None:
        """For tests: every group's invariants, and the pin bookkeeping."""
        with self._lock:
            for g, st in self._groups.items():
                st.check_invariants()
                lsn = st.min_lsn()
                if lsn >= 0:
                    seg = self._bases[bisect.bisect_right(self._bases, lsn) - 1]
                    assert self._pin_of[g] == seg and g in self._pinners[seg], g
                else:
                    assert g not in self._pin_of
            assert self._bases == [s.base for s in self._segments]
            for a, b in zip(self._segments, self._segments[1:]):
                assert a.base + a.size == b.base

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """fsync anything unsynced and release the files. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._dirty and self._failed is None:
                    self._fsync()
            finally:
                self._closed = True
                self._close_files()

    def _close_files(self) -> None:
        for seg in self._segments:
            try:
                os.close(seg.fd)
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "SegmentedLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _groups_of(batch) -> set[int] | None:
    try:
        return {gw.group for gw in batch}
    except Exception:  # a malformed batch: planning it will report the error
        return None


def _chunks(lens: Sequence[int]):
    """Split one group's entries (by their lengths) into records of about MAX_ENTRIES_BODY bytes."""
    n = len(lens)
    a = 0
    size = 0
    for k, ln in enumerate(lens):
        size += ln + ENTRY_TABLE_BYTES
        if size > MAX_ENTRIES_BODY and k > a:
            yield a, k
            a = k
            size = ln + ENTRY_TABLE_BYTES
    yield a, n


def _tail_verdict(data: bytes, x: int, base: int) -> str | None:
    """Is the bad record at offset x of the last segment a torn write?

    None: yes, cut the tail there. Otherwise the reason it is corruption:
    - a later valid record says the log was fsynced past x when it was
      written: x's bytes were durable and have changed since;
    - or the damage does not look like an interrupted write (which leaves a
      short file or zeroed sectors), e.g. a flipped bit in a whole record.
    """
    end = len(data)
    x_lsn = base + x
    found_after = None
    mv = memoryview(data)
    p = x + 1
    try:
        while True:
            p = data.find(RECORD_MAGIC_BYTES, p)
            if p < 0 or p + HEADER_SIZE > end:
                break
            _m, crc, blen, _t, _f, _r, _g, durable = HEADER.unpack_from(data, p)
            rend = p + HEADER_SIZE + blen
            if rend <= end and zlib.crc32(mv[p + CRC_START : rend]) == crc:
                if durable > x_lsn:
                    return f"a later record at offset {p} was written after offset {x} was synced"
                if found_after is None:
                    found_after = p
                p = rend
            else:
                p += 1
    finally:
        mv.release()
    if end - x < HEADER_SIZE:
        return None  # a short tail: the write was cut
    if not any(data[x : x + HEADER_SIZE]):
        return None  # a zeroed header: the write never reached the disk
    magic, _crc, blen = struct.unpack_from("<III", data, x)
    if magic == RECORD_MAGIC:
        rend = x + HEADER_SIZE + blen
        if rend > end:
            if found_after is None:
                return None  # the record was cut by the end of the file
            return f"the record claims {blen} bytes past the end of the file, but valid records follow"
        stop = rend
    else:
        stop = found_after if found_after is not None else end
    if _zeroed_sector(data, x, stop):
        return None
    return "damaged bytes in a whole record (not a torn write)"


def _zeroed_sector(data: bytes, start: int, stop: int) -> bool:
    need = min(ZERO_RUN, stop - start)
    s = start - start % SECTOR
    while s < stop:
        a, b = max(start, s), min(stop, s + SECTOR)
        if b - a >= need and data.count(0, a, b) == b - a:
            return True
        s += SECTOR
    return False
