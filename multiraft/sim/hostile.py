"""Hostile client frames (issue 13): the kinds of CBOR documents that crashed or
stalled servers, built from the workload's own requests, fed to the real
client-protocol decoder (multiraft.protocol.decode_body, as the worker's and
the coordinator's servers call it).

The decoder must refuse each with ProtocolError or decode it to a request
whose answer encodes (protocol.encode_response, without its fallback), in work
linear in its size: anything else is a violation. Pure: bytes in, verdict out.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from multiraft import protocol

from .safety import SafetyViolation

# A decoded frame is re-encoded to check it: a frame this large means the
# decoder expanded it (a shared-reference DAG would).
_EXPANSION_MAX = 16


def _head(major: int, n: int) -> bytes:
    """A CBOR head: major type and argument (RFC 8949 §3)."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, n)
    raise ValueError(n)


def _cbor(x: Any) -> bytes:
    """The CBOR bytes of a plain value (protocol.encode of [x], unframed)."""
    return protocol.encode([x])[5:]


def _tag(tag: int, content: bytes) -> bytes:
    return _head(6, tag) + content


def _bignum(value: int) -> bytes:
    magnitude = value if value >= 0 else -1 - value
    data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
    return _tag(2 if value >= 0 else 3, _head(2, len(data)) + data)


def _shared_dag(levels: int) -> bytes:
    doc = b"\xd8\x1c\x81\x01"  # shareable [1]
    for i in range(levels):
        # shareables are numbered in the order they start: level i's is levels - i
        doc = b"\xd8\x1c\x82" + doc + _tag(29, _head(0, levels - i))
    return doc


def _array(items: list[bytes]) -> bytes:
    return _head(4, len(items)) + b"".join(items)


def hostile_frame(rng: random.Random, request: list) -> tuple[str, bytes]:
    """(kind, body): `request` (a plain client request) with one hostile part."""
    items = [_cbor(x) for x in request]
    where = rng.randrange(len(items))
    kind = rng.choice(["cyclic", "dag", "deep", "bignum", "tag", "stringref", "trailing", "flip", "wide_int"])
    if kind == "cyclic":
        items[where] = bytes.fromhex("d81c81d81d00")
    elif kind == "dag":
        items[where] = _shared_dag(rng.randint(1, 14))
    elif kind == "deep":
        depth = rng.randint(20, 60)
        items[where] = b"\x81" * depth + b"\x01"
    elif kind == "bignum":
        items[where] = _bignum(rng.choice([1, -1]) << rng.randint(129, 20_000))
    elif kind == "wide_int":  # decodes: the request's own check must refuse it
        items[where] = _bignum(rng.choice([1, -1]) << rng.randint(64, 127))
    elif kind == "tag":
        tag = rng.choice([0, 1, 4, 5, 25, 30, 35, 37, 256, 258, 55799, rng.randrange(1 << 32)])
        items[where] = _tag(tag, items[where])
    elif kind == "stringref":
        # a string-reference namespace (256) whose second string refers to the first (25)
        text = _cbor("x" * rng.randint(3, 64))
        return kind, _tag(256, _array([text, _tag(25, _head(0, 0))]))
    elif kind == "trailing":
        return kind, _array(items) + bytes([rng.randrange(256)])
    else:  # one flipped bit anywhere
        body = bytearray(_array(items))
        i = rng.randrange(len(body) * 8)
        body[i // 8] ^= 1 << (i % 8)
        return kind, bytes(body)
    return kind, _array(items)


def check_hostile_frame(body: bytes) -> bool:
    """True if refused (ProtocolError), False if decoded to a frame whose
    answer encodes. Raises SafetyViolation otherwise."""
    try:
        frame = protocol.decode_body(body, text_keys_only=True)
    except protocol.ProtocolError:
        return True
    except Exception as exc:
        raise SafetyViolation(f"hostile frame {body.hex()[:200]}: decoder raised {type(exc).__name__}: {exc}") from None
    try:
        answer = protocol.encode([frame[0], protocol.ERROR, "refused"])
        echoed = protocol.encode(frame)
    except Exception as exc:
        raise SafetyViolation(
            f"hostile frame {body.hex()[:200]}: decoded to a value that does not encode: {type(exc).__name__}: {exc}"
        ) from None
    if len(echoed) > _EXPANSION_MAX * len(body) + 64 or len(answer) > len(echoed) + 64:
        raise SafetyViolation(f"hostile frame {body.hex()[:200]}: {len(body)} bytes decoded to {len(echoed)}")
    return False
