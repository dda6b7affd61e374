"""The wire codec: round trips, and garbage that must only ever raise FrameError."""

from __future__ import annotations

import zlib

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from multiraft import wire
from multiraft.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
)
from multiraft.wire import (
    FORMAT_VERSION,
    INT_MAX,
    Frame,
    FrameCorrupt,
    FrameError,
    FrameKind,
    FrameMalformed,
    FrameOversized,
    FrameUnknownVersion,
    decode_frame,
    encode_frame,
    encode_raft_batch,
)

SRC, DST = "n1/w0", "n2/w3"
V = FORMAT_VERSION
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# An independent statement of "a valid message", for checking decoder output.


def assert_valid_message(group, msg):
    assert type(group) is int and 0 <= group <= INT_MAX
    assert type(msg) is Message and len(msg) == 12
    t, frm, to, term, log_term, index, entries, commit, reject, hint, ctx, snap = msg
    assert type(t) is int and t in set(MessageType)
    for s in (frm, to):
        assert type(s) is str and 0 < len(s) <= wire.ADDRESS_CHARS_MAX
    for i in (term, log_term, index, commit, hint):
        assert type(i) is int and 0 <= i <= INT_MAX
    assert type(reject) is bool
    assert ctx is None or type(ctx) is bytes or (type(ctx) is int and 0 <= ctx <= INT_MAX)
    assert type(entries) is tuple
    if entries:
        assert t == MessageType.APPEND
    for k, e in enumerate(entries):
        assert type(e) is Entry
        assert type(e.term) is int and 0 <= e.term <= term
        assert e.index == index + 1 + k
        assert e.type in set(EntryType) and type(e.data) is bytes
    if t == MessageType.SNAPSHOT:
        meta, offset, chunk, done = snap
        assert type(meta) is SnapshotMeta and type(meta.conf_state) is ConfState
        meta.conf_state.check_invariants()
        assert type(offset) is int and type(chunk) is bytes and type(done) is bool
    else:
        assert snap is None


def assert_frame_ok(frame):
    assert type(frame) is Frame
    assert frame.version in wire.SUPPORTED_VERSIONS
    if frame.kind is FrameKind.RAFT:
        for group, msg in frame.payload:
            assert_valid_message(group, msg)
    else:
        assert type(frame.payload) in (list, dict)


def decode_or_frame_error(data, **kw):
    """Decode; the only acceptable outcomes are a fully valid Frame or FrameError."""
    try:
        frame = decode_frame(data, **kw)
    except FrameError as exc:
        # The decoder's last-resort net (an unexpected exception turned into
        # FrameMalformed) must never be what catches garbage: every rejection
        # should be an explicit check.
        assert not str(exc).startswith("invalid frame:"), exc
        return exc
    assert_frame_ok(frame)
    return frame


# ---------------------------------------------------------------------------
# Strategies

node_ids = st.text(alphabet="abcnw0123456789/", min_size=1, max_size=8)
anyint = st.one_of(st.integers(0, 300), st.integers(0, INT_MAX))


@st.composite
def conf_states(draw):
    nodes = draw(st.lists(node_ids, max_size=6, unique=True))
    voters = set(draw(st.lists(st.sampled_from(nodes), unique=True))) if nodes else set()
    rest = [n for n in nodes if n not in voters]
    learners = set(draw(st.lists(st.sampled_from(rest), unique=True))) if rest else set()
    cand = [n for n in nodes if n not in learners]
    outgoing = set(draw(st.lists(st.sampled_from(cand), unique=True))) if cand else set()
    ln_cand = sorted(outgoing)
    learners_next = set(draw(st.lists(st.sampled_from(ln_cand), unique=True))) if ln_cand else set()
    auto_leave = draw(st.booleans()) if outgoing else False
    cs = ConfState(
        frozenset(voters), frozenset(learners), frozenset(outgoing), frozenset(learners_next), auto_leave
    )
    cs.check_invariants()
    return cs


