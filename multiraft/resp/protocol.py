"""RESP2, the Redis serialization protocol (version 2): pure, no I/O.

(And the little of RESP3 that a client asking for it with HELLO 3 needs --
redis-py 8 does by default: the same replies, with RESP3's null and maps.)

Requests come as arrays of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``)
or as inline commands (``GET k\\r\\n``, split like Redis's sdssplitargs: quotes,
``\\x41`` escapes). `RequestParser` is incremental (feed bytes, take whole
commands) and bounded by `Limits`: anything malformed or oversized raises
`ProtocolError`, whose message is the Redis reply text ("Protocol error:
..."); the server answers it and closes that connection only.

Replies are Python values, serialized by `encode_reply`:

    Status("OK")   +OK            int             :n
    ErrorReply(m)  -m             bytes / str     $len bulk
    None           $-1 (nil)      list / tuple    *n array of replies
    NIL_ARRAY      *-1            Map({k: v})     *2n k v ... (RESP3: %n k v ...)
    In RESP3 (encode_reply(..., resp3=True)) None and NIL_ARRAY are _ (null).

`ReplyParser` reads them back (tests and tools).
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = [
    "Limits",
    "ProtocolError",
    "RequestParser",
    "Status",
    "ErrorReply",
    "NIL_ARRAY",
    "Map",
    "OK",
    "ReplyParser",
    "encode_reply",
    "encode_command",
    "split_inline",
]


@attrs.frozen
class Limits:
    """Bounds on what one connection may send (all in bytes or items)."""

    # A bulk string (one key or value). The KV's limits are 64 KiB per key and
    # 1 MiB per value; a little more lets the KV answer with its own error.
    bulk_bytes_max: int = (1 << 20) + 1024
    # Arguments of one command (Redis: 1024 * 1024).
    array_items_max: int = 1 << 20
    # An inline command, or a *N / $N header line (Redis: 64 KiB).
    inline_bytes_max: int = 64 * 1024
    # One whole command (its bulk strings, plus 16 bytes per argument): it
    # must fit, encoded, in one worker request frame (4 MiB by default).
    command_bytes_max: int = 3 << 20


class ProtocolError(Exception):
    """Malformed or oversized input: answer "-ERR <message>", then close."""


class Status(str):
    """A simple string reply: +OK, +PONG."""


class ErrorReply:
    """An error reply; `message` starts with its code ("ERR ...", "NOPROTO ...")."""

    __slots__ = ("message",)

    def __init__(self, message: str | bytes) -> None:
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErrorReply) and _b(other.message) == _b(self.message)

    def __hash__(self) -> int:
        return hash(_b(self.message))

    def __repr__(self) -> str:
        return f"ErrorReply({self.message!r})"


class Map(dict):
    """A map reply: a flat array of keys and values in RESP2, a map in RESP3."""


class _NilArray:
    def __repr__(self) -> str:
        return "NIL_ARRAY"


NIL_ARRAY = _NilArray()
OK = Status("OK")


def _b(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else bytes(text)


def _line(text: str | bytes) -> bytes:
    # Simple strings and errors cannot hold CR or LF (Redis replaces them too).
    return _b(text).replace(b"\r", b" ").replace(b"\n", b" ")


_CRLF = b"\r\n"
_NIL = b"$-1\r\n"


def _encode(obj: Any, out: list[bytes], resp3: bool) -> None:
    kind = type(obj)
    if kind is bytes or kind is bytearray or kind is memoryview:
        out.append(b"$%d\r\n" % len(obj))
        out.append(bytes(obj))
        out.append(_CRLF)
    elif obj is None:
        out.append(b"_\r\n" if resp3 else _NIL)
    elif kind is int or kind is bool:
        out.append(b":%d\r\n" % obj)
    elif kind is Status:
        out.append(b"+" + _line(obj) + _CRLF)
    elif kind is str:
        data = obj.encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(_CRLF)
    elif kind is list or kind is tuple:
        out.append(b"*%d\r\n" % len(obj))
        for item in obj:
            _encode(item, out, resp3)
    elif kind is ErrorReply:
        out.append(b"-" + _line(obj.message) + _CRLF)
    elif kind is Map:
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(obj) if resp3 else 2 * len(obj)))
        for k, v in obj.items():
            _encode(k, out, resp3)
            _encode(v, out, resp3)
    elif obj is NIL_ARRAY:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")
    else:
        raise TypeError(f"cannot encode {obj!r} as a RESP2 reply")


def encode_reply(obj: Any, resp3: bool = False) -> bytes:
    """One reply value (see the module docstring) as RESP2 (or RESP3) bytes."""
    out: list[bytes] = []
    _encode(obj, out, resp3)
    return b"".join(out)


def encode_command(args: list[bytes | str]) -> bytes:
    """A command as a RESP2 array of bulk strings (what clients send)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        data = _b(a)
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(_CRLF)
    return b"".join(out)


# ---------------------------------------------------------------------------
# Requests


