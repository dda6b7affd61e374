"""The versioned wire format between workers: bytes in, bytes out.

A frame is one CBOR document followed by a checksum (docs/wire.md has the full
layout)::

    [version, source_worker, target_worker, kind, payload]  crc32 (4 bytes, big-endian)

`version` is always the first element of a top-level array, in every version of
the format, so a receiver can tell "a frame from an older or newer release"
(counted as such) from garbage: it is read from the first bytes before anything
else. The crc32 (zlib's CRC-32) covers every byte of the CBOR document and is
checked before the document is decoded, so a bit flipped on the way (a NIC, a
bad DIMM, a buggy proxy) never reaches the core as a valid-looking entry or
snapshot chunk on one replica only. Worker addresses are short text strings,
"n1/w0" style.

RAFT frames carry many groups' messages in one flat array: per message, the
group id and the Message fields in order, except that the `entries` slot holds
the entry count and the entries follow the message as 4 flat slots each::

    group, type, frm, to, term, log_term, index, n_entries, commit, reject,
    reject_hint, context, snapshot, [e.term, e.index, e.type, e.data] * n_entries

Flat scalars rather than one nested array per message: cbor2 spends ~250 ns per
container and ~25 ns per scalar, so flattening halves the encode and decode cost.

Decoding validates every field's type, range and shape, and raises only
`FrameError` subclasses (`FrameOversized`, `FrameUnknownVersion`,
`FrameCorrupt`, `FrameMalformed`): garbage from a peer never escapes as another exception and
never yields a half-valid Message. This module imports no trio and no pynng.
"""

from __future__ import annotations

import enum
import io
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import attrs
import cbor2

from multiraft.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
)

__all__ = [
    "Message",  # re-exported so the transport layer needs only the wire layer
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "FRAME_SIZE_BYTES_MAX",
    "ADDRESS_CHARS_MAX",
    "INT_MAX",
    "FrameKind",
    "Frame",
    "FrameError",
    "FrameMalformed",
    "FrameOversized",
    "FrameUnknownVersion",
    "FrameCorrupt",
    "CHECKSUM_BYTES",
    "seal_frame",
    "encode_raft_batch",
    "encode_frame",
    "decode_frame",
    "message_size_estimate",
    "worker_address",
    "split_worker_address",
]

#: The version this release writes. Bump it for any change a receiver of the
#: previous version would misread: a new kind, message type or entry type, a new,
#: removed or reordered field (docs/wire.md, "Versioning").
#: Version 2 added the crc32 trailer; version 1 frames (no checksum) are refused.
FORMAT_VERSION = 2
#: The versions this release can read. A rolling upgrade first ships a release that
#: reads both the old and the new version, then one that writes the new one.
SUPPORTED_VERSIONS = frozenset({2})
assert FORMAT_VERSION in SUPPORTED_VERSIONS

#: Length of the checksum trailer: zlib.crc32 of the CBOR document, big-endian.
CHECKSUM_BYTES = 4

#: Default largest frame, checked before any decoding (and by senders before
#: sending). Every node of a cluster must use the same or a larger value.
FRAME_SIZE_BYTES_MAX = 16 * 1024 * 1024
#: Longest worker address and node id accepted on the wire.
ADDRESS_CHARS_MAX = 64
#: Every index, term, group id, offset and integer context fits in an int64.
INT_MAX = 2**63 - 1
#: Deepest container nesting cbor2 accepts in a frame (RAFT frames need 6).
NESTING_DEPTH_MAX = 32

# Field counts of the flat RAFT layout.
_HEADER_SLOTS = 13
_ENTRY_SLOTS = 4


class FrameKind(enum.IntEnum):
    RAFT = 1  # payload: the flat multi-group message array above
    CLIENT_REQUEST = 2  # payload: a plain list or map (see _check_plain)
    CLIENT_RESPONSE = 3
    ADMIN = 4


_GENERIC_KINDS = frozenset(
    {FrameKind.CLIENT_REQUEST, FrameKind.CLIENT_RESPONSE, FrameKind.ADMIN}
)
_KINDS = {int(k): k for k in FrameKind}

_MESSAGE_TYPE_MIN = min(MessageType)
_MESSAGE_TYPE_MAX = max(MessageType)
assert sorted(MessageType) == list(range(_MESSAGE_TYPE_MIN, _MESSAGE_TYPE_MAX + 1))
_ENTRY_TYPES = frozenset(int(t) for t in EntryType)
_APPEND = int(MessageType.APPEND)
_SNAPSHOT = int(MessageType.SNAPSHOT)