@st.composite
def messages(draw, types=st.sampled_from(list(MessageType))):
    t = draw(types)
    term = draw(anyint)
    index = draw(st.one_of(st.integers(0, 300), st.integers(0, INT_MAX - 10)))
    entries = ()
    if t == MessageType.APPEND:
        n = draw(st.integers(0, 4))
        terms = sorted(draw(st.lists(st.integers(0, term), min_size=n, max_size=n)))
        entries = tuple(
            Entry(terms[k], index + 1 + k, draw(st.sampled_from(list(EntryType))), draw(st.binary(max_size=40)))
            for k in range(n)
        )
    snapshot = None
    if t == MessageType.SNAPSHOT:
        meta = SnapshotMeta(draw(anyint), draw(anyint), draw(conf_states()))
        snapshot = (meta, draw(anyint), draw(st.binary(max_size=64)), draw(st.booleans()))
    context = draw(st.one_of(st.none(), st.binary(max_size=16), anyint))
    return Message(
        t,
        draw(node_ids),
        draw(node_ids),
        term,
        draw(anyint),
        index,
        entries,
        draw(anyint),
        draw(st.booleans()),
        draw(anyint),
        context,
        snapshot,
    )


batches = st.lists(st.tuples(anyint, messages()), max_size=12)

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5) | st.binary(max_size=5), c, max_size=4),
    max_leaves=20,
)

# Arbitrary CBOR-encodable garbage, including tags, int map keys, sets.
garbage_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    | st.binary(max_size=10) | st.just(cbor2.undefined) | st.sampled_from([b"", "", 0, -1, 2**63, 2**64 + 1]),
    lambda c: st.lists(c, max_size=14)
    | st.dictionaries(st.integers() | st.text(max_size=3), c, max_size=3)
    | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 258, 260, 1000]), c),
    max_leaves=40,
)


def sample_messages():
    e1 = Entry(2, 6, EntryType.NORMAL, b"x" * 16)
    e2 = Entry(3, 7, EntryType.CONF_CHANGE, b"cc")
    cs = ConfState(frozenset({"n1", "n2", "n3"}), frozenset({"n4"}))
    joint = ConfState(
        frozenset({"n1", "n2", "n5"}),
        frozenset(),
        frozenset({"n1", "n2", "n3"}),
        frozenset({"n3"}),
        True,
    )
    T = MessageType
    return {
        T.APPEND: Message(T.APPEND, "n1", "n2", 3, 2, 5, (e1, e2), 4),
        T.APPEND_RESPONSE: Message(T.APPEND_RESPONSE, "n2", "n1", 3, index=7, reject=True, reject_hint=5),
        T.VOTE: Message(T.VOTE, "n1", "n2", 4, 3, 7),
        T.VOTE_RESPONSE: Message(T.VOTE_RESPONSE, "n2", "n1", 4, reject=False),
        T.PRE_VOTE: Message(T.PRE_VOTE, "n1", "n2", 5, 3, 7),
        T.PRE_VOTE_RESPONSE: Message(T.PRE_VOTE_RESPONSE, "n2", "n1", 5, reject=True),
        T.HEARTBEAT: Message(T.HEARTBEAT, "n1", "n2", 3, commit=4, context=17),
        T.HEARTBEAT_RESPONSE: Message(T.HEARTBEAT_RESPONSE, "n2", "n1", 3, context=17),
        T.SNAPSHOT: Message(
            T.SNAPSHOT, "n1", "n2", 3, snapshot=(SnapshotMeta(100, 3, cs), 0, b"chunk", False)
        ),
        T.SNAPSHOT_RESPONSE: Message(T.SNAPSHOT_RESPONSE, "n2", "n1", 3, index=100),
        T.TIMEOUT_NOW: Message(T.TIMEOUT_NOW, "n1", "n2", 3),
        T.READ_INDEX: Message(T.READ_INDEX, "n2", "n1", 3, context=b"req-1"),
        T.READ_INDEX_RESPONSE: Message(T.READ_INDEX_RESPONSE, "n1", "n2", 3, index=9, context=b"req-1"),
        "joint snapshot": Message(
            T.SNAPSHOT, "n1", "n2", 3, snapshot=(SnapshotMeta(100, 3, joint), 4096, b"", True)
        ),
    }


