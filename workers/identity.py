"""Which replica incarnation the worker's stored data belongs to (replicas.json).

The log and the snapshot store hold a group's state, but not whose: after a
replica is deleted and the node hosts the group again, the new replica has a
new id (multiraft.replica) and must start empty. The coordinator records the
new id in placement.json before the worker hears of it, so a worker that was
down (or crashed half-way through a change) can find, at start, stored data
of an incarnation that was retired meanwhile. This small file, written
atomically whenever the worker creates, imports or deletes a replica, names
the incarnation of each group's stored data; the worker deletes stored data
that belongs to any other incarnation before it builds its groups.

Order, so that every crash point is safe: a new replica's id is written here
*before* any of its data (so data never exists under an id this file does
not name), and a deleted replica's entry is removed only *after* its data is
gone. A data directory from before replica ids (no file) held only
incarnation 0 (the bare node id) of every group.

Format: ``{"format": 1, "replicas": {"<group>": "<replica id>"}}``.
Blocking I/O: called on the worker's I/O thread (or at start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from multiraft.replica import check_replica_id

__all__ = ["IDENTITY_FILE", "IdentityError", "load_identities", "save_identities"]

IDENTITY_FILE = "replicas.json"
IDENTITY_FORMAT = 1


class IdentityError(Exception):
    """replicas.json is unreadable or malformed (the disk's or an operator's fault)."""


def load_identities(data_dir: str | Path) -> dict[int, str] | None:
    """{group: replica id of its stored data}, or None if the file does not
    exist (a data directory from before replica ids, or a new one)."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from None
    try:
        doc = json.loads(raw)
        if doc.get("format") != IDENTITY_FORMAT:
            raise IdentityError(f"{path}: unsupported format {doc.get('format')!r} (expected {IDENTITY_FORMAT})")
        out = {}
        for key, rid in doc["replicas"].items():
            out[int(key)] = check_replica_id(rid)
        return out
    except IdentityError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ReplicaIdError is a ValueError
        raise IdentityError(f"{path} is malformed: {exc}") from None


def save_identities(data_dir: str | Path, replicas: dict[int, str], *, sync: bool = True) -> None:
    """Atomically replace replicas.json (temp file, fsync, rename, fsync dir)."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / IDENTITY_FILE
    tmp = directory / (IDENTITY_FILE + ".tmp")
    doc = {"format": IDENTITY_FORMAT, "replicas": {str(g): r for g, r in sorted(replicas.items())}}
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
