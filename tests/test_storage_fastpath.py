"""SegmentedLog's write path against MemoryStorage (plan_group_write), valid and invalid writes.

SegmentedLog validates and encodes the common GroupWrite (entries and/or a
hard state) inline; everything else goes through plan_group_write, as
MemoryStorage does for every write. Random batches, many of them broken in
one way or another, must be accepted or refused alike and leave the same state,
before and after reopening, and every record must be framed the same way.
"""

from __future__ import annotations

import enum
import random

import pytest

from multiraft.raft.types import ConfState, Entry, HardState
from storage import FileStorageOptions, GroupWrite, InvalidWriteError, MemoryStorage, SegmentedLog
from storage.batch import check_entries, check_hard_state
from storage.records import RecordType, decode_entries, scan_records

GROUPS = range(5)


class _Kind(enum.IntEnum):
    NORMAL = 0


def _state(s, group: int):
    first, last = s.first_index(group), s.last_index(group)
    return (
        s.compacted_to(group),
        last,
        s.entries(group, first, last + 1),
        [s.term(group, i) for i in range(first - 1, last + 1)],
        s.hard_state(group),
        s.conf_state(group),
    )


def _entries(rng: random.Random, first: int, n: int, term: int, tag: int) -> list[Entry]:
    out = []
    for k in range(n):
        if rng.random() < 0.2:
            term += 1
        size = rng.choice([0, 1, 16, 100, 1500])
        out.append(Entry(term, first + k, rng.choice([0, 0, 0, 1]), b"%d:%d:" % (tag, k) + b"d" * size))
    return out


def _break(rng: random.Random, gw: GroupWrite, base: int) -> GroupWrite:
    """gw with one thing wrong (sometimes still valid: the engines must agree either way)."""
    ents = list(gw.entries)
    what = rng.randrange(16)
    if what == 0 and ents:  # a gap
        return GroupWrite(gw.group, entries=[e._replace(index=e.index + 2) for e in ents])
    if what == 1 and len(ents) > 1:  # not contiguous
        ents[-1] = ents[-1]._replace(index=ents[-1].index + 1)
    elif what == 2 and ents:  # a term below the previous one
        ents[-1] = ents[-1]._replace(term=ents[0].term - 1)
    elif what == 3 and ents:  # type out of range, or not a plain int
        ents[0] = ents[0]._replace(type=rng.choice([256, -1, _Kind.NORMAL, True, 0.0]))
    elif what == 4 and ents:  # data not bytes
        ents[-1] = ents[-1]._replace(data=rng.choice(["text", memoryview(b"x"), bytearray(b"ok"), None]))
    elif what == 5 and ents:  # index or term not an int
        k = rng.randrange(len(ents))
        if rng.random() < 0.5:
            ents[k] = ents[k]._replace(index=float(ents[k].index))
        else:
            ents[k] = ents[k]._replace(term=float(ents[k].term))
    elif what == 6 and ents:  # not an Entry
        ents[rng.randrange(len(ents))] = rng.choice([(1, 2), (1, 2, 3, b"", 5), None, 7])
    elif what == 7:  # a bad hard state
        hs = rng.choice(
            [
                HardState(-1),
                HardState(1, 7, 0),
                HardState(1, None, 2**63),
                (1, None, 0),
                HardState(1.0),
                HardState(1, "\ud800"),  # no UTF-8 for it
            ]
        )
        return GroupWrite(gw.group, hard_state=hs, entries=ents)
    elif what == 8 and ents:  # at or below the base
        return GroupWrite(gw.group, entries=[e._replace(index=base - len(ents) + 1 + k) for k, e in enumerate(ents)])
    elif what == 9:
        return GroupWrite(rng.choice([-1, 2**63, "1", None]), entries=ents)
    elif what == 10 and ents:  # a huge term
        ents = [e._replace(term=2**63) for e in ents]
    return GroupWrite(gw.group, hard_state=gw.hard_state, entries=ents)