SAMPLES = sample_messages()


def sealed(doc) -> bytes:
    """A frame of `doc`, as a peer would send it: CBOR then the checksum."""
    return wire.seal_frame(cbor2.dumps(doc))


def valid_doc():
    """A valid RAFT frame as the plain CBOR structure, for targeted corruption."""
    items = [(1, SAMPLES[MessageType.HEARTBEAT]), (2, SAMPLES[MessageType.APPEND])]
    return cbor2.loads(encode_raft_batch(SRC, DST, items)[:-wire.CHECKSUM_BYTES])


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", list(SAMPLES), ids=str)
def test_every_message_type_round_trips(name):
    msg = SAMPLES[name]
    frame = decode_frame(encode_raft_batch(SRC, DST, [(42, msg)]))
    assert frame == Frame(FORMAT_VERSION, SRC, DST, FrameKind.RAFT, [(42, msg)])
    assert_frame_ok(frame)


def test_all_types_in_one_frame_keep_order():
    items = [(g, m) for g, m in enumerate(SAMPLES.values())] * 3
    frame = decode_frame(encode_raft_batch(SRC, DST, items))
    assert frame.payload == items


def test_every_message_type_is_sampled():
    assert set(MessageType) <= set(SAMPLES)


def test_decoded_values_are_plain():
    (group, msg), = decode_frame(encode_raft_batch(SRC, DST, [(7, SAMPLES[MessageType.APPEND])])).payload
    assert type(msg) is Message and type(msg.type) is int
    assert all(type(e) is Entry for e in msg.entries)
    assert type(msg.entries) is tuple


def test_empty_batch():
    assert decode_frame(encode_raft_batch(SRC, DST, [])).payload == []


@given(batches)
@settings(max_examples=100, deadline=None)
def test_random_batches_round_trip(items):
    data = encode_raft_batch(SRC, DST, items)
    frame = decode_frame(data)
    assert frame.payload == items
    assert_frame_ok(frame)


@pytest.mark.parametrize("kind", [FrameKind.CLIENT_REQUEST, FrameKind.CLIENT_RESPONSE, FrameKind.ADMIN])
def test_generic_frames_round_trip(kind):
    payload = {"op": "put", "key": b"k", "value": b"v", "seq": [1, 2.5, None, True]}
    frame = decode_frame(encode_frame(kind, SRC, DST, payload))
    assert frame == Frame(FORMAT_VERSION, SRC, DST, kind, payload)
    assert decode_frame(encode_frame(int(kind), SRC, DST, [1, "x"])).payload == [1, "x"]


def test_encode_frame_raft_kind_is_a_raft_batch():
    items = [(1, SAMPLES[MessageType.VOTE])]
    assert encode_frame(FrameKind.RAFT, SRC, DST, items) == encode_raft_batch(SRC, DST, items)


@given(plain_values.filter(lambda v: isinstance(v, (list, dict))))
@settings(max_examples=150, deadline=None)
def test_random_generic_payloads_round_trip(payload):
    frame = decode_frame(encode_frame(FrameKind.ADMIN, SRC, DST, payload))
    assert frame.payload == payload


@pytest.mark.parametrize(
    "payload",
    [{1: "int key"}, [{1, 2}], [object()], ["x", (1, frozenset())], "not a container", 5, [2**70]],
    ids=repr,
)
def test_encode_frame_refuses_non_plain_payloads(payload):
    with pytest.raises(TypeError):
        encode_frame(FrameKind.CLIENT_REQUEST, SRC, DST, payload)


def test_encode_frame_unknown_kind():
    with pytest.raises(ValueError):
        encode_frame(99, SRC, DST, [])


def test_tuples_encode_as_arrays():
    frame = decode_frame(encode_frame(FrameKind.ADMIN, SRC, DST, ("a", (1, 2))))
    assert frame.payload == ["a", [1, 2]]


