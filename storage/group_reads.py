"""The per-group read accessors both log engines share.

SegmentedLog and MemoryStorage keep different things behind a group (disk
locations, or plain entries), but answer these questions the same way from
the same per-group state: base index and term, last index, hard state, conf
state. An engine provides `_lock`, `_check_open()` and `_group_states()`.
"""

from __future__ import annotations

import threading

from multiraft.raft.types import ConfState, HardState

from .batch import EMPTY_GROUP
from .errors import LogCompactedError, LogUnavailableError


class GroupReads:
    _lock: threading.Lock | threading.RLock  # provided by the engine

    def _group_states(self) -> dict:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    def _check_open(self) -> None:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    def _group(self, group: int):
        return self._group_states().get(group, EMPTY_GROUP)

    def term(self, group: int, index: int) -> int:
        """The term of entry `index` (the base index answers with the base term)."""
        with self._lock:
            self._check_open()
            st = self._group_states().get(group)
            if st is None:
                if index == 0:
                    return 0
                if index < 0:
                    raise LogCompactedError(group, index, 1)
                raise LogUnavailableError(group, index, 0)
            return st.term(index)

    def first_index(self, group: int) -> int:
        """The first index that entries() can return (base index + 1)."""
        with self._lock:
            self._check_open()
            return self._group(group).base_index + 1

    def last_index(self, group: int) -> int:
        with self._lock:
            self._check_open()
            return self._group(group).last_index

    def last_term(self, group: int) -> int:
        with self._lock:
            self._check_open()
            st = self._group(group)
            return st.term(st.last_index)

    def compacted_to(self, group: int) -> tuple[int, int]:
        """(index, term) of the log's base: what the last compaction kept."""
        with self._lock:
            self._check_open()
            st = self._group(group)
            return (st.base_index, st.base_term)

    def hard_state(self, group: int) -> HardState | None:
        with self._lock:
            self._check_open()
            st = self._group_states().get(group)
            return None if st is None else st.hs

    def conf_state(self, group: int) -> ConfState | None:
        with self._lock:
            self._check_open()
            st = self._group_states().get(group)
            return None if st is None else st.cs

    def groups(self) -> list[int]:
        """Groups with any state in the log."""
        with self._lock:
            self._check_open()
            return sorted(self._group_states())