class FrameError(Exception):
    """A frame that cannot be accepted. The fault is the sender's.

    `stat` names the counter a transport increments when it drops such a frame.
    """

    stat = "frames_malformed"


class FrameMalformed(FrameError):
    """Not CBOR, or not the shape and types this version defines."""

    stat = "frames_malformed"


class FrameOversized(FrameError):
    """Larger than the frame size limit; rejected before decoding."""

    stat = "frames_oversized"


class FrameCorrupt(FrameError):
    """The crc32 trailer does not match the bytes: damaged on the way."""

    stat = "frames_corrupted"


class FrameUnknownVersion(FrameError):
    """A well-formed CBOR array whose version this release cannot read."""

    stat = "frames_bad_version"

    def __init__(self, version: int) -> None:
        super().__init__(f"unknown wire format version {version!r}")
        self.version = version


@attrs.frozen
class Frame:
    """One decoded frame.

    For kind RAFT, `payload` is a list of (group_id, Message) with Message and
    Entry instances rebuilt (message and entry types as plain ints). For other
    kinds it is the plain list or dict that was sent.
    """

    version: int
    src: str
    dst: str
    kind: FrameKind
    payload: Any


# ---------------------------------------------------------------------------
# Addresses


def worker_address(node_id: str, worker_index: int) -> str:
    """The address of worker `worker_index` of node `node_id`: "n1/w0"."""
    return f"{node_id}/w{worker_index}"


def split_worker_address(address: str) -> tuple[str, int]:
    """Inverse of worker_address; ValueError if `address` is not of that form."""
    node, sep, worker = address.rpartition("/w")
    if not sep or not node or not worker.isdigit():
        raise ValueError(f"not a worker address: {address!r}")
    return node, int(worker)


# ---------------------------------------------------------------------------
# Encoding


def _snapshot_to_plain(snapshot: tuple) -> list:
    meta, offset, chunk, done = snapshot
    return [
        [meta.index, meta.term, list(meta.conf_state.to_plain())],
        offset,
        chunk,
        done,
    ]


def _flatten(items: Iterable[tuple[int, Message]]) -> list:
    out: list = []
    append = out.append
    extend = out.extend
    for group, msg in items:
        append(group)
        extend(msg)  # the 12 Message fields, in order
        entries = msg[6]
        if msg[11] is not None:
            out[-1] = _snapshot_to_plain(msg[11])
        if entries:
            out[-6] = len(entries)
            for entry in entries:
                extend(entry)
        else:
            out[-6] = 0
    return out


_dumps = cbor2.dumps
_crc32 = zlib.crc32
_CRC = struct.Struct(">I")
_pack_crc = _CRC.pack
_unpack_crc = _CRC.unpack_from


def seal_frame(body: bytes) -> bytes:
    """The frame for an encoded CBOR document: `body` then its crc32.

    The encoders use it; so can tests and tools that build frames by hand.
    """
    return body + _pack_crc(_crc32(body))


def encode_raft_batch(
    src: str, dst: str, items: Iterable[tuple[int, Message]]
) -> bytes:
    """One RAFT frame carrying `items`, (group_id, Message) pairs, in order.

    The caller checks the result against its frame size limit. Messages are not
    validated here (they come from our own core): the decoder is the authority.
    """
    body = _dumps([FORMAT_VERSION, src, dst, 1, _flatten(items)])
    return body + _pack_crc(_crc32(body))


def encode_frame(kind: int, src: str, dst: str, payload: Any) -> bytes:
    """Any frame. For RAFT, `payload` is an iterable of (group_id, Message).

    For the other kinds `payload` must be a plain list/tuple or dict built from
    None, bool, int, float, str, bytes, lists/tuples and dicts with str or bytes
    keys; anything else raises TypeError here rather than being dropped by the
    receiver.
    """
    kind = FrameKind(kind)
    if kind is FrameKind.RAFT:
        return encode_raft_batch(src, dst, payload)
    if not isinstance(payload, (list, tuple, dict)):
        raise TypeError(f"{kind.name} payload must be a list or dict, not {type(payload)}")
    if not _is_plain(payload, NESTING_DEPTH_MAX - 1, encoding=True):
        raise TypeError(f"{kind.name} payload is not plain CBOR data: {payload!r:.200}")
    return seal_frame(_dumps([FORMAT_VERSION, src, dst, int(kind), payload]))