def test_worker_addresses():
    assert wire.worker_address("n1", 3) == "n1/w3"
    assert wire.split_worker_address("n1/w3") == ("n1", 3)
    assert wire.split_worker_address("a/b/w12") == ("a/b", 12)
    for bad in ("n1", "n1/w", "/w1", "n1/x1", "n1/w1a"):
        with pytest.raises(ValueError):
            wire.split_worker_address(bad)


def test_size_estimate_is_near_the_encoded_size():
    for msg in SAMPLES.values():
        alone = len(encode_raft_batch(SRC, DST, [(1, msg)])) - len(encode_raft_batch(SRC, DST, []))
        est = wire.message_size_estimate(msg)
        assert alone <= est <= alone + 200, (msg, alone, est)
    big = Message(MessageType.APPEND, "n1", "n2", 1, 0, 0, tuple(Entry(1, i + 1, 0, b"y" * 1000) for i in range(10)))
    alone = len(encode_raft_batch(SRC, DST, [(1, big)]))
    assert alone <= wire.message_size_estimate(big) <= alone * 1.2


# ---------------------------------------------------------------------------
# The checksum


def small_frame() -> bytes:
    """A small frame whose every byte matters: an entry, a vote, a snapshot chunk."""
    items = [
        (1, SAMPLES[MessageType.APPEND]),
        (2, SAMPLES[MessageType.VOTE]),
        (3, SAMPLES[MessageType.SNAPSHOT]),
    ]
    return encode_raft_batch(SRC, DST, items)


def test_frame_is_its_cbor_document_then_a_big_endian_crc32_of_it():
    data = small_frame()
    body, trailer = data[: -wire.CHECKSUM_BYTES], data[-wire.CHECKSUM_BYTES :]
    assert wire.CHECKSUM_BYTES == 4
    assert trailer == zlib.crc32(body).to_bytes(4, "big")
    assert cbor2.loads(body)[:4] == [FORMAT_VERSION, SRC, DST, int(FrameKind.RAFT)]
    assert wire.seal_frame(body) == data
    generic = encode_frame(FrameKind.ADMIN, SRC, DST, ["status"])
    assert generic == wire.seal_frame(cbor2.dumps([FORMAT_VERSION, SRC, DST, 4, ["status"]]))


def test_a_frame_with_a_correct_checksum_decodes_as_before():
    data = small_frame()
    frame = decode_frame(data)
    assert frame.payload == [
        (1, SAMPLES[MessageType.APPEND]),
        (2, SAMPLES[MessageType.VOTE]),
        (3, SAMPLES[MessageType.SNAPSHOT]),
    ]
    assert frame.version == FORMAT_VERSION == 2
    assert {2} == wire.SUPPORTED_VERSIONS


def test_every_single_bit_flip_is_rejected_and_never_yields_messages():
    data = small_frame()
    corrupted = 0
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError) as info:
            decode_frame(bytes(flipped))
        corrupted += isinstance(info.value, FrameCorrupt)
    # Almost all of them are caught by the checksum (the rest by the header
    # checks that run first: the array head and the version).
    assert corrupted >= len(data) * 8 - 16


def test_a_flipped_bit_in_an_entry_is_a_checksum_mismatch():
    data = bytearray(small_frame())
    pos = bytes(data).index(b"x" * 16)  # the APPEND's entry data
    data[pos] ^= 0x04
    with pytest.raises(FrameCorrupt, match="checksum") as info:
        decode_frame(bytes(data))
    assert info.value.stat == "frames_corrupted"


def test_a_flipped_bit_in_the_checksum_itself_is_a_mismatch():
    data = bytearray(small_frame())
    data[-1] ^= 0x80
    with pytest.raises(FrameCorrupt):
        decode_frame(bytes(data))


# ---------------------------------------------------------------------------
# Rejections: each fault has its own FrameError subclass


def test_error_classes_name_their_counter():
    assert issubclass(FrameMalformed, FrameError)
    assert issubclass(FrameOversized, FrameError)
    assert issubclass(FrameUnknownVersion, FrameError)
    assert issubclass(FrameCorrupt, FrameError)
    assert {FrameMalformed.stat, FrameOversized.stat, FrameUnknownVersion.stat, FrameCorrupt.stat} == {
        "frames_malformed",
        "frames_oversized",
        "frames_bad_version",
        "frames_corrupted",
    }


