"""Model-based tests: SegmentedLog and MemoryStorage against a dict model.

Random appends (with implied truncation), explicit truncations, compactions
(matching and mismatching terms), hard states, configs, removals, multi-group
batches and reopens, on tiny segments so that rotation, segment deletion and
the rewrite of lagging groups happen all the time.
"""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from multiraft.raft.types import ConfState, Entry, HardState
from storage import FileStorageOptions, GroupWrite, MemoryStorage, SegmentedLog

GROUPS = st.integers(0, 3)


class Model:
    def __init__(self) -> None:
        self.groups: dict[int, dict] = {}

    def g(self, group: int) -> dict:
        return self.groups.get(group) or {"base": (0, 0), "entries": [], "hs": None, "cs": None}

    def last(self, group: int) -> int:
        g = self.g(group)
        return g["base"][0] + len(g["entries"])

    def term(self, group: int, i: int) -> int:
        g = self.g(group)
        if i == g["base"][0]:
            return g["base"][1]
        return g["entries"][i - g["base"][0] - 1].term

    def apply(self, gw: GroupWrite) -> None:
        if gw.remove:
            self.groups.pop(gw.group, None)
        g = self.groups.setdefault(gw.group, self.g(gw.group))
        if gw.compact_to is not None:
            i, t = gw.compact_to
            base = g["base"][0]
            if i > base:
                last = base + len(g["entries"])
                if i <= last and self.term(gw.group, i) == t:
                    g["entries"] = g["entries"][i - base :]
                else:
                    g["entries"] = []
                g["base"] = (i, t)
        if gw.truncate_from is not None:
            g["entries"] = g["entries"][: gw.truncate_from - g["base"][0] - 1]
        if gw.entries:
            first = gw.entries[0].index
            g["entries"] = g["entries"][: first - g["base"][0] - 1] + list(gw.entries)
        if gw.conf_state is not None:
            g["cs"] = gw.conf_state
        if gw.hard_state is not None:
            g["hs"] = gw.hard_state


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.counter = 0
        self.store = self.open()

    # engine hooks
    def open(self):
        raise NotImplementedError

    def reopen(self) -> None:
        raise NotImplementedError

    def write(self, batch) -> None:
        self.store.write(batch)
        for gw in batch:
            self.model.apply(gw)

    def make_entries(self, group: int, first: int, n: int, bump: int, size: int) -> list[Entry]:
        prev = self.model.term(group, first - 1)
        out = []
        for k in range(n):
            self.counter += 1
            out.append(Entry(prev + bump + (k // 3), first + k, k % 2, b"%d:" % self.counter + b"d" * size))
        return out

    def append_write(self, group, data) -> GroupWrite:
        g = self.model.g(group)
        base, last = g["base"][0], self.model.last(group)
        first = data.draw(st.integers(base + 1, last + 1))
        n = data.draw(st.integers(1, 6))
        bump = data.draw(st.integers(0, 1))
        size = data.draw(st.sampled_from([0, 5, 40, 300]))
        return GroupWrite(group, entries=self.make_entries(group, first, n, bump, size))

    @rule(groups=st.sets(GROUPS, min_size=1, max_size=3), data=st.data())
    def append(self, groups, data):
        self.write([self.append_write(g, data) for g in sorted(groups)])

    @rule(group=GROUPS, data=st.data())
    def truncate(self, group, data):
        base, last = self.model.g(group)["base"][0], self.model.last(group)
        i = data.draw(st.integers(base + 1, last + 2))
        self.write([GroupWrite(group, truncate_from=i)])

    @rule(group=GROUPS, data=st.data(), matching=st.booleans())
    def compact(self, group, data, matching):
        base, last = self.model.g(group)["base"][0], self.model.last(group)
        i = data.draw(st.integers(max(0, base - 1), last + 3))
        if matching and base <= i <= last:
            t = self.model.term(group, i)
        else:
            t = data.draw(st.integers(0, 9))
        gw = GroupWrite(group, compact_to=(i, t))
        if data.draw(st.booleans()):
            # compaction and an append in one GroupWrite (a snapshot, then entries)
            self.model.apply(GroupWrite(group, compact_to=(i, t)))
            extra = self.append_write(group, data)
            self.model.apply(extra)
            self.store.write([GroupWrite(group, compact_to=(i, t), entries=extra.entries)])
        else:
            self.write([gw])

    @rule(
        group=GROUPS, term=st.integers(0, 20), vote=st.sampled_from([None, "n1", "n2", "ñ"]), commit=st.integers(0, 50)
    )
    def hard_state(self, group, term, vote, commit):
        self.write([GroupWrite(group, hard_state=HardState(term, vote, commit))])

    @rule(group=GROUPS, voters=st.frozensets(st.sampled_from(["a", "b", "c", "d"])))
    def conf_state(self, group, voters):
        self.write([GroupWrite(group, conf_state=ConfState(voters=voters))])

    @rule(group=GROUPS)
    def remove(self, group):
        self.write([GroupWrite(group, remove=True)])

    @rule()
    def restart(self):
        self.reopen()

    @invariant()
    def matches_model(self):
        s = self.store
        s.check_invariants()
        # A group with nothing stored may or may not be listed; one with state must be.
        empty = {"base": (0, 0), "entries": [], "hs": None, "cs": None}
        assert set(s.groups()) >= {g for g, v in self.model.groups.items() if v != empty}
        for group in range(4):
            g = self.model.g(group)
            base, last = g["base"][0], self.model.last(group)
            assert s.compacted_to(group) == g["base"]
            assert (s.first_index(group), s.last_index(group)) == (base + 1, last)
            assert s.entries(group, base + 1, last + 1) == g["entries"]
            assert s.hard_state(group) == g["hs"]
            assert s.conf_state(group) == g["cs"]
            if last > base:
                assert s.term(group, last) == g["entries"][-1].term
            assert s.term(group, base) == g["base"][1]

    def teardown(self):
        self.store.close()


class SegmentedLogMachine(LogMachine):
    def open(self):
        self.dir = tempfile.mkdtemp(prefix="storage-model-")
        self.options = FileStorageOptions(
            base_dir=self.dir,
            max_segment_size=700,
            rewrite_after_segments=2,
            cache_entries_size=3,
            min_free_disk_space=0,
        )
        return SegmentedLog(self.options)

    def reopen(self):
        self.store.close()
        self.store = SegmentedLog(self.options)

    def teardown(self):
        super().teardown()
        shutil.rmtree(self.dir, ignore_errors=True)


class MemoryMachine(LogMachine):
    def open(self):
        return MemoryStorage(seed=1)

    def reopen(self):
        self.store.crash()  # everything was synced: nothing may be lost


SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestSegmentedLogModel = SegmentedLogMachine.TestCase
TestSegmentedLogModel.settings = SETTINGS
TestMemoryModel = MemoryMachine.TestCase
TestMemoryModel.settings = SETTINGS