def message_size_estimate(msg: Message) -> int:
    """About how many bytes `msg` adds to a RAFT frame (for batching)."""
    size = 48 + len(msg[1]) + len(msg[2])
    entries = msg[6]
    if entries:
        for entry in entries:
            size += len(entry[3]) + 24
    context = msg[10]
    if type(context) is bytes:
        size += len(context)
    if msg[11] is not None:
        size += len(msg[11][2]) + 64 + 16 * len(msg[11][0].conf_state.all_nodes())
    return size


# ---------------------------------------------------------------------------
# Decoding


def _refuse_shared_reference(decoder: Any) -> Any:
    raise cbor2.CBORDecodeError("shared references are not allowed")


_DECODER_OPTIONS = dict(
    max_depth=NESTING_DEPTH_MAX,
    allow_duplicate_keys=False,
    # Map keys must be text or byte strings, whose hashes are randomised: no
    # hash-flooding with crafted integer keys.
    strict_hashable_types=True,
    # Tag 29 (shared reference) could build cycles or exponentially large DAGs.
    semantic_decoders={29: _refuse_shared_reference},
)


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    frame_size_bytes_max: int = FRAME_SIZE_BYTES_MAX,
) -> Frame:
    """Decode and fully validate one frame. Raises only FrameError subclasses.

    In order: the size limit, the version (from the first bytes, so a frame of
    another release is counted as such whatever its layout), the checksum, and
    only then the CBOR decoder and the field checks.
    """
    size = len(data)
    if size > frame_size_bytes_max:
        raise FrameOversized(f"frame of {size} bytes > limit {frame_size_bytes_max}")
    if size == 0:
        raise FrameMalformed("empty frame")
    if type(data) is not bytes:
        data = bytes(data)
    version = _peek_version(data)
    if version not in SUPPORTED_VERSIONS:
        raise FrameUnknownVersion(version)
    body_size = size - CHECKSUM_BYTES
    if body_size < 2:  # the array head and the version at least
        raise FrameMalformed("frame too short for its checksum")
    (expected,) = _unpack_crc(data, body_size)
    with memoryview(data) as view:
        actual = _crc32(view[:body_size])  # no copy of the body
    if actual != expected:
        raise FrameCorrupt(f"checksum mismatch: trailer {expected:#010x}, bytes {actual:#010x}")
    try:
        fp = io.BytesIO(data)  # shares data's buffer; reading stops at the document's end
        doc = cbor2.CBORDecoder(fp, **_DECODER_OPTIONS).decode()
        consumed = fp.tell()
    except Exception as exc:  # cbor2 raises many kinds: all are the sender's fault
        raise FrameMalformed(f"not a CBOR document: {type(exc).__name__}: {exc}"[:300]) from None
    try:
        if consumed != body_size:
            # Checksummed by the sender, so the sender encoded it so.
            raise FrameMalformed(
                f"{body_size - consumed} trailing bytes between the document and the checksum"
                if consumed < body_size
                else "the CBOR document runs into the checksum"
            )
        return _validate_frame(doc)
    except FrameError:
        raise
    except Exception as exc:  # pragma: no cover - a validation bug; still the peer's data
        raise FrameMalformed(f"invalid frame: {type(exc).__name__}: {exc}"[:300]) from None


def _peek_version(data: bytes) -> int:
    """The frame's version, read from the CBOR heads of its first bytes.

    Every version's frame is a CBOR array whose first element is the version (an
    unsigned int), so this works before knowing the layout (where the checksum
    is, whether there is one). Raises FrameMalformed if `data` does not start so.
    """
    n = len(data)
    head = data[0]
    if head >> 5 != 4:  # CBOR major type 4: array
        raise FrameMalformed("a frame is a CBOR array")
    info = head & 31
    if info == 0:
        raise FrameMalformed("a frame is a non-empty CBOR array")
    if info < 24 or info == 31:  # length in the head, or indefinite length
        pos = 1
    elif info <= 27:  # length in the next 1, 2, 4 or 8 bytes
        pos = 1 + (1 << (info - 24))
    else:
        raise FrameMalformed("reserved CBOR array head")
    if pos >= n:
        raise FrameMalformed("truncated frame header")
    head = data[pos]
    if head >> 5 != 0:  # major type 0: unsigned int
        raise FrameMalformed("the first element of a frame must be its version")
    info = head & 31
    if info < 24:
        return info
    if info > 27:
        raise FrameMalformed("reserved CBOR integer head for the version")
    end = pos + 1 + (1 << (info - 24))
    if end > n:
        raise FrameMalformed("truncated frame header")
    return int.from_bytes(data[pos + 1 : end], "big")