def test_oversized_is_rejected_before_decoding():
    data = encode_raft_batch(SRC, DST, [(1, SAMPLES[MessageType.APPEND])] * 10)
    with pytest.raises(FrameOversized):
        decode_frame(data, frame_size_bytes_max=len(data) - 1)
    assert decode_frame(data, frame_size_bytes_max=len(data)).payload
    # Not even parsed: garbage over the limit is "oversized", not "malformed".
    with pytest.raises(FrameOversized):
        decode_frame(b"\xff" * 101, frame_size_bytes_max=100)


def test_default_limit():
    assert wire.FRAME_SIZE_BYTES_MAX == 16 * 1024 * 1024
    with pytest.raises(FrameOversized):
        decode_frame(bytes(wire.FRAME_SIZE_BYTES_MAX + 1))


@pytest.mark.parametrize(
    "doc",
    [[1, SRC, DST, 1, []], [0], [99, "anything", "goes"], [2**40, None], [FORMAT_VERSION + 1]],
    ids=repr,
)
def test_unknown_versions_are_refused_with_or_without_a_checksum(doc):
    for data in (cbor2.dumps(doc), sealed(doc)):
        with pytest.raises(FrameUnknownVersion) as info:
            decode_frame(data)
        assert info.value.version == doc[0]


def test_a_version_1_frame_is_refused_as_an_old_version():
    # What the previous release sends: the same document, version 1, no checksum.
    old = cbor2.dumps([1, SRC, DST, 1, valid_doc()[4]])
    with pytest.raises(FrameUnknownVersion) as info:
        decode_frame(old)
    assert info.value.version == 1 and info.value.stat == "frames_bad_version"


def test_accepts_bytearray_and_memoryview():
    data = encode_raft_batch(SRC, DST, [(1, SAMPLES[MessageType.VOTE])])
    assert decode_frame(bytearray(data)) == decode_frame(memoryview(data)) == decode_frame(data)


def test_every_truncation_is_rejected():
    data = encode_raft_batch(SRC, DST, [(1, m) for m in SAMPLES.values()])
    for cut in range(len(data)):
        with pytest.raises((FrameMalformed, FrameCorrupt)):
            decode_frame(data[:cut])
    # Truncated before sealing, so only the decoder can tell.
    body = data[: -wire.CHECKSUM_BYTES]
    for cut in range(2, len(body)):
        with pytest.raises(FrameMalformed):
            decode_frame(wire.seal_frame(body[:cut]))


def test_trailing_bytes_are_rejected():
    data = encode_raft_batch(SRC, DST, [(1, SAMPLES[MessageType.VOTE])])
    with pytest.raises(FrameCorrupt):
        decode_frame(data + b"\x00")  # the checksum is no longer the last 4 bytes
    with pytest.raises(FrameMalformed, match="trailing"):
        decode_frame(wire.seal_frame(data[: -wire.CHECKSUM_BYTES] + b"\x00"))


def _mutated(path, value):
    doc = valid_doc()
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


