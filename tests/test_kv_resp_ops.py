"""The KV commands and worker ops added for the Redis front-end: PutMany,
Incr, Append, PutIf (writes, exactly once), ScanKeys and Count (reads)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from multiraft import kv
from workers.requests import BadRequest, ReadRequest, WriteRequest, parse_request, write_payload


class Machine:
    def __init__(self, **kw) -> None:
        self.sm = kv.KVStateMachine(**kw)
        self.index = 0

    def apply(self, cmd: object) -> object:
        self.index += 1
        data = kv.encode_command(cmd)
        assert kv.decode_command(data) == cmd
        return self.sm.apply(self.index, data)


def test_put_many_applies_in_order_as_one_command():
    m = Machine()
    m.apply(kv.Put(b"a", b"0"))
    r = m.apply(kv.PutMany(((b"a", b"1"), (b"b", b"2"), (b"a", None), (b"c", b"3"), (b"c", b"4"))))
    assert r == kv.PutManyResult(existed=3)  # a (put, then delete), c at its second put
    assert m.sm.scan() == [(b"b", b"2"), (b"c", b"4")]
    # DEL k k counts k once, as Redis does
    assert m.apply(kv.PutMany(((b"b", None), (b"b", None), (b"zz", None)))) == kv.PutManyResult(1)
    m.sm.check_invariants()


@pytest.mark.parametrize(
    "old, delta, result",
    [
        (None, 1, kv.IncrResult(1)),
        (b"41", 1, kv.IncrResult(42)),
        (b"-5", -10, kv.IncrResult(-15)),
        (b"0", 0, kv.IncrResult(0)),
        (b"9223372036854775807", 1, kv.IncrResult(None, kv.INCR_OVERFLOW)),
        (b"-9223372036854775808", -1, kv.IncrResult(None, kv.INCR_OVERFLOW)),
        (b"-9223372036854775807", -1, kv.IncrResult(-(1 << 63))),
        (b"abc", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
        (b"01", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
        (b"-0", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
        (b"+1", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
        (b" 1", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
        (b"1.5", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
        (b"", 1, kv.IncrResult(None, kv.INCR_NOT_INTEGER)),
    ],
)
def test_incr_parses_values_as_redis_does(old, delta, result):
    m = Machine()
    if old is not None:
        m.apply(kv.Put(b"n", old))
    assert m.apply(kv.Incr(b"n", delta)) == result
    expected = old if result.value is None else str(result.value).encode()
    assert m.sm.get(b"n") == expected


def test_append_and_its_size_limit():
    m = Machine(value_size_bytes_max=5)
    assert m.apply(kv.Append(b"k", b"abc")) == kv.AppendResult(3)
    assert m.apply(kv.Append(b"k", b"de")) == kv.AppendResult(5)
    assert m.apply(kv.Append(b"k", b"f")) == kv.AppendResult(None)
    assert m.sm.get(b"k") == b"abcde"


def test_put_if_conditions():
    m = Machine()
    assert m.apply(kv.PutIf(b"k", b"1", kv.PUT_IF_PRESENT)) == kv.PutIfResult(False, None)
    assert m.apply(kv.PutIf(b"k", b"1", kv.PUT_IF_ABSENT)) == kv.PutIfResult(True, None)
    assert m.apply(kv.PutIf(b"k", b"2", kv.PUT_IF_ABSENT)) == kv.PutIfResult(False, b"1")
    assert m.apply(kv.PutIf(b"k", b"3", kv.PUT_IF_PRESENT)) == kv.PutIfResult(True, b"1")
    assert m.apply(kv.PutIf(b"k", b"4")) == kv.PutIfResult(True, b"3")
    assert m.sm.get(b"k") == b"4"


@pytest.mark.parametrize(
    "cmd",
    [
        kv.PutMany(((b"a", b"1"), (b"b", None)), 7, 1),
        kv.Incr(b"n", 5, 7, 1),
        kv.Append(b"s", b"x", 7, 1),
        kv.PutIf(b"k", b"v", kv.PUT_IF_ABSENT, 7, 1),
    ],
)
def test_new_writes_apply_exactly_once_and_their_results_survive_snapshots(cmd):
    m = Machine()
    first = m.apply(cmd)
    assert m.apply(cmd) == first  # a retry: the cached result, nothing applied again
    snap = m.sm.snapshot()
    other = kv.KVStateMachine()
    other.restore(snap)
    assert other.snapshot() == snap
    m.index += 1
    assert other.apply(m.index, kv.encode_command(cmd)) == first
    assert other.scan() == m.sm.scan()


def test_session_results_of_every_new_kind_round_trip_through_a_snapshot():
    m = Machine()
    m.apply(kv.Put(b"n", b"x"))
    m.apply(kv.PutMany(((b"a", b"1"),), 1, 1))
    m.apply(kv.Incr(b"n", 1, 2, 1))  # not an integer
    m.apply(kv.Incr(b"m", -3, 3, 1))
    m.apply(kv.Append(b"a", b"2", 4, 1))
    m.apply(kv.PutIf(b"a", b"9", kv.PUT_IF_PRESENT, 5, 1))
    other = kv.KVStateMachine()
    other.restore(m.sm.snapshot())
    assert other.snapshot() == m.sm.snapshot()
    other.check_invariants()


@pytest.mark.parametrize(
    "cmd",
    [
        kv.PutMany(()),
        kv.PutMany(((b"k",),)),
        kv.PutMany(((b"k", "v"),)),
        kv.Incr(b"n", 1 << 63),
        kv.Incr(b"n", 1.0),
        kv.PutIf(b"k", b"v", 3),
        kv.Append(b"k", "s"),
    ],
)
def test_malformed_new_commands_are_refused(cmd):
    with pytest.raises(kv.KVCommandError):
        kv.encode_command(cmd)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([
    kv.PutMany(((b"a", b"1"), (b"bb", None))),
    kv.Incr(b"n", -7),
    kv.Append(b"k", b"xyz"),
    kv.PutIf(b"k", b"v", kv.PUT_IF_PRESENT),
]), st.data())
def test_damaged_new_commands_never_apply_as_something_else(cmd, data):
    good = kv.encode_command(cmd)
    cut = data.draw(st.integers(min_value=0, max_value=len(good) - 1))
    damaged = good[:cut]  # truncated
    m = kv.KVStateMachine()
    r = m.apply(1, damaged)
    assert r is None or isinstance(r, kv.InvalidCommand)
    assert m.scan() == []
    extended = good + b"\x00"
    assert isinstance(kv.KVStateMachine().apply(1, extended), kv.InvalidCommand)


def test_scan_keys_pages_with_a_next_key():
    m = Machine()
    m.apply(kv.PutMany(tuple((b"k%02d" % i, b"v") for i in range(10)) + ((b"other", b"v"),)))
    sm = m.sm
    assert sm.scan_keys(b"", 4) == kv.ScanKeysResult((b"k00", b"k01", b"k02", b"k03"), b"k04")
    assert sm.scan_keys(b"k08", 4) == kv.ScanKeysResult((b"k08", b"k09", b"other"), None)
    assert sm.scan_keys(b"", 100, prefix=b"k0") == kv.ScanKeysResult(tuple(b"k%02d" % i for i in range(10)), None)
    assert sm.scan_keys(b"", 3, prefix=b"k0") == kv.ScanKeysResult((b"k00", b"k01", b"k02"), b"k03")
    assert sm.scan_keys(b"", 100, prefix=b"k09") == kv.ScanKeysResult((b"k09",), None)
    # the byte budget: at least one key, and the first left out is next
    assert sm.scan_keys(b"", 100, bytes_max=7) == kv.ScanKeysResult((b"k00", b"k01"), b"k02")
    assert sm.scan_keys(b"", 100, bytes_max=1) == kv.ScanKeysResult((b"k00",), b"k01")
    assert sm.read(kv.ScanKeys(b"", b"o")) == kv.ScanKeysResult((b"other",), None)
    assert sm.read(kv.Count()) == kv.CountResult(11)


@pytest.mark.parametrize(
    "frame, expected",
    [
        ([1, "mput", 2, [[b"a", b"1"], [b"b", None]], 9, 3], kv.PutMany(((b"a", b"1"), (b"b", None)), 9, 3)),
        ([1, "incr", 2, b"n", -4, 9, 3], kv.Incr(b"n", -4, 9, 3)),
        ([1, "append", 2, b"s", b"x", 9, 3], kv.Append(b"s", b"x", 9, 3)),
        ([1, "putif", 2, b"k", b"v", "present", 9, 3], kv.PutIf(b"k", b"v", kv.PUT_IF_PRESENT, 9, 3)),
    ],
)
def test_worker_parses_the_new_write_ops(frame, expected):
    req = parse_request(frame)
    assert isinstance(req, WriteRequest) and req.group == 2 and req.command == expected


def test_worker_parses_the_new_read_ops():
    assert parse_request([1, "keys", 3, b"a", b"p", 5]) == ReadRequest(1, "keys", 3, kv.ScanKeys(b"a", b"p", 5), False)
    assert parse_request([1, "keys", 3, b"", b"", None], scan_items_max=7).query.limit == 7
    assert parse_request([1, "count", 3]) == ReadRequest(1, "count", 3, kv.Count(), False)


@pytest.mark.parametrize(
    "frame",
    [
        [1, "mput", 2, [], 9, 3],
        [1, "mput", 2, [[b"a"]], 9, 3],
        [1, "mput", 2, [["a", b"1"]], 9, 3],
        [1, "incr", 2, b"n", 1 << 63, 9, 3],
        [1, "incr", 2, b"n", "1", 9, 3],
        [1, "putif", 2, b"k", b"v", "nx", 9, 3],
        [1, "keys", 2, b"", b"", -1],
        [1, "count"],
    ],
)
def test_worker_refuses_malformed_new_ops(frame):
    with pytest.raises(BadRequest):
        parse_request(frame)


def test_write_payloads_of_the_new_results():
    assert write_payload(kv.PutManyResult(3)) == ("ok", 3)
    assert write_payload(kv.IncrResult(5)) == ("ok", [5, None])
    assert write_payload(kv.IncrResult(None, kv.INCR_NOT_INTEGER)) == ("ok", [None, "not_integer"])
    assert write_payload(kv.IncrResult(None, kv.INCR_OVERFLOW)) == ("ok", [None, "overflow"])
    assert write_payload(kv.AppendResult(None)) == ("ok", None)
    assert write_payload(kv.PutIfResult(True, b"old")) == ("ok", [True, b"old"])


@pytest.mark.parametrize(
    "text, value",
    [(b"0", 0), (b"-1", -1), (b"9223372036854775807", (1 << 63) - 1), (b"-9223372036854775808", -(1 << 63)),
     (b"9223372036854775808", None), (b"-0", None), (b"007", None), (b"", None), (b"-", None), (b"1 ", None),
     (b"\xd9\xa1", None), (b"12345678901234567890123", None)],
)
def test_parse_int64_is_redis_string2ll(text, value):
    assert kv.parse_int64(text) == value
