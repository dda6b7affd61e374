"""SegmentedLog: one worker's durable log, shared by all of its groups.

Blocking I/O, no trio. Records of many groups are interleaved in
`logs/segment_*.log` (format: storage/records.py, docs/storage.md). One write()
call (one batch of GroupWrites for many groups) becomes one physical write
(os.write, or os.writev for large ones) and at most one fsync. Concurrent
write() calls from several threads are combined (group commit, up to
options.batch_size calls per fsync). The write path is tuned for the worker's
round: one GroupWrite per group with new entries and/or a hard state (see
_encode_batch); the other operations take the general path (plan_group_write).

In memory, per group: the log's base (compacted index and term), last index and
term, the extents (one per ENTRIES record: first index, count, LSN and length
of the record, its term if uniform), hard state, conf state, the segment it
pins, and a bounded cache of recent entries. An LSN is a global byte position
across segments; a segment is named by the LSN of its first byte.

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
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Sequence
from itertools import pairwise

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
    U64,
    GroupWrite,
    check_entries,
    check_entry,
    check_hard_state,
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
from .group_reads import GroupReads
from .options import FileStorageOptions
from .records import (
    CRC_START,
    ENTRIES_HEAD,
    ENTRIES_HEAD_SIZE,
    ENTRY_TABLE_BYTES,
    HARD_STATE_BODY,
    HEAD,
    HEADER,
    HEADER_SIZE,
    INDEX_BODY,
    INDEX_TERM_BODY,
    MAX_ENTRIES_BODY,
    NO_VOTE,
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
ZERO_RUN = 64  # a torn write shows as zeroed sectors: a run this long (or a whole short record)
NO_PIN_END = 1 << 63  # pin_end of a group without a pin: any change may give it one

_U64 = struct.Struct("<Q")
_T_ENTRIES = int(RecordType.ENTRIES)
_T_HARD_STATE = int(RecordType.HARD_STATE)
# The write path packs the rest of a record header (after magic and crc) and
# the start of its body with one struct call:
_REST_ENTRIES = struct.Struct("<IBBHQQQI")  # + ENTRIES first, n
_REST_ENTRY1 = struct.Struct("<IBBHQQQIQIB")  # + ENTRIES first, n = 1, and the entry's term, length, type
_REST_HS = struct.Struct("<IBBHQQQQH")  # + HARD_STATE term, commit, vote length
# Recovery reads a header and the start of an ENTRIES body with one call:
_HEADER_ENTRIES = struct.Struct("<IIIBBHQQQIQ")  # + ENTRIES first, n, first term
assert _REST_ENTRIES.size == HEADER_SIZE - HEAD.size + ENTRIES_HEAD_SIZE
assert _REST_ENTRY1.size == _REST_ENTRIES.size + ENTRY_TABLE_BYTES
assert _REST_HS.size == HEADER_SIZE - HEAD.size + HARD_STATE_BODY.size
assert _HEADER_ENTRIES.size == HEADER_SIZE + ENTRIES_HEAD_SIZE + 8
# An ENTRIES record's data up to this size is copied after its table (one
# piece, one crc32 call); larger data stays a piece of its own (no copy).
SMALL_DATA = 4096
# Entries of at least this size (on average, in a record of more than
# 4 * SMALL_DATA bytes, once a write holds ITEMIZE_AFTER bytes) go out as
# pieces of their own (see _encode_batch).
LARGE_ENTRY = 1024
ITEMIZE_AFTER = 1 << 20
# A write of at least WRITEV_MIN bytes in pieces of WRITEV_PIECE bytes or more
# on average goes out with os.writev; anything else is joined into one buffer
# first (cheaper for many small pieces; measured on Linux, tmpfs and ext4).
WRITEV_MIN = 256 << 10
WRITEV_PIECE = 2048
try:
    IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX")))
except (ValueError, OSError, AttributeError):  # pragma: no cover
    IOV_MAX = 16
_U64S: dict[int, struct.Struct] = {}
_U32S: dict[int, struct.Struct] = {}


def _u64s(n: int) -> struct.Struct:
    s = _U64S.get(n)
    if s is None:
        if len(_U64S) > 1024:
            _U64S.clear()
        s = _U64S[n] = struct.Struct(f"<{n}Q")
    return s


def _u32s(n: int) -> struct.Struct:
    s = _U32S.get(n)
    if s is None:
        if len(_U32S) > 1024:
            _U32S.clear()
        s = _U32S[n] = struct.Struct(f"<{n}I")
    return s


def _write_fully(fd: int, buf, done: int) -> None:
    """Finish writing buf, of which `done` bytes were written."""
    if done == len(buf):
        return
    mv = memoryview(buf)
    try:
        while done < len(buf):
            done += os.write(fd, mv[done:])
    finally:
        mv.release()


_STAT_KEYS = (
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
)


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

    The extents, one per ENTRIES record still holding live entries: ext_first[k]
    is the first live index of record k, and ext[4k : 4k + 4] its live count,
    LSN, length (header included) and term (-1: the terms differ, see mixed).

    Invariants (check_invariants):
    - extents are sorted, contiguous, non-empty, and cover exactly
      base_index + 1 .. last_index; last_term == term(last_index);
    - a record's term is -1 iff mixed holds its terms (by LSN);
    - the cache holds the most recent entries: last_index - len(cache) + 1 ..
      last_index, all above base_index;
    - pin is the base of the segment holding min_lsn() (-1: none), and pin_end
      is at least the LSN where that segment ends (a record replaced at an LSN
      >= pin_end cannot move the pin).
    """

    __slots__ = (
        "group",
        "base_index",
        "base_term",
        "base_lsn",
        "last_index",
        "last_term",
        "hs",
        "hs_lsn",
        "cs",
        "cs_lsn",
        "ext_first",
        "ext",
        "mixed",
        "cache",
        "pin",
        "pin_end",
    )

    def __init__(self, group: int, cache_cap: int = 0) -> None:
        self.group = group
        self.base_index = 0
        self.base_term = 0
        self.base_lsn = -1  # LSN of the COMPACT/RESET record that set the base (-1: none)
        self.last_index = 0
        self.last_term = 0
        self.hs: HardState | None = None
        self.hs_lsn = -1
        self.cs: ConfState | None = None
        self.cs_lsn = -1
        self.ext_first = array("q")
        self.ext = array("q")  # per record: live count, LSN, length, term (or -1)
        self.mixed: dict[int, tuple[int, tuple[int, ...]]] = {}  # lsn -> (record first index, terms)
        self.cache: collections.deque[Entry] = collections.deque(maxlen=cache_cap)
        self.pin = -1
        self.pin_end = NO_PIN_END

    def term(self, i: int) -> int:
        if i == self.last_index:
            return self.last_term
        c = self.cache
        k = i - self.last_index + len(c) - 1  # where entry i is in the cache
        if 0 <= k < len(c):
            return c[k].term
        if i == self.base_index:
            return self.base_term
        if i < self.base_index:
            raise LogCompactedError(self.group, i, self.base_index + 1)
        if i > self.last_index:
            raise LogUnavailableError(self.group, i, self.last_index)
        return self._disk_term(i)

    def _disk_term(self, i: int) -> int:
        k = bisect.bisect_right(self.ext_first, i) - 1
        t = self.ext[4 * k + 3]
        if t >= 0:
            return t
        rec_first, terms = self.mixed[self.ext[4 * k + 1]]
        return terms[i - rec_first]

    def min_lsn(self) -> int:
        """LSN of the oldest record this group still needs (-1: none)."""
        m = -1
        for v in (self.hs_lsn, self.cs_lsn, self.base_lsn, self.ext[1] if self.ext else -1):
            if v >= 0 and (m < 0 or v < m):
                m = v
        return m

    def live_bytes(self) -> int:
        return sum(self.ext[2::4]) + 256

    # -- the record semantics (shared by recovery and the write path) --------

    def add_extent(self, first, n, lsn, ln, term, mixed_terms, entries) -> None:
        """Entries first..first+n-1 in the ENTRIES record at lsn (term: their
        single term, or -1 and mixed_terms). Replaces entries >= first.
        entries: the Entry objects (for the cache), or None."""
        if self.last_index >= first:
            self.truncate(first)  # an append replaces everything from its first index on
        self.ext_first.append(first)
        self.ext.fromlist([n, lsn, ln, term])
        if term < 0:
            self.mixed[lsn] = (first, mixed_terms)
            self.last_term = mixed_terms[-1]
        else:
            self.last_term = term
        if entries is not None and self.last_index == first - 1:
            self.cache.extend(entries)
        else:
            self.cache.clear()
        self.last_index = first + n - 1

    def _drop_extents(self, a: int, b: int | None) -> None:
        """Forget extents a..b-1 (b None: to the end)."""
        ext = self.ext
        if self.mixed:
            for lsn in ext[4 * a + 1 : None if b is None else 4 * b : 4]:
                self.mixed.pop(lsn, None)
        del self.ext_first[a:b]
        del ext[4 * a : None if b is None else 4 * b]

    def truncate(self, i: int) -> None:
        """Remove entries >= i."""
        if i > self.last_index:
            return
        ef = self.ext_first
        ext = self.ext
        k = bisect.bisect_left(ef, i)
        if k < len(ef):
            self._drop_extents(k, None)
        if k > 0 and ef[k - 1] + ext[4 * k - 4] > i:
            ext[4 * k - 4] = i - ef[k - 1]
        c = self.cache
        if c:
            drop = self.last_index - i + 1
            if drop >= len(c):
                c.clear()
            else:
                for _ in range(drop):
                    c.pop()
        if ef:
            self.last_index = last = ef[-1] + ext[-4] - 1
            self.last_term = c[-1].term if c else self._disk_term(last)
        else:
            self.last_index, self.last_term = self.base_index, self.base_term
            c.clear()

    def compact(self, i: int, t: int, lsn: int) -> None:
        """Remove entries <= i; the base becomes (i, t)."""
        ef = self.ext_first
        ext = self.ext
        k = bisect.bisect_right(ef, i)
        if k:
            j = k - 1
            if ef[j] + ext[4 * j] - 1 > i:
                ext[4 * j] -= i + 1 - ef[j]
                ef[j] = i + 1
                drop = j
            else:
                drop = k
            if drop:
                self._drop_extents(0, drop)
        self.base_index, self.base_term, self.base_lsn = i, t, lsn
        c = self.cache
        if not ef:
            self.last_index, self.last_term = i, t
            c.clear()
        elif c:
            cut = i + 1 - (self.last_index - len(c) + 1)
            if cut >= len(c):
                c.clear()
            else:
                for _ in range(cut):
                    c.popleft()

    def reset(self, i: int, t: int, lsn: int) -> None:
        """Remove every entry; the base becomes (i, t)."""
        self._drop_extents(0, None)
        self.mixed.clear()
        self.cache.clear()
        self.base_index, self.base_term, self.base_lsn = i, t, lsn
        self.last_index, self.last_term = i, t

    def holes(self) -> str | None:
        """None if the extents cover base+1..last contiguously, else a description."""
        ef, ext = self.ext_first, self.ext
        if not ef:
            return None
        if ef[0] != self.base_index + 1:
            return f"entries {self.base_index + 1}..{ef[0] - 1} missing (base {self.base_index})"
        for k in range(1, len(ef)):
            if ef[k] != ef[k - 1] + ext[4 * k - 4]:
                return f"entries {ef[k - 1] + ext[4 * k - 4]}..{ef[k] - 1} missing"
        return None

    def check_invariants(self) -> None:
        assert self.holes() is None, (self.group, self.holes())
        n = len(self.ext_first)
        ext = self.ext
        assert len(ext) == 4 * n
        assert all(c > 0 for c in ext[0::4])
        assert list(ext[1::4]) == sorted(ext[1::4])
        assert {lsn for lsn, t in zip(ext[1::4], ext[3::4], strict=True) if t < 0} == set(self.mixed)
        if n:
            assert self.last_index == self.ext_first[-1] + ext[-4] - 1, self.group
            assert self.last_term == self._disk_term(self.last_index), self.group
        else:
            assert (self.last_index, self.last_term) == (self.base_index, self.base_term), self.group
        c = self.cache
        if c:
            first = self.last_index - len(c) + 1
            assert first > self.base_index
            assert [e.index for e in c] == list(range(first, self.last_index + 1))
            assert all(e.term == self._disk_term(e.index) for e in c)