# Offsets in the flat payload: message 0 is a HEARTBEAT at 0..12, message 1 an
# APPEND at 13..25 followed by its 2 entries at 26..29 and 30..33.
BAD_DOCS = {
    "not an array": {"version": 1},
    "empty array": [],
    "version is bool": [True, SRC, DST, 1, []],
    "version is text": ["1", SRC, DST, 1, []],
    "four elements": [V, SRC, DST, 1],
    "six elements": [V, SRC, DST, 1, [], None],
    "src not text": [V, 5, DST, 1, []],
    "src empty": [V, "", DST, 1, []],
    "dst too long": [V, SRC, "x" * 65, 1, []],
    "unknown kind": [V, SRC, DST, 99, []],
    "kind is bool": [V, SRC, DST, True, []],
    "raft payload is a map": [V, SRC, DST, 1, {}],
    "truncated header": [V, SRC, DST, 1, [1, 7, "n1", "n2", 3]],
    "generic payload scalar": [V, SRC, DST, 2, "x"],
    "generic payload with a datetime": [V, SRC, DST, 3, [{"a": cbor2.CBORTag(1, 0)}]],
    "generic payload with a set": [V, SRC, DST, 4, [{1, 2}]],
    "generic payload with undefined": [V, SRC, DST, 4, [cbor2.undefined]],
    "generic payload with unknown tag": [V, SRC, DST, 4, [cbor2.CBORTag(4242, 1)]],
    "generic payload with huge int": [V, SRC, DST, 4, [2**80]],
    "group negative": _mutated((4, 0), -1),
    "group too big": _mutated((4, 0), 2**63),
    "group bool": _mutated((4, 0), True),
    "type zero": _mutated((4, 1), 0),
    "type fourteen": _mutated((4, 1), 14),
    "frm empty": _mutated((4, 2), ""),
    "to bytes": _mutated((4, 3), b"n2"),
    "term negative": _mutated((4, 4), -3),
    "term float": _mutated((4, 4), 3.0),
    "log_term huge": _mutated((4, 5), 2**64),
    "index null": _mutated((4, 6), None),
    "entries on heartbeat": _mutated((4, 7), 1),
    "commit text": _mutated((4, 8), "4"),
    "reject int": _mutated((4, 9), 0),
    "hint negative": _mutated((4, 10), -1),
    "context float": _mutated((4, 11), 1.5),
    "context list": _mutated((4, 11), [1]),
    "context negative": _mutated((4, 11), -1),
    "snapshot on heartbeat": _mutated((4, 12), [[1, 1, [[], [], [], [], False]], 0, b"", True]),
    "entry count too big": _mutated((4, 13 + 7), 3),
    "entry count negative": _mutated((4, 13 + 7), -2),
    "entry index gap": _mutated((4, 30 + 1), 9),
    "entry term above message term": _mutated((4, 26), 4),
    "entry type unknown": _mutated((4, 26 + 2), 7),
    "entry data text": _mutated((4, 26 + 3), "xx"),
    "trailing partial message": _mutated((4,), valid_doc()[4] + [1, 7]),
}


def _snapshot_doc(snapshot_field):
    doc = cbor2.loads(encode_raft_batch(SRC, DST, [(1, SAMPLES[MessageType.SNAPSHOT])])[:-wire.CHECKSUM_BYTES])
    doc[4][12] = snapshot_field
    return doc


GOOD_CONF = [["n1"], [], [], [], False]
BAD_SNAPSHOT_FIELDS = {
    "missing": None,
    "not an array": b"x",
    "three elements": [[1, 1, GOOD_CONF], 0, b""],
    "meta short": [[1, 1], 0, b"", True],
    "meta index negative": [[-1, 1, GOOD_CONF], 0, b"", True],
    "offset text": [[1, 1, GOOD_CONF], "0", b"", True],
    "chunk text": [[1, 1, GOOD_CONF], 0, "", True],
    "done int": [[1, 1, GOOD_CONF], 0, b"", 1],
    "conf short": [[1, 1, [["n1"], [], [], []]], 0, b"", True],
    "conf voters not list": [[1, 1, ["n1", [], [], [], False]], 0, b"", True],
    "conf voter int": [[1, 1, [[1], [], [], [], False]], 0, b"", True],
    "conf duplicate voter": [[1, 1, [["n1", "n1"], [], [], [], False]], 0, b"", True],
    "conf voter and learner": [[1, 1, [["n1"], ["n1"], [], [], False]], 0, b"", True],
    "conf auto_leave not joint": [[1, 1, [["n1"], [], [], [], True]], 0, b"", True],
    "conf learners_next outside outgoing": [[1, 1, [["n1"], [], ["n2"], ["n3"], False]], 0, b"", True],
    "conf auto_leave int": [[1, 1, [["n1"], [], [], [], 0]], 0, b"", True],
}
for _name, _field in BAD_SNAPSHOT_FIELDS.items():
    BAD_DOCS["snapshot " + _name] = _snapshot_doc(_field)