def _validate_frame(doc: Any) -> Frame:
    if type(doc) is not list or not doc:
        raise FrameMalformed("a frame is a non-empty CBOR array")
    version = doc[0]
    if type(version) is not int:
        raise FrameMalformed("the first element of a frame must be its version")
    if version not in SUPPORTED_VERSIONS:
        raise FrameUnknownVersion(version)
    if len(doc) != 5:
        raise FrameMalformed(f"a version {version} frame has 5 elements, not {len(doc)}")
    _, src, dst, kind, payload = doc
    if not (type(src) is str and 0 < len(src) <= ADDRESS_CHARS_MAX):
        raise FrameMalformed("bad source address")
    if not (type(dst) is str and 0 < len(dst) <= ADDRESS_CHARS_MAX):
        raise FrameMalformed("bad target address")
    if type(kind) is not int or kind not in _KINDS:
        raise FrameMalformed(f"unknown frame kind {kind!r:.40}")
    kind = _KINDS[kind]
    if kind is FrameKind.RAFT:
        payload = _decode_raft_payload(payload)
    else:
        if type(payload) is not list and type(payload) is not dict:
            raise FrameMalformed(f"{kind.name} payload must be an array or a map")
        if not _is_plain(payload, NESTING_DEPTH_MAX - 1, encoding=False):
            raise FrameMalformed(f"{kind.name} payload holds non-plain CBOR values")
    return Frame(version, src, dst, kind, payload)


_new = tuple.__new__


def _decode_raft_payload(p: Any) -> list[tuple[int, Message]]:
    if type(p) is not list:
        raise FrameMalformed("RAFT payload must be an array")
    # Hot loop: everything it touches is a local.
    new = _new
    message_cls = Message
    entry_cls = Entry
    entry_types = _ENTRY_TYPES
    type_min = _MESSAGE_TYPE_MIN
    type_max = _MESSAGE_TYPE_MAX
    chars_max = ADDRESS_CHARS_MAX
    append_type = _APPEND
    snapshot_type = _SNAPSHOT
    n = len(p)
    i = 0
    out: list[tuple[int, Message]] = []
    append = out.append
    while i < n:
        j = i + 13  # _HEADER_SLOTS
        if j > n:
            raise FrameMalformed("truncated message header")
        g, t, frm, to, term, log_term, index, n_entries, commit, reject, hint, ctx, snap = p[i:j]
        if (
            type(g) is not int
            or type(t) is not int
            or type(frm) is not str
            or type(to) is not str
            or type(term) is not int
            or type(log_term) is not int
            or type(index) is not int
            or type(n_entries) is not int
            or type(commit) is not int
            or type(reject) is not bool
            or type(hint) is not int
        ):
            raise FrameMalformed("message field of the wrong type")
        # (x | y | ...) >> 63 is non-zero iff one of them is negative or > INT_MAX.
        if (g | term | log_term | index | n_entries | commit | hint) >> 63 or not (
            type_min <= t <= type_max
            and 0 < len(frm) <= chars_max
            and 0 < len(to) <= chars_max
        ):
            raise FrameMalformed("message field out of range")
        if ctx is not None:
            tc = type(ctx)
            if tc is int:
                if ctx >> 63:
                    raise FrameMalformed("context out of range")
            elif tc is not bytes:
                raise FrameMalformed("context must be bytes, an int or null")
        if snap is not None or t == snapshot_type:
            if t != snapshot_type:
                raise FrameMalformed("only SNAPSHOT messages carry a snapshot")
            snap = _decode_snapshot(snap)
        if n_entries == 1:  # the common case, without the loop's overhead
            if t != append_type:
                raise FrameMalformed("only APPEND messages carry entries")
            i = j + 4
            if i > n:
                raise FrameMalformed("bad entry count")
            e_term, e_index, e_type, e_data = p[j:i]
            if (
                type(e_term) is not int
                or type(e_index) is not int
                or type(e_type) is not int
                or type(e_data) is not bytes
            ):
                raise FrameMalformed("entry field of the wrong type")
            if (
                e_index != index + 1
                or e_index > INT_MAX
                or not 0 <= e_term <= term
                or e_type not in entry_types
            ):
                raise FrameMalformed("entry out of sequence or out of range")
            entries = (new(entry_cls, (e_term, e_index, e_type, e_data)),)
        elif n_entries:
            if t != append_type:
                raise FrameMalformed("only APPEND messages carry entries")
            end = j + 4 * n_entries  # _ENTRY_SLOTS
            if end > n or (index + n_entries) >> 63:
                raise FrameMalformed("bad entry count")
            entries = []
            expect = index + 1
            for k in range(j, end, 4):
                e_term, e_index, e_type, e_data = p[k : k + 4]
                if (
                    type(e_term) is not int
                    or type(e_index) is not int
                    or type(e_type) is not int
                    or type(e_data) is not bytes
                ):
                    raise FrameMalformed("entry field of the wrong type")
                # Entries follow (index, log_term) contiguously, and no entry is
                # newer than the leader's term.
                if e_index != expect or not 0 <= e_term <= term or e_type not in entry_types:
                    raise FrameMalformed("entry out of sequence or out of range")
                expect += 1
                entries.append(new(entry_cls, (e_term, e_index, e_type, e_data)))
            i = end
            entries = tuple(entries)
        else:
            entries = ()
            i = j
        append(
            (
                g,
                new(
                    message_cls,
                    (t, frm, to, term, log_term, index, entries, commit, reject, hint, ctx, snap),
                ),
            )
        )
    return out