_SPACE = frozenset(b" \t\n\r\v\f")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command as Redis's sdssplitargs does: whitespace
    separates, "double quotes" take \\n \\r \\t \\b \\a \\xHH and \\<c> escapes,
    'single quotes' take \\' only, a closing quote must be followed by a space
    or the end, and a NUL byte ends the line. ProtocolError if unbalanced."""
    nul = line.find(0)
    if nul >= 0:
        line = line[:nul]
    n = len(line)
    args: list[bytes] = []
    i = 0
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            c = line[i] if i < n else None
            if inq:
                if c is None:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:  # closing "
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if c is None:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:  # closing '
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if c is None or c in (32, 10, 13, 9):
                    break
                if c == 34:
                    inq = True
                elif c == 39:
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


def _header_int(buf: bytearray, start: int, end: int) -> int | None:
    """The integer of a *N or $N header (strict decimal, optional '-')."""
    text = bytes(buf[start:end])
    body = text[1:] if text[:1] == b"-" else text
    if not body or len(body) > 19 or not body.isdigit():
        return None
    return int(text)


class RequestParser:
    """Incremental request parser: `feed(data)`, then call `next()` until it
    returns None (it needs more bytes). Raises ProtocolError on bad input,
    after which the parser must not be used again."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] | None = None  # the array being read
        self._remaining = 0  # its bulk strings still to read
        self._bulk_len = -1  # the current bulk's length, once its header is read
        self._size = 0  # the command's size so far (for command_bytes_max)

    def feed(self, data: bytes) -> None:
        buf = self._buf
        if self._pos and self._pos >= len(buf) // 2:
            del buf[: self._pos]
            self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf) - self._pos

    def next(self) -> list[bytes] | None:
        """The next whole command (a non-empty list of bytes), or None."""
        buf = self._buf
        lim = self.limits
        while True:
            if self._args is None:
                pos = self._pos
                if pos >= len(buf):
                    return None
                if buf[pos] != 42:  # not '*': an inline command
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if len(buf) - pos > lim.inline_bytes_max:
                            raise ProtocolError("Protocol error: too big inline request")
                        return None
                    if nl - pos > lim.inline_bytes_max:
                        raise ProtocolError("Protocol error: too big inline request")
                    end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                    args = split_inline(bytes(buf[pos:end]))
                    self._pos = nl + 1
                    if args:
                        return args
                    continue  # an empty line: nothing to do
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if len(buf) - pos > lim.inline_bytes_max:
                        raise ProtocolError("Protocol error: too big mbulk count string")
                    return None
                count = _header_int(buf, pos + 1, eol)
                if count is None or count > lim.array_items_max:
                    raise ProtocolError("Protocol error: invalid multibulk length")
                self._pos = eol + 2
                if count <= 0:
                    continue  # *0 and *-1 are no command
                self._args = []
                self._remaining = count
                self._size = 0
            args = self._args
            while self._remaining:
                pos = self._pos
                if self._bulk_len < 0:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if len(buf) - pos > lim.inline_bytes_max:
                            raise ProtocolError("Protocol error: too big bulk count string")
                        if len(buf) > pos and buf[pos] != 36:
                            raise ProtocolError(f"Protocol error: expected '$', got '{chr(buf[pos])}'")
                        return None
                    if buf[pos] != 36:  # '$'
                        raise ProtocolError(f"Protocol error: expected '$', got '{chr(buf[pos])}'")
                    n = _header_int(buf, pos + 1, eol)
                    if n is None or n < 0 or n > lim.bulk_bytes_max:
                        raise ProtocolError("Protocol error: invalid bulk length")
                    self._size += n + 16
                    if self._size > lim.command_bytes_max:
                        raise ProtocolError(
                            f"Protocol error: command larger than {lim.command_bytes_max} bytes"
                        )
                    self._bulk_len = n
                    pos = self._pos = eol + 2
                n = self._bulk_len
                if len(buf) - pos < n + 2:
                    return None
                if buf[pos + n] != 13 or buf[pos + n + 1] != 10:
                    raise ProtocolError("Protocol error: expected CRLF after a bulk string")
                args.append(bytes(buf[pos : pos + n]))
                self._pos = pos + n + 2
                self._bulk_len = -1
                self._remaining -= 1
            self._args = None
            return args


# ---------------------------------------------------------------------------
# Replies (for tests and tools)


class ReplyParser:
    """Incremental reply parser: `feed(data)`, then `next()` returns
    (True, reply) or (False, None) when more bytes are needed. Replies are
    Status, ErrorReply, int, bytes, None, list or NIL_ARRAY (and, from
    RESP3, None for _ and a dict for a map)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> tuple[bool, Any]:
        got = self._parse(0)
        if got is None:
            return False, None
        value, end = got
        del self._buf[:end]
        return True, value

    def _parse(self, pos: int) -> tuple[Any, int] | None:
        buf = self._buf
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        kind = buf[pos : pos + 1]
        body = bytes(buf[pos + 1 : eol])
        nxt = eol + 2
        if kind == b"+":
            return Status(body.decode(errors="replace")), nxt
        if kind == b"-":
            return ErrorReply(body.decode(errors="replace")), nxt
        if kind == b":":
            return int(body), nxt
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None, nxt
            if len(buf) < nxt + n + 2:
                return None
            return bytes(buf[nxt : nxt + n]), nxt + n + 2
        if kind == b"_":
            return None, nxt
        if kind == b"%":
            pairs = []
            for _ in range(2 * int(body)):
                got = self._parse(nxt)
                if got is None:
                    return None
                item, nxt = got
                pairs.append(item)
            return dict(zip(pairs[::2], pairs[1::2], strict=True)), nxt
        if kind == b"*":
            n = int(body)
            if n < 0:
                return NIL_ARRAY, nxt
            items = []
            for _ in range(n):
                got = self._parse(nxt)
                if got is None:
                    return None
                item, nxt = got
                items.append(item)
            return items, nxt
        raise ProtocolError(f"Protocol error: bad reply type {kind!r}")