def test_the_corruption_base_is_valid():
    assert decode_frame(sealed(valid_doc())).payload
    assert decode_frame(sealed(_snapshot_doc([[1, 1, GOOD_CONF], 0, b"", True]))).payload


@pytest.mark.parametrize("name", list(BAD_DOCS))
def test_bad_shapes_are_malformed(name):
    with pytest.raises(FrameMalformed):
        decode_frame(sealed(BAD_DOCS[name]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\x1c",  # reserved additional info
        bytes([0x9F, FORMAT_VERSION]),  # unterminated indefinite array
        b"\x81" * 5000 + b"\x01",  # nesting far too deep
        bytes.fromhex("d81c81d81d00"),  # a shared reference cycle
        bytes.fromhex("c11b7fffffffffffffff"),  # an epoch datetime out of range
        b"\x9b" + (2**62).to_bytes(8, "big"),  # an absurd declared length
        b"\x7b" + (2**62).to_bytes(8, "big"),
        bytes.fromhex("a2616101616102"),  # duplicate map keys
        bytes.fromhex("a10102"),  # int map key
        bytes.fromhex("62c328"),  # invalid UTF-8
        bytes.fromhex("c482"),  # truncated decimal fraction
    ],
    ids=lambda d: d[:12].hex(),
)
def test_hostile_cbor_is_malformed(data):
    with pytest.raises(FrameMalformed):
        decode_frame(wire.seal_frame(data))
    with pytest.raises(FrameError):
        decode_frame(data)


# ---------------------------------------------------------------------------
# Fuzz: garbage never raises anything but FrameError, never yields bad messages


@given(st.binary(max_size=300))
@FUZZ
def test_fuzz_random_bytes(data):
    decode_or_frame_error(data)
    decode_or_frame_error(wire.seal_frame(data))


@given(garbage_values)
@FUZZ
def test_fuzz_random_cbor(value):
    try:
        data = cbor2.dumps(value)
    except Exception:
        return
    decode_or_frame_error(data)
    decode_or_frame_error(sealed(value))
    decode_or_frame_error(sealed([V, SRC, DST, 1, value]))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 20), st.integers(), st.sampled_from([2**63 - 1, 2**63, -(2**63)]),
    st.text(max_size=3), st.binary(max_size=3), st.floats(), st.just([]), st.just([[], [], [], [], False]),
)


@given(st.data())
@FUZZ
def test_fuzz_structured_mutations(data):
    """Replace, insert or delete slots of a valid flat payload."""
    doc = valid_doc()
    payload = doc[4]
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(payload) - 1)))
        if op == "replace" and payload:
            payload[pos] = data.draw(scalars)
        elif op == "insert":
            payload.insert(pos, data.draw(scalars))
        elif payload:
            del payload[pos]
    if data.draw(st.booleans()):
        doc[data.draw(st.integers(0, 3))] = data.draw(scalars)
    decode_or_frame_error(sealed(doc))


@given(st.data())
@FUZZ
def test_fuzz_flat_random_payloads(data):
    """Payloads of plausible scalars, so validation (not CBOR) does the rejecting."""
    payload = data.draw(st.lists(scalars, max_size=40))
    decode_or_frame_error(sealed([V, SRC, DST, 1, payload]))


@given(st.lists(st.tuples(anyint, messages()), max_size=4), st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_byte_flips(items, data):
    original = encode_raft_batch(SRC, DST, items)
    encoded = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] = data.draw(st.integers(0, 255))
    result = decode_or_frame_error(bytes(encoded))
    if sum(a != b for a, b in zip(original, encoded, strict=True)) == 1:
        # One changed byte is an error burst of at most 8 bits: CRC-32 catches
        # every one, so the frame can only be rejected.
        assert isinstance(result, FrameError), result
    cut = data.draw(st.integers(0, len(encoded)))
    decode_or_frame_error(bytes(encoded[:cut]))
