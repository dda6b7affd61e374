"""multiraft.resp.protocol: the RESP2 request parser and the reply serializer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from multiraft.resp.protocol import (
    NIL_ARRAY,
    OK,
    ErrorReply,
    Limits,
    Map,
    ProtocolError,
    ReplyParser,
    RequestParser,
    Status,
    encode_command,
    encode_reply,
    split_inline,
)


def parse_all(data: bytes, limits: Limits | None = None) -> list[list[bytes]]:
    p = RequestParser(limits)
    p.feed(data)
    out = []
    while (cmd := p.next()) is not None:
        out.append(cmd)
    return out


# --- requests ---------------------------------------------------------------


def test_multibulk_commands_and_pipelining():
    data = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
    assert parse_all(data) == [[b"GET", b"k"], [b"SET", b"k", b""]]


def test_bulk_strings_are_binary_safe():
    value = bytes(range(256)) + b"\r\n*1\r\n"
    assert parse_all(encode_command([b"SET", b"k\x00", value])) == [[b"SET", b"k\x00", value]]


def test_byte_by_byte_feeding_gives_the_same_commands():
    data = encode_command(["SET", "key", "v" * 300]) + b"PING\r\n" + encode_command(["GET", "key"])
    p = RequestParser()
    got = []
    for i in range(len(data)):
        p.feed(data[i : i + 1])
        while (cmd := p.next()) is not None:
            got.append(cmd)
    assert got == [[b"SET", b"key", b"v" * 300], [b"PING"], [b"GET", b"key"]]
    assert p.buffered == 0


def test_empty_arrays_and_empty_inline_lines_are_no_commands():
    assert parse_all(b"*0\r\n*-1\r\n\r\n\n   \r\nPING\r\n") == [[b"PING"]]


@pytest.mark.parametrize(
    "line, args",
    [
        (b"SET k v", [b"SET", b"k", b"v"]),
        (b"  set   k\tv  ", [b"set", b"k", b"v"]),
        (b'SET "a b" "c\\"d"', [b"SET", b"a b", b'c"d']),
        (b'ECHO "\\x41\\x4a\\n\\r\\t\\b\\a\\q"', [b"ECHO", b"AJ\n\r\t\x08\x07q"]),
        (b"ECHO 'it\\'s' 'a\\nb'", [b"ECHO", b"it's", b"a\\nb"]),
        (b'ECHO ""', [b"ECHO", b""]),
        (b'ECHO foo"bar baz"', [b"ECHO", b"foobar baz"]),
        (b"ECHO a\x00b c", [b"ECHO", b"a"]),
    ],
)
def test_inline_commands_split_like_redis(line, args):
    assert split_inline(line) == args
    assert parse_all(line + b"\r\n") == [args]


@pytest.mark.parametrize("line", [b'ECHO "abc', b"ECHO 'abc", b'ECHO "a"b', b"ECHO 'a'b"])
def test_unbalanced_quotes_are_a_protocol_error(line):
    with pytest.raises(ProtocolError, match="unbalanced quotes"):
        parse_all(line + b"\r\n")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"*2\r\n+GET\r\n", "expected '\\$', got '\\+'"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*a\r\n", "invalid multibulk length"),
        (b"*1\r\n$3\r\nGETxx", "expected CRLF"),
        (b"*" + b"9" * 30 + b"\r\n", "invalid multibulk length"),
    ],
)
def test_malformed_requests_raise(data, message):
    with pytest.raises(ProtocolError, match=message):
        parse_all(data)


def test_limits():
    lim = Limits(bulk_bytes_max=10, array_items_max=3, inline_bytes_max=20, command_bytes_max=60)
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parse_all(b"*1\r\n$11\r\n", lim)
    assert parse_all(encode_command([b"x" * 10]), lim) == [[b"x" * 10]]
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        parse_all(b"*4\r\n", lim)
    with pytest.raises(ProtocolError, match="too big inline request"):
        parse_all(b"E" * 21, lim)  # no newline yet, already too long
    with pytest.raises(ProtocolError, match="too big inline request"):
        parse_all(b"E" * 25 + b"\r\n", lim)
    with pytest.raises(ProtocolError, match="too big mbulk count string"):
        parse_all(b"*" + b"1" * 25, lim)
    with pytest.raises(ProtocolError, match="command larger than"):
        parse_all(encode_command([b"x" * 10, b"y" * 10, b"z" * 10]), lim)


def test_a_big_bulk_is_not_reparsed_from_the_start():
    # a 1 MiB value fed in 1 KiB pieces: linear, and only once complete
    value = b"v" * (1 << 20)
    data = encode_command([b"SET", b"k", value])
    p = RequestParser()
    for i in range(0, len(data), 1024):
        p.feed(data[i : i + 1024])
        cmd = p.next()
        if i + 1024 < len(data):
            assert cmd is None
    assert cmd == [b"SET", b"k", value]


# --- replies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, resp2, resp3",
    [
        (OK, b"+OK\r\n", None),
        (Status("PONG"), b"+PONG\r\n", None),
        (ErrorReply("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", None),
        (42, b":42\r\n", None),
        (-1, b":-1\r\n", None),
        (b"bulk", b"$4\r\nbulk\r\n", None),
        ("é", b"$2\r\n\xc3\xa9\r\n", None),
        (b"", b"$0\r\n\r\n", None),
        (None, b"$-1\r\n", b"_\r\n"),
        (NIL_ARRAY, b"*-1\r\n", b"_\r\n"),
        ([], b"*0\r\n", None),
        (
            [b"a", None, 1, [OK]],
            b"*4\r\n$1\r\na\r\n$-1\r\n:1\r\n*1\r\n+OK\r\n",
            b"*4\r\n$1\r\na\r\n_\r\n:1\r\n*1\r\n+OK\r\n",
        ),
        (Map(proto=2), b"*2\r\n$5\r\nproto\r\n:2\r\n", b"%1\r\n$5\r\nproto\r\n:2\r\n"),
    ],
)
def test_reply_encoding(reply, resp2, resp3):
    assert encode_reply(reply) == resp2
    assert encode_reply(reply, resp3=True) == (resp3 or resp2)


def test_unknown_reply_types_are_refused():
    with pytest.raises(TypeError):
        encode_reply(1.5)


def test_reply_parser_reads_what_the_encoder_writes():
    replies = [OK, ErrorReply("ERR x"), 7, b"v", None, [b"a", [1, None]], NIL_ARRAY]
    data = b"".join(encode_reply(r) for r in replies)
    p = ReplyParser()
    got = []
    for i in range(len(data)):  # byte by byte
        p.feed(data[i : i + 1])
        while True:
            ok, value = p.next()
            if not ok:
                break
            got.append(value)
    assert got == replies


# --- fuzz: garbage never crashes, it only raises ProtocolError ---------------


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_garbage_only_raises_protocol_error(chunks):
    p = RequestParser(Limits(bulk_bytes_max=64, array_items_max=8, inline_bytes_max=32, command_bytes_max=256))
    try:
        for chunk in chunks:
            p.feed(chunk)
            while (cmd := p.next()) is not None:
                assert cmd and all(type(a) is bytes for a in cmd)
    except ProtocolError as exc:
        assert str(exc).startswith("Protocol error: ")


_PREFIXES = st.sampled_from([b"*", b"$", b"*1\r\n", b"*2\r\n$3\r\nGET\r\n", b'"', b"'", b"\r\n", b""])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_PREFIXES, st.binary(max_size=12)), max_size=10))
def test_near_miss_garbage_only_raises_protocol_error(parts):
    p = RequestParser(Limits(bulk_bytes_max=64, array_items_max=8, inline_bytes_max=32, command_bytes_max=256))
    try:
        for prefix, tail in parts:
            p.feed(prefix + tail)
            while p.next() is not None:
                pass
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=50), min_size=1, max_size=6), min_size=1, max_size=6),
       st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20))
def test_round_trip_with_any_split(commands, cuts):
    data = b"".join(encode_command(c) for c in commands)
    p = RequestParser()
    got = []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        i += 1
        p.feed(data[pos : pos + step])
        pos += step
        while (cmd := p.next()) is not None:
            got.append(cmd)
    assert got == commands