def _is_node_list(x: Any) -> bool:
    if type(x) is not list:
        return False
    for node in x:
        if type(node) is not str or not 0 < len(node) <= ADDRESS_CHARS_MAX:
            return False
    return len(set(x)) == len(x)


def _decode_snapshot(s: Any) -> tuple:
    if type(s) is not list or len(s) != 4:
        raise FrameMalformed("a SNAPSHOT message needs [meta, offset, chunk, done]")
    meta, offset, chunk, done = s
    if type(offset) is not int or not 0 <= offset <= INT_MAX:
        raise FrameMalformed("bad snapshot offset")
    if type(chunk) is not bytes or type(done) is not bool:
        raise FrameMalformed("bad snapshot chunk")
    if type(meta) is not list or len(meta) != 3:
        raise FrameMalformed("snapshot meta must be [index, term, conf_state]")
    index, term, conf = meta
    if not (
        type(index) is int
        and type(term) is int
        and 0 <= index <= INT_MAX
        and 0 <= term <= INT_MAX
    ):
        raise FrameMalformed("bad snapshot index or term")
    if type(conf) is not list or len(conf) != 5:
        raise FrameMalformed("conf state must be [voters, learners, outgoing, learners_next, auto_leave]")
    voters, learners, outgoing, learners_next, auto_leave = conf
    if not (
        _is_node_list(voters)
        and _is_node_list(learners)
        and _is_node_list(outgoing)
        and _is_node_list(learners_next)
        and type(auto_leave) is bool
    ):
        raise FrameMalformed("bad conf state field")
    conf_state = ConfState.from_plain(conf)
    # ConfState.check_invariants uses assert (our bugs); a peer's is checked here.
    v, lr, o, ln = (conf_state.voters, conf_state.learners,
                    conf_state.voters_outgoing, conf_state.learners_next)
    if (v & lr) or (o & lr) or not ln <= o or (ln & lr) or (
        not o and (conf_state.auto_leave or ln)
    ):
        raise FrameMalformed("conf state violates its invariants")
    return (SnapshotMeta(index, term, conf_state), offset, chunk, done)


_PLAIN_SCALARS = (type(None), bool, float, str, bytes)
_PLAIN_INT_LIMIT = 2**64


def _is_plain(x: Any, depth: int, *, encoding: bool) -> bool:
    """True if x is built only from plain CBOR values (see encode_frame).

    Decoded data has no shared references (tag 29 is refused) and bounded depth,
    so this walk is linear in the frame size.
    """
    if depth < 0:
        return False
    tx = type(x)
    if tx in _PLAIN_SCALARS:
        return True
    if tx is int:
        return -_PLAIN_INT_LIMIT <= x < _PLAIN_INT_LIMIT
    if tx is list or (encoding and tx is tuple):
        return all(_is_plain(v, depth - 1, encoding=encoding) for v in x)
    if tx is dict:
        for k, v in x.items():
            if type(k) is not str and type(k) is not bytes:
                return False
            if not _is_plain(v, depth - 1, encoding=encoding):
                return False
        return True
    return False