class _Pair:
    def __init__(self, tmp_path, cache: int) -> None:
        self.opts = FileStorageOptions(
            base_dir=tmp_path,
            max_segment_size=8192,
            rewrite_after_segments=3,
            cache_entries_size=cache,
            min_free_disk_space=0,
        )
        self.log = SegmentedLog(self.opts)
        self.mem = MemoryStorage(seed=1)

    def write(self, batch) -> bool:
        errors = []
        for s in (self.mem, self.log):
            try:
                s.write(batch)
                errors.append(None)
            except InvalidWriteError as exc:
                errors.append(exc)
        assert (errors[0] is None) == (errors[1] is None), (batch, errors)
        return errors[0] is None

    def check(self) -> None:
        self.log.check_invariants()
        assert self.log.groups() == self.mem.groups()
        for g in GROUPS:
            assert _state(self.log, g) == _state(self.mem, g), g

    def reopen(self) -> None:
        self.log.close()
        self.log = SegmentedLog(self.opts)
        self.log.check_invariants()


@pytest.mark.parametrize("seed,cache", [(1, 1000), (2, 3), (3, 0)])
def test_write_path_matches_the_planner(tmp_path, seed, cache):
    rng = random.Random(seed)
    p = _Pair(tmp_path, cache)
    tag = 0
    accepted = refused = 0
    for step in range(400):
        batch = []
        for g in rng.sample(GROUPS, rng.randint(1, 3)):
            tag += 1
            base, last = p.mem.compacted_to(g)[0], p.mem.last_index(g)
            kw = {}
            r = rng.random()
            if r < 0.75:
                first = rng.randint(base + 1, last + 1) if rng.random() < 0.3 else last + 1
                prev = p.mem.term(g, first - 1)
                n = rng.choice([1, 1, 2, 3, 16, 40])
                kw["entries"] = _entries(rng, first, n, prev + rng.choice([0, 0, 1]), tag)
            if r > 0.5 or rng.random() < 0.3:
                kw["hard_state"] = HardState(rng.randint(0, 9), rng.choice([None, "n1", "ñ", ""]), rng.randint(0, 50))
            if rng.random() < 0.05:
                kw["conf_state"] = ConfState(voters=frozenset({"a", "b"}))
            if rng.random() < 0.05 and last > base:
                i = rng.randint(base, last)
                kw["compact_to"] = (i, p.mem.term(g, i))
            if rng.random() < 0.03:
                kw["truncate_from"] = rng.randint(base + 1, last + 2)
            if rng.random() < 0.02:
                kw = {"remove": True}
            gw = GroupWrite(g, **kw)
            if rng.random() < 0.25:
                gw = _break(rng, gw, base)
            batch.append(gw)
        if rng.random() < 0.02:
            batch.append(batch[0])  # one group twice
        if p.write(batch):
            accepted += 1
        else:
            refused += 1
        p.check()
        if step % 97 == 96:
            p.reopen()
            p.check()
    assert accepted > 200 and refused > 30, (accepted, refused)
    p.reopen()
    p.check()
    p.log.close()


def test_records_are_framed_as_the_general_path_writes_them(tmp_path):
    """The inline encoder's records decode to what was written, one record per kind and group."""
    log = SegmentedLog(FileStorageOptions(base_dir=tmp_path, min_free_disk_space=0))
    mixed = [Entry(2, 1, 0, b"a"), Entry(2, 2, 1, b""), Entry(3, 3, 0, b"ccc")]
    log.write(
        [
            GroupWrite(1, entries=mixed, hard_state=HardState(3, "n\u00f1", 2)),
            GroupWrite(2, entries=[Entry(5, 1, 1, b"x" * 300)]),
            GroupWrite(3, hard_state=HardState(4, None, 0)),
            GroupWrite(4, entries=[Entry(1, i, 0, b"%d" % i) for i in range(1, 21)]),
        ]
    )
    log.close()
    seg = next((tmp_path / "logs").glob("segment_*.log"))
    recs = [(rtype, group, bytes(body)) for _off, rtype, group, _d, body in scan_records(seg.read_bytes())]
    assert [(t, g) for t, g, _b in recs] == [
        (RecordType.ENTRIES, 1),
        (RecordType.HARD_STATE, 1),
        (RecordType.ENTRIES, 2),
        (RecordType.HARD_STATE, 3),
        (RecordType.ENTRIES, 4),
    ]
    assert decode_entries(recs[0][2]) == (1, mixed)
    assert decode_entries(recs[2][2]) == (1, [Entry(5, 1, 1, b"x" * 300)])
    assert decode_entries(recs[4][2]) == (1, [Entry(1, i, 0, b"%d" % i) for i in range(1, 21)])
    log = SegmentedLog(FileStorageOptions(base_dir=tmp_path, min_free_disk_space=0))
    assert log.hard_state(1) == HardState(3, "n\u00f1", 2) and log.hard_state(3) == HardState(4, None, 0)
    assert [log.term(1, i) for i in range(4)] == [0, 2, 2, 3]
    log.close()


