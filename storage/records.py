"""The on-disk format of the segmented log: segment header, record framing, bodies.

All integers are little-endian. See docs/storage.md for the full description.

Segment file `segment_{base:020d}.log`, where base is the log sequence number
(LSN: a global byte position, increasing across segments) of its first byte:

    SEGMENT_HEADER  magic b"MRSEGv1\\n" | base u64 | crc32(first 16 bytes) u32 | 0 u32

then records back to back. A record:

    magic u32 (b"MRRL") | crc u32 | body_len u32 | type u8 | flags u8 | 0 u16 |
    group u64 | durable u64 | body (body_len bytes)

crc = crc32 of everything after the crc field: the rest of the header and the
body. `durable` is the LSN up to which the log was known to be fsynced when the
record was written: recovery uses it to tell a torn tail (never synced) from
corruption (bytes that were synced and later changed).
"""

from __future__ import annotations

import enum
import functools
import json
import struct
import zlib
from collections.abc import Sequence

from multiraft.raft.types import ConfState, Entry, HardState

SEGMENT_MAGIC = b"MRSEGv1\n"
SEGMENT_HEADER = struct.Struct("<8sQII")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 24

RECORD_MAGIC = 0x4C52524D  # bytes b"MRRL" in little-endian order
RECORD_MAGIC_BYTES = struct.pack("<I", RECORD_MAGIC)
HEAD = struct.Struct("<II")  # magic, crc
REST = struct.Struct("<IBBHQQ")  # body_len, type, flags, reserved, group, durable
HEADER = struct.Struct("<IIIBBHQQ")
HEADER_SIZE = HEADER.size  # 32
CRC_START = HEAD.size  # the crc covers bytes [8, 32 + body_len)

# ENTRIES body: first_index u64 | count u32 | terms u64*n | lengths u32*n |
# types u8*n | data (the payloads back to back). Columnar, so recovery reads a
# record's index range and terms without touching each entry.
ENTRIES_HEAD = struct.Struct("<QI")
ENTRIES_HEAD_SIZE = ENTRIES_HEAD.size  # 12
ENTRY_TABLE_BYTES = 13  # per entry: term u64 + length u32 + type u8
HARD_STATE_BODY = struct.Struct("<QQH")  # term, commit, vote length (NO_VOTE: None)
NO_VOTE = 0xFFFF
INDEX_BODY = struct.Struct("<Q")  # TRUNCATE: first index removed
INDEX_TERM_BODY = struct.Struct("<QQ")  # COMPACT / RESET: index, term

# Entries of one group in one write are split into records of about this size,
# so a read of one old entry never has to load a huge record.
MAX_ENTRIES_BODY = 1 << 20
MAX_BODY = 0xFFFFFFFF


class RecordType(enum.IntEnum):
    # Every record is context-free, so replaying any suffix of the log that
    # starts past every group's oldest needed record rebuilds the same state.
    ENTRIES = 1  # remove the group's entries >= first_index, then add these
    HARD_STATE = 2  # set (term, vote, commit)
    CONF_STATE = 3  # set the membership (JSON of ConfState.to_plain())
    TRUNCATE = 4  # remove entries >= index
    COMPACT = 5  # remove entries <= index; the log's base becomes (index, term)
    RESET = 6  # remove every entry; the base becomes (index, term)
    DROP = 7  # forget the group entirely


def segment_name(base: int) -> str:
    return f"segment_{base:020d}.log"


def parse_segment_name(name: str) -> int | None:
    if not (name.startswith("segment_") and name.endswith(".log")):
        return None
    digits = name[len("segment_") : -len(".log")]
    if not digits.isdigit():
        return None
    return int(digits)


def segment_header(base: int) -> bytes:
    first = SEGMENT_MAGIC + struct.pack("<Q", base)
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, base, zlib.crc32(first), 0)


def check_segment_header(data: bytes) -> int | None:
    """The base LSN recorded in a segment header, or None if the header is bad."""
    if len(data) < SEGMENT_HEADER_SIZE:
        return None
    magic, base, crc, reserved = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC or crc != zlib.crc32(data[:16]) or reserved != 0:
        return None
    return base


# -- encoding ---------------------------------------------------------------


def put_record(buf: bytearray, rtype: int, group: int, durable: int, body: bytes) -> int:
    """Append one framed record to buf; return its length."""
    rest = REST.pack(len(body), rtype, 0, 0, group, durable)
    crc = zlib.crc32(body, zlib.crc32(rest))
    buf += HEAD.pack(RECORD_MAGIC, crc)
    buf += rest
    buf += body
    return HEADER_SIZE + len(body)


@functools.lru_cache(maxsize=512)
def _table(n: int) -> struct.Struct:
    return struct.Struct(f"<QI{n}Q{n}I{n}B")


_TABLE1 = struct.Struct("<QIQIB")


def put_entries(
    buf: bytearray,
    group: int,
    durable: int,
    first: int,
    terms: Sequence[int],
    types: Sequence[int],
    datas: Sequence[bytes],
    lens: Sequence[int] | None = None,
) -> int:
    """Append one ENTRIES record (entries first.. with these columns); return its length."""
    n = len(datas)
    if n == 1:
        data = datas[0]
        table = _TABLE1.pack(first, 1, terms[0], len(data), types[0])
    else:
        if lens is None:
            lens = list(map(len, datas))
        table = _table(n).pack(first, n, *terms, *lens, *types)
        data = b"".join(datas)
    body_len = len(table) + len(data)
    rest = REST.pack(body_len, 1, 0, 0, group, durable)
    crc = zlib.crc32(data, zlib.crc32(table, zlib.crc32(rest)))
    buf += HEAD.pack(RECORD_MAGIC, crc)
    buf += rest
    buf += table
    buf += data
    return HEADER_SIZE + body_len


