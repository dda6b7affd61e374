"""Which group (shard) owns a key: a documented, stable hash (DESIGN §10).

The mapping, fixed forever (format 1)::

    group_for_key(key, groups) = crc32(key) % groups

where crc32 is CRC-32/ISO-HDLC: polynomial 0x04C11DB7 (reflected 0xEDB88320),
initial value 0xFFFFFFFF, reflected input and output, final XOR 0xFFFFFFFF,
computed over the raw key bytes, as an unsigned 32-bit integer. It is the CRC of
zip, gzip, PNG and Ethernet: Python's `zlib.crc32`, Go's
`hash/crc32.ChecksumIEEE`, Java's `java.util.zip.CRC32`, Rust's
`crc32fast::hash`. Its check value is crc32(b"123456789") == 0xCBF43926. Groups
are numbered 0 .. groups - 1.

Why CRC-32: every language has it, it runs in C here (about 0.1 µs for a short
key, against more than 1 µs for a pure-Python FNV-1a), and it spreads typical
keys evenly (Redis Cluster routes by CRC16 the same way). It is not a defence
against adversarial keys chosen to land on one shard.

Every node, client and tool must compute the same answer, and data on disk is
placed by it: this function must never change. Tests pin expected values. A
different scheme would be a new, separately named function and a migration.

Changing `groups` moves almost every key (it is a modulus, not a consistent
hash), so the number of groups is fixed when a cluster is created.
"""

from __future__ import annotations

import zlib

__all__ = ["KEY_HASH_NAME", "group_for_key", "key_hash"]

# The name of the scheme above, for routing tables and docs to record.
KEY_HASH_NAME = "crc32-iso-hdlc-mod"


def key_hash(key: bytes) -> int:
    """The stable 32-bit hash of `key` (CRC-32/ISO-HDLC), in [0, 2**32)."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"keys are bytes, not {type(key).__name__}")
    return zlib.crc32(key)


def group_for_key(key: bytes, groups: int) -> int:
    """The group, in [0, groups), that owns `key`: `crc32(key) % groups`."""
    if type(groups) is not int or groups < 1:
        raise ValueError(f"groups must be an int >= 1, not {groups!r}")
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"keys are bytes, not {type(key).__name__}")
    return zlib.crc32(key) % groups