def test_validation_helpers_reject_look_alikes():
    ok = [Entry(1, 5, 0, b"a"), Entry(1, 6, 0, b"b")]
    assert check_entries(1, ok, 0, 0, 4, 1, None)[0] == 5
    for bad in (
        [Entry(1, 5, 0, b"a"), Entry(1.0, 6, 0, b"b")],  # 1.0 == 1
        [Entry(1, 5, 0, b"a"), Entry(1, 6.0, 0, b"b")],
        [Entry(1, 5, _Kind.NORMAL, b"a"), Entry(1, 6, 0, b"b")],
        [Entry(1, 5, 0, b"a"), Entry(1, 6, 0, memoryview(b"b"))],
    ):
        with pytest.raises(InvalidWriteError):
            check_entries(1, bad, 0, 0, 4, 1, None)
    check_hard_state(1, HardState(1, "x" * 0xFFFE, 0))
    check_hard_state(1, HardState(1, "\u00e9" * 0x7FFF, 0))
    for bad in (
        HardState(1, "x" * 0xFFFF, 0),
        HardState(1, "\u00e9" * 0x8000, 0),
        HardState(1, "\ud800", 0),  # a lone surrogate: no UTF-8
        HardState(True),
        HardState(1, b"n1", 0),
        (1, None, 0),
    ):
        with pytest.raises(InvalidWriteError):
            check_hard_state(1, bad)


def test_inline_encoder_writes_the_general_encoders_bytes(tmp_path):
    """Byte for byte: the inline encoding of the common GroupWrite and records.put_entries/put_record."""
    from storage.batch import EMPTY_GROUP, plan_group_write

    rng = random.Random(4)
    log = SegmentedLog(FileStorageOptions(base_dir=tmp_path, min_free_disk_space=0, sync_on_write=False))
    last = dict.fromkeys(GROUPS, 0)
    term = dict.fromkeys(GROUPS, 1)
    for step in range(300):
        g = rng.choice(GROUPS)
        kw = {}
        if rng.random() < 0.8:
            first = last[g] + 1 if rng.random() < 0.8 or not last[g] else rng.randint(1, last[g])
            n = rng.choice([1, 1, 2, 7, 16, 200])
            ents = []
            for k in range(n):
                term[g] += rng.random() < 0.1
                data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 5, 16, 300, 5000])))
                data = data if rng.random() < 0.9 else bytearray(data)
                ents.append(Entry(term[g], first + k, rng.choice([0, 0, 1, 255]), data))
            kw["entries"] = ents
            last[g] = first + n - 1
        if not kw or rng.random() < 0.5:
            kw["hard_state"] = HardState(term[g], rng.choice([None, "n1", "\u00f1", ""]), rng.randint(0, 2**40))
        gw = GroupWrite(g, **kw)
        durable = rng.randint(0, 2**40)
        inline: list = []
        # (far into a write, large entries go out as pieces of their own)
        log._encode_batch([gw], durable, inline, [], [], rng.choice([0, 2 << 20]))
        general: list = []
        log._encode_ops(g, plan_group_write(gw, log._groups.get(g, EMPTY_GROUP)), durable, general, [], 0)
        assert b"".join(inline) == b"".join(general), (step, gw)
        log.write([gw])
    log.check_invariants()
    log.close()