class _Request:
    __slots__ = ("batch", "sync", "done", "error")

    def __init__(self, batch, sync) -> None:
        self.batch = batch
        self.sync = sync
        self.done = False
        self.error: BaseException | None = None


class SegmentedLog(GroupReads):
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
        self._st = dict.fromkeys(_STAT_KEYS, 0)
        self._path_str = str(self.path)
        self._vectored = False
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
        for g, st in self._groups.items():
            self._update_pin(g, st)
        dt = time.perf_counter() - t0
        self.recovery = {
            "seconds": dt,
            "bytes": scanned,
            "segments": len(found),
            "groups": len(self._groups),
            "torn_tail": None
            if torn is None
            else {"segment": str(self._segments[torn[0]].path), "offset": torn[1], "reason": torn[2]},
        }

    def _scan(self, path, base: int, data: bytes, is_last: bool) -> int:
        """Replay one segment's records; return the end of its valid data."""
        groups = self._groups
        cap = self._cache_cap
        get = groups.get
        unpack = HEADER.unpack_from
        unpack_he = _HEADER_ENTRIES.unpack_from
        he_size = _HEADER_ENTRIES.size
        eunpack = ENTRIES_HEAD.unpack_from
        qunpack = _U64.unpack_from
        crc32 = zlib.crc32
        mv = memoryview(data)
        end = len(data)
        pos = SEGMENT_HEADER_SIZE
        nrec = 0
        bad = None
        while pos < end:
            if pos + he_size <= end:
                # the header and, if this is an ENTRIES record, its first index,
                # count and first term (else bytes of what follows: unused)
                magic, crc, blen, rtype, _flags, _r, group, _durable, first, n, t0 = unpack_he(data, pos)
            elif pos + HEADER_SIZE <= end:
                magic, crc, blen, rtype, _flags, _r, group, _durable = unpack(data, pos)
                first = n = t0 = None
            else:
                bad = "truncated record header"
                break
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
                st = groups[group] = _Group(group, cap)
            lsn = base + pos
            b = pos + HEADER_SIZE
            try:
                if rtype == 1:  # ENTRIES
                    if first is None:
                        first, n = eunpack(data, b)
                    if n == 0 or ENTRIES_HEAD_SIZE + ENTRY_TABLE_BYTES * n > blen:
                        raise ValueError(f"entries table of {n} entries does not fit")
                    tp = b + ENTRIES_HEAD_SIZE
                    if t0 is None:
                        t0 = qunpack(data, tp)[0]
                    ef = st.ext_first
                    if n > 1 and qunpack(data, tp + 8 * n - 8)[0] != t0:  # mixed terms
                        st.add_extent(first, n, lsn, rend - pos, -1, _u64s(n).unpack_from(data, tp), None)
                    elif ef and st.last_index >= first:  # a replacing append
                        st.add_extent(first, n, lsn, rend - pos, t0, None, None)
                    else:  # the common case, inlined: an append with one term
                        ef.append(first)
                        st.ext.fromlist([n, lsn, rend - pos, t0])
                        st.last_index = first + n - 1
                        st.last_term = t0
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
        default_sync = self.options.sync_on_write
        sync = False
        out: list = []  # the pieces of the one physical write, back to back
        fast: list = []  # index updates of the common case (see _encode_batch)
        slow: list = []  # index updates record by record: (group, kind, rel, ln, payload)
        pos = 0
        durable = self._durable
        ok = []
        self._vectored = False  # set when a record's entries are pieces of their own
        for r in reqs:
            # Requests taken together touch disjoint groups, so each is checked
            # against the committed state independently; a bad one is cut out.
            marks = (len(out), len(fast), len(slow), pos)
            try:
                pos = self._encode_batch(r.batch, durable, out, fast, slow, pos)
            except InvalidWriteError as exc:
                err = exc
            except (TypeError, AttributeError) as exc:
                err = InvalidWriteError(f"bad batch: {exc!r}")
            except (struct.error, ValueError, OverflowError) as exc:
                err = InvalidWriteError(f"cannot encode the batch: {exc!r}")
            except BaseException as exc:
                # Our own bug (nothing written or applied yet): fail these requests.
                for q in reqs:
                    if not q.done:
                        q.error = StorageIOError(f"internal error: {exc!r}")
                        q.done = True
                raise
            else:
                ok.append(r)
                if r.sync if r.sync is not None else default_sync:
                    sync = True
                continue
            del out[marks[0] :], fast[marks[1] :], slow[marks[2] :]
            pos = marks[3]
            r.error = err
            r.done = True
        try:
            self._write_encoded(out, pos, fast, slow, sync)
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

    def _encode_batch(self, batch, durable: int, out: list, fast: list, slow: list, pos: int) -> int:
        """Validate and encode one write() call's batch; return the new pos.

        Appends the records' bytes to `out` (pos: their total length so far)
        and what applying them to the index takes to `fast` and `slow`;
        changes nothing else. The common case, a GroupWrite with only entries
        (one record's worth, appended or replacing a suffix) and/or a hard
        state, is checked by batch.check_entries / check_entry /
        check_hard_state (the rules of plan_group_write) and encoded inline.
        The plainest cases (one entry appended right after the last; a hard
        state of ints and a short vote) are accepted by inline tests first,
        each a narrower form of those functions' own; anything they do not
        accept goes to the functions. Any other GroupWrite goes through
        plan_group_write and _encode_ops.
        """
        groups = self._groups
        if len(batch) > 1 and len({gw.group for gw in batch}) != len(batch):
            raise InvalidWriteError("a batch may hold at most one GroupWrite per group")
        crc32 = zlib.crc32
        head_pack = HEAD.pack
        e1_pack = _REST_ENTRY1.pack
        hs_pack = _REST_HS.pack
        app = out.append
        fapp = fast.append
        for gw in batch:
            g = gw.group
            if type(g) is not int or not 0 <= g < U64:
                raise InvalidWriteError(f"group must be an int in [0, 2**63), got {g!r}")
            if gw.remove or gw.compact_to is not None or gw.truncate_from is not None or gw.conf_state is not None:
                pos = self._encode_ops(g, plan_group_write(gw, groups.get(g, EMPTY_GROUP)), durable, out, slow, pos)
                continue
            st = groups.get(g)
            ents = gw.entries
            hs = gw.hard_state
            e_rel = -1
            first = n = e_ln = tcode = 0
            mterms = None
            if ents:
                if len(ents) == 1:
                    e = ents[0]
                    if type(e) is Entry and st is not None:
                        tcode, first, ty, d = e
                        if not (
                            first == st.last_index + 1
                            and type(first) is int
                            and type(tcode) is int
                            and st.last_term <= tcode < U64
                            and first < U64
                            and type(ty) is int
                            and 0 <= ty < 256
                            and type(d) is bytes
                        ):
                            tcode, first, ty, d = check_entry(
                                g, e, st.base_index, st.base_term, st.last_index, st.last_term, st
                            )
                    elif st is None:
                        tcode, first, ty, d = check_entry(g, e, 0, 0, 0, 0, EMPTY_GROUP)
                    else:
                        tcode, first, ty, d = check_entry(
                            g, e, st.base_index, st.base_term, st.last_index, st.last_term, st
                        )
                    n = 1
                    dl = len(d)
                    blen = ENTRIES_HEAD_SIZE + ENTRY_TABLE_BYTES + dl
                    head = e1_pack(blen, _T_ENTRIES, 0, 0, g, durable, first, 1, tcode, dl, ty)
                else:
                    if st is None:
                        first, n, terms, types, datas = check_entries(g, ents, 0, 0, 0, 0, EMPTY_GROUP)
                    else:
                        first, n, terms, types, datas = check_entries(
                            g, ents, st.base_index, st.base_term, st.last_index, st.last_term, st
                        )
                    tcode = terms[0]
                    if len(datas[0]) < LARGE_ENTRY:
                        d = b"".join(datas)
                        dl = len(d)
                        lcol = _u32s(n).pack(*map(len, datas))
                    else:  # probably large entries: see below
                        d = None
                        lens = list(map(len, datas))
                        dl = sum(lens)
                        lcol = _u32s(n).pack(*lens)
                    if dl + ENTRY_TABLE_BYTES * n > MAX_ENTRIES_BODY:
                        # more than one record's worth: the general path splits it
                        ops: list[tuple] = [(OP_ENTRIES, first, ents, terms, types, datas)]
                        if hs is not None:
                            check_hard_state(g, hs)
                            ops.append((OP_HARD_STATE, hs))
                        pos = self._encode_ops(g, ops, durable, out, slow, pos)
                        continue
                    if terms[-1] == tcode:  # checked non-decreasing: all equal
                        tcol = _U64.pack(tcode) * n
                    else:
                        tcol = _u64s(n).pack(*terms)
                        mterms = terms
                        tcode = -1
                    blen = ENTRIES_HEAD_SIZE + ENTRY_TABLE_BYTES * n + dl
                    head = (
                        _REST_ENTRIES.pack(blen, _T_ENTRIES, 0, 0, g, durable, first, n)
                        + tcol
                        + lcol
                        + (bytes(n) if types.count(0) == n else bytes(types))
                    )
                e_rel = pos
                e_ln = 8 + len(head) + dl
                pos += e_ln
                if d is None and e_rel >= ITEMIZE_AFTER and dl > SMALL_DATA * 4 and dl >= LARGE_ENTRY * n:
                    # Large entries, in a large write: each is a piece of its
                    # own (os.writev), not copied into a joined buffer (many
                    # large temporaries alive at once tend to land on fresh
                    # pages of memory, and page faults cost more than the copy).
                    c = crc32(head)
                    for x in datas:
                        c = crc32(x, c)
                    app(head_pack(RECORD_MAGIC, c))
                    app(head)
                    out += datas
                    self._vectored = True
                else:
                    if d is None:
                        d = b"".join(datas)
                    if dl <= SMALL_DATA:
                        head += d
                        app(head_pack(RECORD_MAGIC, crc32(head)))
                        app(head)
                    else:  # no copy of the data
                        app(head_pack(RECORD_MAGIC, crc32(d, crc32(head))))
                        app(head)
                        app(d)
            if hs is not None:
                if type(hs) is HardState:
                    term, vote, commit = hs
                    if not (
                        type(term) is int
                        and type(commit) is int
                        and 0 <= term < U64
                        and 0 <= commit < U64
                        and (vote is None or type(vote) is str and vote.isascii() and len(vote) < 0xFFFF)
                    ):
                        check_hard_state(g, hs)
                else:
                    check_hard_state(g, hs)
                    term, vote, commit = hs
                if vote is None:
                    rest = hs_pack(HARD_STATE_BODY.size, _T_HARD_STATE, 0, 0, g, durable, term, commit, NO_VOTE)
                else:
                    vb = vote.encode()
                    blen = HARD_STATE_BODY.size + len(vb)
                    rest = hs_pack(blen, _T_HARD_STATE, 0, 0, g, durable, term, commit, len(vb)) + vb
                app(head_pack(RECORD_MAGIC, crc32(rest)))
                app(rest)
                fapp((st, g, e_rel, e_ln, first, n, tcode, mterms, ents, pos, hs))
                pos += 8 + len(rest)
            elif e_rel >= 0:
                fapp((st, g, e_rel, e_ln, first, n, tcode, mterms, ents, -1, None))
        return pos

    def _encode_ops(self, group: int, ops: list[tuple], durable: int, out: list, slow: list, pos: int) -> int:
        """Encode one group's planned operations (the general path)."""
        for op in ops:
            kind = op[0]
            if kind == OP_ENTRIES:
                _, first, ents, terms, types, datas = op
                n = len(datas)
                lens = list(map(len, datas)) if n > 1 else None  # one entry: put_entries measures it
                if lens is None or sum(lens) + ENTRY_TABLE_BYTES * n <= MAX_ENTRIES_BODY:
                    rec = bytearray()
                    ln = put_entries(rec, group, durable, first, terms, types, datas, lens)
                    out.append(rec)
                    slow.append((group, kind, pos, ln, (first, n, terms, ents)))
                    pos += ln
                    continue
                for a, b in _chunks(lens):
                    rec = bytearray()
                    ln = put_entries(rec, group, durable, first + a, terms[a:b], types[a:b], datas[a:b], lens[a:b])
                    out.append(rec)
                    slow.append((group, kind, pos, ln, (first + a, b - a, terms[a:b], ents[a:b])))
                    pos += ln
                continue
            buf = bytearray()
            if kind == OP_HARD_STATE:
                put_record(buf, RecordType.HARD_STATE, group, durable, hard_state_body(op[1]))
                payload = op[1]
            elif kind == OP_CONF_STATE:
                put_record(buf, RecordType.CONF_STATE, group, durable, conf_state_body(op[1]))
                payload = op[1]
            elif kind == OP_TRUNCATE:
                put_record(buf, RecordType.TRUNCATE, group, durable, INDEX_BODY.pack(op[1]))
                payload = op[1]
            elif kind in (OP_COMPACT, OP_RESET):
                put_record(buf, kind, group, durable, INDEX_TERM_BODY.pack(op[1], op[2]))
                payload = (op[1], op[2])
                self._reclaim_hint = True
            elif kind == OP_DROP:
                put_record(buf, RecordType.DROP, group, durable, b"")
                payload = None
                self._reclaim_hint = True
            else:  # pragma: no cover
                raise AssertionError(op)
            out.append(buf)
            ln = len(buf)
            slow.append((group, kind, pos, ln, payload))
            pos += ln
        return pos

    def _write_ops(self, gops: list[tuple[int, list[tuple]]], sync: bool) -> None:
        """Encode and write (one physical write, fsync if sync) planned operations, then apply them."""
        out: list = []
        slow: list = []
        pos = 0
        self._vectored = False
        try:
            for group, ops in gops:
                pos = self._encode_ops(group, ops, self._durable, out, slow, pos)
        except (struct.error, TypeError, ValueError, OverflowError) as exc:
            raise InvalidWriteError(f"cannot encode the batch: {exc!r}") from None
        self._write_encoded(out, pos, [], slow, sync)

    def _write_encoded(self, out: list, nbytes: int, fast: list, slow: list, sync: bool) -> None:
        if not nbytes:
            if sync and self._dirty:
                self._fsync()
            return
        seg = self._segments[-1]
        if seg.size > SEGMENT_HEADER_SIZE and seg.size + nbytes > self.options.max_segment_size:
            self._rotate()
            seg = self._segments[-1]
        self._check_space(nbytes)
        start = seg.base + seg.size
        self._write_all(seg, out, nbytes)
        if sync:
            self._fsync()
        # Apply to the index: the same semantics as recovery.
        n_records = len(slow)
        n_entries = 0
        if slow:
            n_entries = self._apply_slow(slow, start)
        groups = self._groups
        cap = self._cache_cap
        update = self._update_pin
        head = seg.base
        for st, g, e_rel, e_ln, first, n, tcode, mterms, ents, h_rel, hs in fast:
            if st is None:
                st = groups[g] = _Group(g, cap)
            # Only adding and replacing records here, so a group pinning the
            # segment just written to keeps pinning it. Otherwise the pin may
            # move when the record replaced was the group's oldest.
            repin = False
            if e_rel >= 0:
                lsn = start + e_rel
                ef = st.ext_first
                if (not ef or first <= ef[0]) and st.pin != head:
                    repin = True  # the group's oldest entries record changes
                if tcode < 0 or st.last_index >= first:
                    st.add_extent(first, n, lsn, e_ln, tcode, mterms, ents)
                else:  # add_extent, inlined for a plain append with one term
                    ef.append(first)
                    st.ext.fromlist([n, lsn, e_ln, tcode])
                    st.last_index = first + n - 1
                    st.last_term = tcode
                    st.cache.extend(ents)
                n_records += 1
                n_entries += n
            if h_rel >= 0:
                if st.hs_lsn < st.pin_end and st.pin != head:
                    repin = True  # the replaced record may have been the one pinning
                st.hs = hs
                st.hs_lsn = start + h_rel
                n_records += 1
            if repin:
                update(g, st)
        s = self._st
        s["records_written"] += n_records
        s["entries_written"] += n_entries
        s["bytes_written"] += nbytes
        s["physical_writes"] += 1

    def _apply_slow(self, recs: list, start: int) -> int:
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
                st = groups[group] = _Group(group, cap)
            if kind == OP_ENTRIES:
                first, n, terms, ents = payload
                t0 = terms[0]
                ef = st.ext_first
                if ef and first > ef[0] and group not in touched:
                    append_only.add(group)  # the group's oldest record stays: its pin cannot move
                if terms[-1] == t0:
                    st.add_extent(first, n, lsn, ln, t0, None, ents)
                else:
                    st.add_extent(first, n, lsn, ln, -1, tuple(terms), ents)
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
                update(g, groups.get(g))
        return n_entries

    def _write_all(self, seg: _Segment, out: list, nbytes: int) -> None:
        """Write the pieces at the end of seg: one os.write (small batches) or
        os.writev calls (large ones: no copy into one buffer)."""
        fd = seg.fd
        try:
            if len(out) == 1 or nbytes < WRITEV_MIN or (nbytes < WRITEV_PIECE * len(out) and not self._vectored):
                buf = out[0] if len(out) == 1 else b"".join(out)
                _write_fully(fd, buf, os.write(fd, buf))
            else:
                for k in range(0, len(out), IOV_MAX):
                    chunk = out[k : k + IOV_MAX]
                    done = os.writev(fd, chunk)
                    if done != sum(map(len, chunk)):
                        _write_fully(fd, b"".join(chunk), done)
        except OSError as exc:
            # Cut the partial write so the file still ends at a record boundary.
            try:
                os.ftruncate(fd, seg.size)
                os.lseek(fd, seg.size, os.SEEK_SET)
            except OSError as exc2:
                self._failed = exc2
                raise StorageIOError(f"write to {seg.path} failed ({exc}) and could not be undone ({exc2})") from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(nbytes, 0, self.options.min_free_disk_space) from exc
            raise StorageIOError(f"write to {seg.path} failed: {exc}") from exc
        seg.size += nbytes
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
        avail = disk_free_bytes(self._path_str)
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

    def _update_pin(self, g: int, st: _Group | None) -> None:
        """Recompute which segment group g (state st, None if dropped) pins."""
        new = -1
        if st is not None:
            st.pin_end = NO_PIN_END
            lsn = st.min_lsn()
            if lsn >= 0:
                bases = self._bases
                k = bisect.bisect_right(bases, lsn) - 1
                new = bases[k]
                if k + 1 < len(bases):
                    st.pin_end = bases[k + 1]
            st.pin = new
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
            terms, _idxs, types, datas = zip(*ents, strict=True)
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

    def _group_states(self) -> dict:
        return self._groups

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
            assert st is not None  # an absent group has base 0 and last 0: the checks above answered
            return self._read(st, low, high, max_bytes)

    def _read(self, st: _Group, low: int, high: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        c = st.cache
        cache_first = st.last_index - len(c) + 1
        disk_hi = min(high, cache_first) if c else high
        i = low
        size = 0
        if i < disk_hi:
            ef, ext = st.ext_first, st.ext
            k = bisect.bisect_right(ef, i) - 1
            while i < disk_hi:
                stop = min(disk_hi, ef[k] + ext[4 * k])
                lsn = ext[4 * k + 1]
                body = self._read_body(lsn, ext[4 * k + 2])
                try:
                    _, ents = decode_entries(body, i, stop)
                except (ValueError, struct.error) as exc:
                    seg, off = self._where(lsn)
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
            part = list(itertools.islice(c, i - cache_first, high - cache_first))
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
            out.update(self._st)
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
                    k = bisect.bisect_right(self._bases, lsn) - 1
                    seg = self._bases[k]
                    assert self._pin_of[g] == seg and g in self._pinners[seg] and st.pin == seg, g
                    assert k + 1 == len(self._bases) or st.pin_end >= self._bases[k + 1], g
                else:
                    assert g not in self._pin_of and st.pin == -1, g
            assert set(self._pin_of) <= set(self._groups)
            assert self._bases == [s.base for s in self._segments]
            for a, b in pairwise(self._segments):
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

    def __enter__(self) -> SegmentedLog:
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