def hard_state_body(hs: HardState) -> bytes:
    if hs.vote is None:
        return HARD_STATE_BODY.pack(hs.term, hs.commit, NO_VOTE)
    vote = hs.vote.encode()
    if len(vote) >= NO_VOTE:
        raise ValueError(f"vote {hs.vote!r} is too long")
    return HARD_STATE_BODY.pack(hs.term, hs.commit, len(vote)) + vote


def conf_state_body(cs: ConfState) -> bytes:
    return json.dumps(cs.to_plain(), separators=(",", ":")).encode()


# -- decoding (raise ValueError on malformed bodies; callers name the place) --


def decode_hard_state(body) -> HardState:
    term, commit, vlen = HARD_STATE_BODY.unpack_from(body, 0)
    if vlen == NO_VOTE:
        if len(body) != HARD_STATE_BODY.size:
            raise ValueError("hard state body has trailing bytes")
        return HardState(term, None, commit)
    if len(body) != HARD_STATE_BODY.size + vlen:
        raise ValueError("hard state body length does not match its vote length")
    return HardState(term, bytes(body[HARD_STATE_BODY.size :]).decode(), commit)


def decode_conf_state(body) -> ConfState:
    return ConfState.from_plain(json.loads(bytes(body)))


def entries_head(body, offset: int = 0) -> tuple[int, int]:
    """(first_index, count) of an ENTRIES body."""
    return ENTRIES_HEAD.unpack_from(body, offset)


def decode_entries(body, low: int | None = None, high: int | None = None) -> tuple[int, list[Entry]]:
    """Decode an ENTRIES body: (first_index, entries with low <= index < high)."""
    first, n = ENTRIES_HEAD.unpack_from(body, 0)
    table_end = ENTRIES_HEAD_SIZE + ENTRY_TABLE_BYTES * n
    if n == 0 or table_end > len(body):
        raise ValueError(f"entries table of {n} entries does not fit a {len(body)}-byte body")
    terms = struct.unpack_from(f"<{n}Q", body, ENTRIES_HEAD_SIZE)
    lens = struct.unpack_from(f"<{n}I", body, ENTRIES_HEAD_SIZE + 8 * n)
    types = bytes(body[ENTRIES_HEAD_SIZE + 12 * n : table_end])
    if table_end + sum(lens) != len(body):
        raise ValueError("entry lengths do not add up to the record's body")
    lo = 0 if low is None else max(0, low - first)
    hi = n if high is None else min(n, high - first)
    off = table_end + sum(lens[:lo])
    out = []
    view = memoryview(body)
    for k in range(lo, hi):
        ln = lens[k]
        out.append(Entry(terms[k], first + k, types[k], bytes(view[off : off + ln])))
        off += ln
    return first, out


def describe_record(rtype: int, body) -> str:
    """A one-line human description of a record body (for tools/logdump.py)."""
    try:
        if rtype == RecordType.ENTRIES:
            first, n = entries_head(body)
            _, ents = decode_entries(body)
            terms = sorted({e.term for e in ents})
            data_bytes = sum(len(e.data) for e in ents)
            return f"ENTRIES {first}..{first + n - 1} ({n} entries, terms {terms}, {data_bytes} data bytes)"
        if rtype == RecordType.HARD_STATE:
            hs = decode_hard_state(body)
            return f"HARD_STATE term={hs.term} vote={hs.vote!r} commit={hs.commit}"
        if rtype == RecordType.CONF_STATE:
            return f"CONF_STATE {decode_conf_state(body).to_plain()}"
        if rtype == RecordType.TRUNCATE:
            return f"TRUNCATE from {INDEX_BODY.unpack_from(body, 0)[0]}"
        if rtype == RecordType.COMPACT:
            return "COMPACT to (index={}, term={})".format(*INDEX_TERM_BODY.unpack_from(body, 0))
        if rtype == RecordType.RESET:
            return "RESET to (index={}, term={})".format(*INDEX_TERM_BODY.unpack_from(body, 0))
        if rtype == RecordType.DROP:
            return "DROP group"
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        return f"type {rtype}: undecodable body ({exc})"
    return f"unknown record type {rtype}"


def scan_records(data, start: int = SEGMENT_HEADER_SIZE):
    """Yield (offset, type, group, durable, body) for each valid record of a
    segment's bytes, then, if the segment does not end cleanly, one final
    (offset, None, None, None, reason). For tools; recovery has its own loop."""
    mv = memoryview(data)
    end = len(data)
    pos = start
    while pos < end:
        if pos + HEADER_SIZE > end:
            yield pos, None, None, None, f"{end - pos} bytes left, less than a record header"
            return
        magic, crc, blen, rtype, _flags, _r, group, durable = HEADER.unpack_from(data, pos)
        rend = pos + HEADER_SIZE + blen
        if magic != RECORD_MAGIC:
            yield pos, None, None, None, "bad record magic"
            return
        if rend > end:
            yield pos, None, None, None, f"record of {blen} body bytes runs past the end of the file"
            return
        if zlib.crc32(mv[pos + CRC_START : rend]) != crc:
            yield pos, None, None, None, "checksum mismatch"
            return
        yield pos, rtype, group, durable, mv[pos + HEADER_SIZE : rend]
        pos = rend
