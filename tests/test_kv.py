"""The KV state machine: semantics, exactly-once sessions, determinism,
malformed input, snapshots."""

from __future__ import annotations

import ast
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import multiraft.kv as kv_module
import multiraft.statemachine as sm_module
from multiraft.kv import (
    KEY_SIZE_BYTES_MAX,
    VALUE_SIZE_BYTES_MAX,
    ApplyOrderError,
    Cas,
    CasResult,
    CommandDecodeError,
    Count,
    CountResult,
    Delete,
    DeleteResult,
    Get,
    GetResult,
    Incr,
    IncrResult,
    InvalidCommand,
    KVCommandError,
    KVStateMachine,
    Noop,
    Put,
    PutIf,
    PutIfResult,
    PutResult,
    Register,
    Registered,
    Scan,
    ScanResult,
    SessionExpired,
    SnapshotFormatError,
    StaleRequest,
    decode_command,
    encode_command,
)
from multiraft.statemachine import StateMachine, StreamingStateMachine

# --- helpers ----------------------------------------------------------------


class Replica:
    """A KVStateMachine fed commands at consecutive indexes."""

    def __init__(self, **kwargs) -> None:
        self.sm = KVStateMachine(**kwargs)

    def run(self, *commands) -> list[object]:
        results = []
        for cmd in commands:
            data = cmd if isinstance(cmd, bytes) else encode_command(cmd)
            results.append(self.sm.apply(self.sm.applied_index + 1, data))
        self.sm.check_invariants()
        return results

    def do(self, cmd) -> object:
        return self.run(cmd)[0]

    def register(self) -> int:
        result = self.do(Register())
        assert type(result) is Registered
        return result.client_id


def state_without_index(sm: KVStateMachine):
    """Everything but applied_index: what a no-op entry must leave alone."""
    return (sm.scan(), list(sm._sessions.items()))


# --- strategies ---------------------------------------------------------------

KEYS = st.sampled_from([b"", b"a", b"ab", b"b", b"k\x00", b"\xff"])
VALUES = st.binary(max_size=6)
OPT_VALUES = st.none() | VALUES
CLIENTS = st.integers(0, 5)
SEQS = st.integers(0, 6)


COMMANDS = st.one_of(
    st.builds(Put, KEYS, VALUES, CLIENTS, SEQS),
    st.builds(Delete, KEYS, CLIENTS, SEQS),
    st.builds(Cas, KEYS, OPT_VALUES, OPT_VALUES, CLIENTS, SEQS),
    st.builds(Get, KEYS),
    st.just(Noop()),
    st.just(Register()),
    st.just(Register()),
)
# What the log may carry: valid commands, empty entries, and garbage.
ENTRIES = st.one_of(
    COMMANDS.map(encode_command),
    COMMANDS.map(encode_command),
    COMMANDS.map(encode_command),
    st.just(b""),
    st.binary(max_size=30),
)
ENTRY_LISTS = st.lists(ENTRIES, max_size=60)


# --- the reference model -----------------------------------------------------


class Model:
    """The documented semantics, written as plainly as possible."""

    def __init__(self, sessions_max: int) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sessions: dict[int, tuple[int, int, object]] = {}
        self.sessions_max = sessions_max

    def apply(self, index: int, entry: bytes) -> object:
        if not entry:
            return None
        try:
            cmd = decode_command(entry)
        except CommandDecodeError:
            return "invalid"
        if isinstance(cmd, Noop):
            return None
        if isinstance(cmd, Get):
            return GetResult(self.data.get(cmd.key))
        if isinstance(cmd, Register):
            if self.sessions_max:
                if len(self.sessions) >= self.sessions_max:
                    oldest = min(self.sessions, key=lambda c: self.sessions[c][1])
                    del self.sessions[oldest]
                self.sessions[index] = (0, index, None)
            return Registered(index)
        session = self.sessions.get(cmd.client_id) if cmd.client_id else None
        if cmd.client_id:
            if session is None:
                return SessionExpired(cmd.client_id, cmd.seq)
            if cmd.seq == session[0] and session[0] > 0:
                if isinstance(cmd, Cas) and session[2].ok:
                    return CasResult(True, cmd.new)
                return session[2]
            if cmd.seq <= session[0]:
                return StaleRequest(cmd.client_id, cmd.seq, session[0])
        if isinstance(cmd, Put):
            result = PutResult(cmd.key in self.data)
            self.data[cmd.key] = cmd.value
        elif isinstance(cmd, Delete):
            result = DeleteResult(self.data.pop(cmd.key, None) is not None)
        else:
            current = self.data.get(cmd.key)
            if current == cmd.expected:
                if cmd.new is None:
                    self.data.pop(cmd.key, None)
                else:
                    self.data[cmd.key] = cmd.new
                result = CasResult(True, cmd.new)
            else:
                result = CasResult(False, current)
        if cmd.client_id:
            cached = CasResult(True, None) if isinstance(result, CasResult) and result.ok else result
            self.sessions[cmd.client_id] = (cmd.seq, index, cached)
        return result


# --- the protocol and layering -------------------------------------------------


def test_kv_state_machine_satisfies_the_streaming_state_machine_protocol():
    sm = KVStateMachine()
    assert isinstance(sm, StateMachine)
    assert isinstance(sm, StreamingStateMachine)


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not used"
            names.add(node.module)
    return names


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


def test_kv_imports_only_stdlib_attrs_and_the_core():
    for name in _imported_modules(Path(kv_module.__file__)):
        assert (
            _is_stdlib(name)
            or name == "attrs"
            or name == "multiraft.statemachine"
            or name == "multiraft.raft"
            or name.startswith("multiraft.raft.")
        ), name


def test_statemachine_protocol_imports_only_stdlib():
    for name in _imported_modules(Path(sm_module.__file__)):
        assert _is_stdlib(name), name


# --- command codec -------------------------------------------------------------


@given(COMMANDS)
def test_every_command_survives_an_encode_decode_round_trip(cmd):
    assert decode_command(encode_command(cmd)) == cmd


def test_command_encoding_is_pinned():
    # The log on disk holds these bytes: the format must not drift.
    assert encode_command(Noop()) == b"\x02\x00"
    assert encode_command(Register()) == b"\x02\x09"
    assert encode_command(Get(b"k")) == b"\x02\x04\x00\x00\x00\x01k"
    assert encode_command(Put(b"k", b"vv", 7, 9)) == (
        b"\x02\x01" + struct.pack(">QQ", 7, 9) + b"\x00\x00\x00\x01k\x00\x00\x00\x02vv"
    )
    assert encode_command(Delete(b"k", 1, 2)) == (
        b"\x02\x02" + struct.pack(">QQ", 1, 2) + b"\x00\x00\x00\x01k"
    )
    assert encode_command(Cas(b"k", None, b"n", 1, 2)) == (
        b"\x02\x03" + struct.pack(">QQ", 1, 2) + b"\x00\x00\x00\x01k" + b"\x00"
        b"\x01\x00\x00\x00\x01n"
    )


def test_a_version_1_write_decodes_without_its_session_and_applies_once():
    # Written before registered sessions: its client id was the client's own.
    v1 = b"\x01" + encode_command(Put(b"k", b"v", 7, 9))[1:]
    assert decode_command(v1) == Put(b"k", b"v")
    r = Replica()
    assert r.do(v1) == PutResult(False) and r.sm.get(b"k") == b"v"
    assert isinstance(r.do(b"\x01\x09"), InvalidCommand)  # no Register in version 1


@pytest.mark.parametrize(
    "cmd",
    [
        Put("text", b"v"),
        Put(b"k", "text"),
        Put(b"k", b"v", -1, 0),
        Put(b"k", b"v", 0, 1 << 64),
        Put(b"k", b"v", 1.0, 1),
        Cas(b"k", "x", None),
        Get(None),
        "not a command",
        Scan(),
    ],
)
def test_encoding_a_malformed_command_raises_kv_command_error(cmd):
    with pytest.raises(KVCommandError):
        encode_command(cmd)


def test_oversized_key_or_value_is_refused_at_encode_time():
    with pytest.raises(KVCommandError, match="key"):
        encode_command(Put(b"k" * (KEY_SIZE_BYTES_MAX + 1), b""))
    with pytest.raises(KVCommandError, match="value"):
        encode_command(Put(b"k", b"v" * (VALUE_SIZE_BYTES_MAX + 1)))
    with pytest.raises(KVCommandError, match="new value"):
        encode_command(Cas(b"k", None, b"v" * 11), value_size_bytes_max=10)
    # At the limit is fine.
    encode_command(Put(b"k" * KEY_SIZE_BYTES_MAX, b"v" * VALUE_SIZE_BYTES_MAX))


def test_decode_errors_are_kv_command_errors():
    assert issubclass(CommandDecodeError, KVCommandError)
    with pytest.raises(CommandDecodeError):
        decode_command(b"\x01\x09")


# --- basic semantics ---------------------------------------------------------------


def test_put_reports_whether_the_key_existed_and_stores_the_value():
    r = Replica()
    assert r.run(Put(b"k", b"1"), Put(b"k", b"2")) == [PutResult(False), PutResult(True)]
    assert r.sm.get(b"k") == b"2"


def test_delete_reports_whether_the_key_existed_and_removes_it():
    r = Replica()
    assert r.run(Delete(b"k"), Put(b"k", b"1"), Delete(b"k")) == [
        DeleteResult(False),
        PutResult(False),
        DeleteResult(True),
    ]
    assert r.sm.get(b"k") is None and len(r.sm) == 0


def test_get_through_the_log_returns_the_value_or_none_and_changes_nothing():
    r = Replica()
    r.do(Put(b"k", b"v"))
    before = state_without_index(r.sm)
    assert r.run(Get(b"k"), Get(b"x")) == [GetResult(b"v"), GetResult(None)]
    assert state_without_index(r.sm) == before


def test_noop_and_empty_entries_only_advance_the_applied_index():
    r = Replica()
    r.do(Put(b"k", b"v", 1, 1))
    before = state_without_index(r.sm)
    assert r.run(Noop(), b"") == [None, None]
    assert r.sm.applied_index == 3
    assert state_without_index(r.sm) == before


def test_applying_an_index_not_above_the_applied_index_raises_apply_order_error():
    sm = KVStateMachine()
    sm.apply(5, encode_command(Put(b"k", b"v")))
    for index in (5, 4, 0):
        with pytest.raises(ApplyOrderError):
            sm.apply(index, encode_command(Put(b"k", b"w")))
    assert sm.get(b"k") == b"v" and sm.applied_index == 5
    # Gaps are allowed (entries the state machine never sees, such as conf changes).
    sm.apply(9, b"")
    assert sm.applied_index == 9


# --- compare-and-set -------------------------------------------------------------


def test_cas_expecting_absent_creates_an_absent_key():
    r = Replica()
    assert r.do(Cas(b"k", None, b"v")) == CasResult(True, b"v")
    assert r.sm.get(b"k") == b"v"


def test_cas_expecting_absent_fails_on_a_present_key_and_reports_its_value():
    r = Replica()
    r.do(Put(b"k", b"v"))
    assert r.do(Cas(b"k", None, b"w")) == CasResult(False, b"v")
    assert r.sm.get(b"k") == b"v"


def test_cas_expecting_a_value_fails_on_an_absent_key_and_reports_none():
    r = Replica()
    assert r.do(Cas(b"k", b"v", b"w")) == CasResult(False, None)
    assert r.sm.get(b"k") is None and len(r.sm) == 0


def test_cas_with_matching_value_sets_the_new_value():
    r = Replica()
    r.do(Put(b"k", b"v"))
    assert r.do(Cas(b"k", b"v", b"w")) == CasResult(True, b"w")
    assert r.sm.get(b"k") == b"w"


def test_cas_with_mismatching_value_changes_nothing_and_reports_the_current_value():
    r = Replica()
    r.do(Put(b"k", b"v"))
    assert r.do(Cas(b"k", b"x", b"w")) == CasResult(False, b"v")
    assert r.sm.get(b"k") == b"v"


def test_cas_with_new_none_deletes_the_key():
    r = Replica()
    r.do(Put(b"k", b"v"))
    assert r.do(Cas(b"k", b"v", None)) == CasResult(True, None)
    assert r.sm.get(b"k") is None and len(r.sm) == 0


def test_cas_from_absent_to_absent_succeeds_and_changes_nothing():
    r = Replica()
    assert r.do(Cas(b"k", None, None)) == CasResult(True, None)
    assert len(r.sm) == 0


def test_cas_distinguishes_an_empty_value_from_an_absent_key():
    r = Replica()
    assert r.do(Cas(b"k", b"", b"x")) == CasResult(False, None)
    r.do(Put(b"k", b""))
    assert r.do(Cas(b"k", None, b"x")) == CasResult(False, b"")
    assert r.do(Cas(b"k", b"", b"x")) == CasResult(True, b"x")


# --- exactly-once sessions --------------------------------------------------------


def test_register_opens_a_session_whose_id_is_the_entrys_log_index():
    r = Replica()
    r.do(Put(b"k", b"1"))
    assert r.do(Register()) == Registered(2)
    assert r.do(Put(b"k", b"2", client_id=2, seq=1)) == PutResult(True)


def test_retried_put_with_same_seq_applies_once():
    r = Replica()
    a, b = r.register(), r.register()
    first = r.do(Put(b"k", b"1", client_id=a, seq=1))
    r.do(Put(b"k", b"other", client_id=b, seq=1))
    retry = r.do(Put(b"k", b"1", client_id=a, seq=1))
    assert first == retry == PutResult(False)
    assert r.sm.get(b"k") == b"other"  # the retry did not overwrite


def test_retried_cas_returns_the_cached_result_although_the_state_changed():
    r = Replica()
    a = r.register()
    first = r.do(Cas(b"k", None, b"mine", client_id=a, seq=3))
    r.do(Delete(b"k"))
    # Re-executing would succeed again and recreate the key; the retry must not.
    assert r.do(Cas(b"k", None, b"mine", client_id=a, seq=3)) == first == CasResult(True, b"mine")
    assert r.sm.get(b"k") is None


def test_retried_delete_with_same_seq_applies_once():
    r = Replica()
    a = r.register()
    r.do(Put(b"k", b"v"))
    assert r.do(Delete(b"k", client_id=a, seq=1)) == DeleteResult(True)
    r.do(Put(b"k", b"again"))
    assert r.do(Delete(b"k", client_id=a, seq=1)) == DeleteResult(True)
    assert r.sm.get(b"k") == b"again"


def test_stale_seq_returns_stale_request_and_never_applies():
    r = Replica()
    a = r.register()
    r.run(Put(b"k", b"1", client_id=a, seq=5))
    before = state_without_index(r.sm)
    assert r.do(Put(b"k", b"old", client_id=a, seq=4)) == StaleRequest(a, 4, 5)
    assert r.do(Delete(b"k", client_id=a, seq=0)) == StaleRequest(a, 0, 5)
    assert state_without_index(r.sm) == before  # session unchanged too
    # The latest seq is still answered from the cache.
    assert r.do(Put(b"k", b"1", client_id=a, seq=5)) == PutResult(False)


def test_seq_zero_of_a_fresh_session_is_stale_not_applied():
    r = Replica()
    a = r.register()
    assert r.do(Put(b"k", b"1", client_id=a, seq=0)) == StaleRequest(a, 0, 0)
    assert r.sm.get(b"k") is None


def test_a_higher_seq_applies_and_becomes_the_sessions_last_seq():
    r = Replica()
    a = r.register()
    r.do(Put(b"k", b"1", client_id=a, seq=1))
    assert r.do(Put(b"k", b"2", client_id=a, seq=9)) == PutResult(True)
    assert r.sm.get(b"k") == b"2"
    assert r.do(Put(b"k", b"x", client_id=a, seq=8)) == StaleRequest(a, 8, 9)


def test_client_id_zero_has_no_session_and_always_applies():
    r = Replica()
    assert r.run(Put(b"k", b"1", 0, 1), Put(b"k", b"2", 0, 1), Put(b"k", b"3", 0, 0)) == [
        PutResult(False),
        PutResult(True),
        PutResult(True),
    ]
    assert r.sm.get(b"k") == b"3" and r.sm.session_count == 0


def test_reads_through_the_log_do_not_touch_sessions():
    r = Replica()
    a = r.register()
    r.do(Put(b"k", b"1", client_id=a, seq=1))
    sessions = list(r.sm._sessions.items())
    r.do(Get(b"k"))
    assert list(r.sm._sessions.items()) == sessions


def test_a_write_under_a_session_never_registered_is_refused_not_applied():
    r = Replica()
    assert r.do(Put(b"k", b"1", client_id=7, seq=1)) == SessionExpired(7, 1)
    assert r.sm.get(b"k") is None and r.sm.session_count == 0


def test_sessions_are_bounded_and_register_evicts_the_oldest_last_applied_index():
    r = Replica(sessions_max=3)
    a, b, c = r.register(), r.register(), r.register()
    r.run(
        Put(b"a", b"", client_id=a, seq=1),  # a is now the newest
        Put(b"c", b"", client_id=c, seq=1),
    )
    d = r.register()  # evicts b, the oldest
    assert r.sm.session_count == 3
    assert list(r.sm._sessions) == [a, c, d]
    assert r.do(Put(b"b", b"", client_id=b, seq=1)) == SessionExpired(b, 1)
    assert r.sm.get(b"b") is None


def test_a_retried_incr_after_its_session_was_evicted_is_refused_not_applied_twice():
    # The bug of issue 9: an evicted client's retry used to apply as new.
    r = Replica(sessions_max=1)
    a = r.register()
    assert r.do(Incr(b"n", 1, client_id=a, seq=1)) == IncrResult(1)
    r.register()  # another client's session evicts a's
    assert r.do(Incr(b"n", 1, client_id=a, seq=1)) == SessionExpired(a, 1)
    assert r.sm.get(b"n") == b"1"


def test_a_delayed_duplicate_after_eviction_never_overwrites_a_newer_write():
    r = Replica(sessions_max=2)
    a = r.register()
    old = encode_command(Put(b"k", b"old", client_id=a, seq=1))
    r.do(old)
    r.do(Put(b"k", b"new", client_id=a, seq=2))  # acknowledged
    r.register()
    r.register()  # a is evicted
    assert r.do(old) == SessionExpired(a, 1)  # the network delivers the old one again
    assert r.sm.get(b"k") == b"new"


def test_a_duplicate_register_opens_another_empty_session_and_changes_nothing_else():
    r = Replica()
    a = r.register()
    r.do(Incr(b"n", 5, client_id=a, seq=1))
    before = (r.sm.scan(), r.sm._sessions[a])
    b = r.register()  # the same Register, delivered twice
    assert b != a and r.sm._sessions[b] == (0, b, None)
    assert (r.sm.scan(), r.sm._sessions[a]) == before
    assert r.do(Incr(b"n", 5, client_id=a, seq=1)) == IncrResult(5)  # still exactly once
    assert r.do(Incr(b"n", 1, client_id=b, seq=1)) == IncrResult(6)


def test_a_pool_of_sessions_with_writes_in_flight_each_apply_once():
    r = Replica(sessions_max=4)
    pool = [r.register() for _ in range(3)]
    writes = [encode_command(Incr(b"n", 1, client_id=c, seq=1)) for c in pool]
    # Every write arrives twice, interleaved (retries after lost answers).
    results = r.run(*writes, *reversed(writes))
    assert r.sm.get(b"n") == b"3"
    assert sorted(x.value for x in results[:3]) == [1, 2, 3]
    assert results[3:] == list(reversed(results[:3]))


def test_sessions_max_zero_keeps_no_sessions_and_refuses_session_writes():
    r = Replica(sessions_max=0)
    a = r.register()
    assert r.do(Put(b"k", b"1", a, 1)) == SessionExpired(a, 1)
    assert r.sm.session_count == 0 and r.sm.get(b"k") is None


def test_a_successful_cas_caches_no_value_and_its_retry_answers_from_the_command():
    r = Replica()
    a = r.register()
    big = b"v" * 1000
    assert r.do(Cas(b"k", None, big, client_id=a, seq=1)) == CasResult(True, big)
    assert r.sm._sessions[a][2] == CasResult(True, None)
    assert r.sm._session_value_bytes == 0
    assert r.do(Cas(b"k", None, big, client_id=a, seq=1)) == CasResult(True, big)


def test_cached_values_are_bounded_by_session_values_bytes_max_evicting_the_oldest():
    r = Replica(session_values_bytes_max=25, value_size_bytes_max=10)
    a, b, c = r.register(), r.register(), r.register()
    r.do(Put(b"k", b"x" * 10))
    for client in (a, b):  # a failed CAS keeps the value it found: 10 bytes each
        assert r.do(Cas(b"k", b"nope", b"y", client_id=client, seq=1)) == CasResult(False, b"x" * 10)
    assert r.sm._session_value_bytes == 20
    assert r.do(PutIf(b"k", b"z", client_id=c, seq=1)) == PutIfResult(True, b"x" * 10)
    # 30 bytes > 25: the oldest, a, went; b and c keep exact answers.
    assert list(r.sm._sessions) == [b, c] and r.sm._session_value_bytes == 20
    assert r.do(Cas(b"k", b"nope", b"y", client_id=b, seq=1)) == CasResult(False, b"x" * 10)
    assert r.do(Cas(b"k", b"nope", b"y", client_id=a, seq=1)) == SessionExpired(a, 1)


def test_session_values_bytes_max_must_hold_one_value():
    with pytest.raises(ValueError, match="session_values_bytes_max"):
        KVStateMachine(session_values_bytes_max=5, value_size_bytes_max=10)


@settings(max_examples=60)
@given(ENTRY_LISTS, st.integers(1, 4))
def test_session_eviction_is_deterministic_across_replicas(entries, sessions_max):
    a, b = Replica(sessions_max=sessions_max), Replica(sessions_max=sessions_max)
    assert a.run(*entries) == b.run(*entries)
    assert a.sm.snapshot() == b.sm.snapshot()
    assert a.sm.session_count <= sessions_max


@settings(max_examples=150)
@given(ENTRY_LISTS, st.integers(1, 4))
def test_kv_matches_the_reference_model(entries, sessions_max):
    r = Replica(sessions_max=sessions_max)
    model = Model(sessions_max)
    for index, entry in enumerate(entries, start=1):
        got = r.sm.apply(index, entry)
        expected = model.apply(index, entry)
        if expected == "invalid":
            assert isinstance(got, InvalidCommand)
        else:
            assert got == expected
    r.sm.check_invariants()
    assert dict(r.sm.scan()) == model.data
    assert {c: s for c, s in r.sm._sessions.items()} == model.sessions


# --- malformed commands ------------------------------------------------------------

_PUT = encode_command(Put(b"k", b"v", 1, 1))
_CAS = encode_command(Cas(b"k", b"a", b"b", 1, 1))

MALFORMED = {
    "one byte": b"\x01",
    "bad version": b"\x03" + _PUT[1:],
    "version zero": b"\x00\x00",
    "unknown op": b"\x01\x63",
    "noop with trailing": b"\x01\x00\x00",
    "put truncated in header": _PUT[:10],
    "put truncated in key": _PUT[:19],
    "put truncated in value": _PUT[:-1],
    "put trailing": _PUT + b"\x00",
    "key length huge": _PUT[:18] + b"\xff\xff\xff\xff",
    "cas bad presence flag": _CAS[:23] + b"\x02" + _CAS[24:],
    "cas missing new": _CAS[: len(_CAS) - 6],
    "get trailing": encode_command(Get(b"k")) + b"x",
    "oversized value": encode_command(
        Put(b"k", b"v" * (VALUE_SIZE_BYTES_MAX + 1)),
        value_size_bytes_max=VALUE_SIZE_BYTES_MAX + 1,
    ),
    "oversized key": encode_command(
        Get(b"k" * (KEY_SIZE_BYTES_MAX + 1)), key_size_bytes_max=KEY_SIZE_BYTES_MAX + 1
    ),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bytes_apply_as_invalid_command_without_state_change(data):
    r = Replica()
    r.run(Put(b"k", b"v", 1, 1), Put(b"j", b"w"))
    before = state_without_index(r.sm)
    result = r.do(data)
    assert isinstance(result, InvalidCommand) and result.reason
    assert state_without_index(r.sm) == before
    assert r.sm.applied_index == 3  # the entry is consumed all the same
    # Deterministic: another replica gives the very same result.
    other = Replica()
    other.run(Put(b"k", b"v", 1, 1), Put(b"j", b"w"))
    assert other.do(data) == result


def test_a_non_bytes_entry_applies_as_invalid_command():
    sm = KVStateMachine()
    assert isinstance(sm.apply(1, 12345), InvalidCommand)  # type: ignore[arg-type]


def test_an_oversized_command_that_slipped_past_encoding_applies_as_invalid_command():
    r = Replica(value_size_bytes_max=4)
    data = encode_command(Put(b"k", b"12345"))  # encoded under the default 1 MiB limit
    result = r.do(data)
    assert isinstance(result, InvalidCommand) and "value" in result.reason
    assert len(r.sm) == 0


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_arbitrary_bytes_never_crash_apply_and_replicas_agree(entries):
    a, b = Replica(), Replica()
    assert a.run(*entries) == b.run(*entries)
    assert a.sm.snapshot() == b.sm.snapshot()


# --- reads outside the log -------------------------------------------------------------


def test_read_answers_get_scan_and_count_without_changing_state():
    r = Replica()
    r.run(Put(b"a", b"1"), Put(b"b", b"2"), Put(b"c", b"3"))
    snap = r.sm.snapshot()
    assert r.sm.read(Get(b"b")) == GetResult(b"2")
    assert r.sm.read(Get(b"z")) == GetResult(None)
    assert r.sm.read(encode_command(Get(b"a"))) == GetResult(b"1")
    assert r.sm.read(Scan(start=b"b")) == ScanResult(((b"b", b"2"), (b"c", b"3")))
    assert r.sm.read(Count()) == CountResult(3)
    assert r.sm.snapshot() == snap


def test_read_of_bytes_that_are_not_an_encoded_get_is_invalid_command():
    sm = KVStateMachine()
    assert isinstance(sm.read(encode_command(Put(b"k", b"v"))), InvalidCommand)
    assert isinstance(sm.read(b"\xff"), InvalidCommand)
    assert len(sm) == 0


def test_read_of_a_non_query_object_raises_kv_command_error():
    with pytest.raises(KVCommandError):
        KVStateMachine().read(Put(b"k", b"v"))


# --- scan and len ---------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.booleans(), st.binary(max_size=3), st.binary(max_size=2)), max_size=40),
    st.binary(max_size=2),
    st.binary(max_size=1),
    st.none() | st.integers(0, 10),
)
def test_scan_is_sorted_and_respects_start_prefix_and_limit(ops, start, prefix, limit):
    r = Replica()
    model: dict[bytes, bytes] = {}
    for is_put, key, value in ops:
        if is_put:
            r.do(Put(key, value))
            model[key] = value
        else:
            r.do(Delete(key))
            model.pop(key, None)
        if value == b"\x00":  # interleave scans with writes now and then
            r.sm.scan()
    expected = sorted((k, v) for k, v in model.items() if k >= start and k.startswith(prefix))
    if limit is not None:
        expected = expected[:limit]
    assert r.sm.scan(start, limit, prefix=prefix) == expected
    assert len(r.sm) == len(model)
    r.sm.check_invariants()


def test_scan_pages_with_last_key_plus_zero_byte():
    r = Replica()
    r.run(*(Put(b"k%02d" % i, b"") for i in range(10)))
    seen, start = [], b""
    while page := r.sm.scan(start, 3, prefix=b"k"):
        seen += [k for k, _ in page]
        start = page[-1][0] + b"\x00"
    assert seen == [b"k%02d" % i for i in range(10)]


def test_deleting_and_recreating_a_key_keeps_scan_correct():
    r = Replica()
    r.run(Put(b"a", b"1"), Put(b"b", b"2"))
    r.sm.scan()
    r.run(Delete(b"a"), Put(b"a", b"3"), Put(b"c", b""), Delete(b"c"))
    assert r.sm.scan() == [(b"a", b"3"), (b"b", b"2")]


# --- snapshots ------------------------------------------------------------------------------


def test_snapshot_encoding_is_pinned():
    r = Replica()
    a, b, _c = r.register(), r.register(), r.register()
    r.run(Put(b"k", b"v", a, 1), Cas(b"j", None, b"w", b, 2))
    assert r.sm.snapshot() == b"".join(
        [
            b"MRKV\x02",
            struct.pack(">QI", 5, 3),  # applied index, session count
            struct.pack(">QQQ", 3, 0, 3) + b"\x00",  # registered, no write yet
            struct.pack(">QQQ", 1, 1, 4) + b"\x01\x00",  # PutResult(False)
            struct.pack(">QQQ", 2, 2, 5) + b"\x03\x01\x00",  # CasResult(True), no value
            struct.pack(">Q", 2),
            b"\x00\x00\x00\x01j\x00\x00\x00\x01w",
            b"\x00\x00\x00\x01k\x00\x00\x00\x01v",
        ]
    )


def test_a_version_1_snapshot_is_read_with_its_sessions_dropped():
    v1 = b"".join(
        [
            b"MRKV\x01",
            struct.pack(">QI", 2, 1),
            struct.pack(">QQQ", 12345, 1, 1) + b"\x01\x00",  # a random client id of old
            struct.pack(">Q", 1),
            b"\x00\x00\x00\x01k\x00\x00\x00\x01v",
        ]
    )
    sm = KVStateMachine()
    sm.restore(v1)
    sm.check_invariants()
    assert sm.scan() == [(b"k", b"v")] and sm.session_count == 0 and sm.applied_index == 2
    assert sm.apply(3, encode_command(Put(b"k", b"again", 12345, 1))) == SessionExpired(12345, 1)


def test_snapshot_round_trip_keeps_sessions_and_their_exactly_once_answers():
    r = Replica()
    a, b = r.register(), r.register()
    r.run(Incr(b"n", 1, a, 1), Cas(b"n", b"0", b"9", b, 1))
    fresh = Replica()
    fresh.sm.restore(r.sm.snapshot())
    assert fresh.do(Incr(b"n", 1, a, 1)) == IncrResult(1)  # cached, not applied again
    assert fresh.do(Cas(b"n", b"0", b"9", b, 1)) == CasResult(False, b"1")
    assert fresh.sm.get(b"n") == b"1"
    assert fresh.sm._session_value_bytes == r.sm._session_value_bytes == 1


@given(ENTRY_LISTS)
def test_snapshot_restore_round_trip_equals_original(entries):
    r = Replica(sessions_max=3)
    r.run(*entries)
    snap = r.sm.snapshot()
    fresh = KVStateMachine(sessions_max=3)
    fresh.restore(snap)
    fresh.check_invariants()
    assert fresh.snapshot() == snap
    assert fresh.applied_index == r.sm.applied_index
    assert fresh.scan() == r.sm.scan()
    assert list(fresh._sessions.items()) == list(r.sm._sessions.items())


@given(ENTRY_LISTS)
def test_two_replicas_applying_the_same_sequence_produce_identical_snapshots(entries):
    a, b = Replica(sessions_max=3), Replica(sessions_max=3)
    a.run(*entries)
    b.sm.scan()  # a different history of local reads must not matter
    b.run(*entries)
    assert a.sm.snapshot() == b.sm.snapshot()


@given(ENTRY_LISTS, ENTRY_LISTS)
def test_restore_snapshot_then_continue_equals_continuing_without_snapshot(before, after):
    straight = Replica(sessions_max=3)
    straight.run(*before)
    restored = Replica(sessions_max=3)
    restored.run(Put(b"junk", b"to be replaced", 9, 9))
    restored.sm.restore(straight.sm.snapshot())
    assert restored.run(*after) == straight.run(*after)
    assert restored.sm.snapshot() == straight.sm.snapshot()


@given(ENTRY_LISTS, st.integers(1, 50), st.data())
def test_snapshot_chunks_join_to_the_snapshot_and_restore_from_any_split(entries, size, data):
    r = Replica()
    r.run(*entries)
    snap = r.sm.snapshot()
    chunks = list(r.sm.snapshot_chunks(size))
    assert b"".join(chunks) == snap
    assert all(len(c) == size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= size
    cuts = sorted(data.draw(st.lists(st.integers(0, len(snap)), max_size=8)))
    pieces = [snap[i:j] for i, j in zip([0, *cuts], [*cuts, len(snap)], strict=True)]
    fresh = KVStateMachine()
    fresh.restore_chunks(iter(pieces))
    assert fresh.snapshot() == snap


def test_snapshot_chunks_is_an_image_taken_when_called():
    r = Replica()
    r.run(Put(b"a", b"1"), Put(b"b", b"2"))
    expected = r.sm.snapshot()
    chunks = r.sm.snapshot_chunks(4)
    first = next(chunks)
    r.run(Put(b"a", b"changed"), Delete(b"b"), Put(b"c", b"new"))
    assert first + b"".join(chunks) == expected


def test_snapshot_chunks_rejects_a_non_positive_chunk_size():
    with pytest.raises(ValueError):
        KVStateMachine().snapshot_chunks(0)


def test_restore_drops_the_oldest_sessions_beyond_sessions_max():
    big = Replica(sessions_max=10)
    ids = [big.register() for _ in range(5)]
    big.run(*(Put(b"k", b"", client_id=c, seq=1) for c in ids))
    small = KVStateMachine(sessions_max=2)
    small.restore(big.sm.snapshot())
    small.check_invariants()
    assert list(small._sessions) == ids[3:]


def _sample_snapshot() -> bytes:
    r = Replica()
    r.run(Register(), Register(), Register())
    r.run(Put(b"a", b"1", 1, 1), Cas(b"b", None, b"2", 2, 1), Delete(b"c", 3, 1))
    return r.sm.snapshot()


def _with(snap: bytes, offset: int, new: bytes) -> bytes:
    return snap[:offset] + new + snap[offset + len(new) :]


_SNAP = _sample_snapshot()
_KEYS_AT = len(_SNAP) - 8 - 2 * (4 + 1 + 4 + 1)  # offset of the key count
GARBAGE = {
    "empty": b"",
    "not a snapshot": b"hello world, this is not a snapshot",
    "bad magic": _with(_SNAP, 0, b"XXXX"),
    "bad version": _with(_SNAP, 4, b"\x03"),
    "session id above its last index": _with(_SNAP, 17, struct.pack(">Q", 5)),
    "a result with seq 0": _with(_SNAP, 25, struct.pack(">Q", 0)),
    "a successful cas with a value": _with(_SNAP, 17 + 26 + 25, b"\x01\x01\x00\x00\x00\x01"),
    "trailing byte": _SNAP + b"\x00",
    "applied index below a session": _with(_SNAP, 5, struct.pack(">Q", 1)),
    "session for client 0": _with(_SNAP, 17, struct.pack(">Q", 0)),
    "duplicate session": _with(_SNAP, 17 + 26, struct.pack(">Q", 1)),
    "bad result tag": _with(_SNAP, 17 + 24, b"\x09"),
    "bad bool": _with(_SNAP, 17 + 25, b"\x02"),
    "key count too high": _with(_SNAP, _KEYS_AT, struct.pack(">Q", 3)),
    "key count too low": _with(_SNAP, _KEYS_AT, struct.pack(">Q", 1)),
    "keys out of order": _with(_SNAP, _KEYS_AT + 8 + 4, b"c"),
    "duplicate key": _with(_SNAP, _KEYS_AT + 8 + 10 + 4, b"a"),
    "huge key length": _with(_SNAP, _KEYS_AT + 8, b"\xff\xff\xff\xff"),
}


def test_garbage_cases_start_from_a_valid_snapshot():
    KVStateMachine().restore(_SNAP)
    assert _SNAP[_KEYS_AT : _KEYS_AT + 8] == struct.pack(">Q", 2)


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_restore_of_garbage_raises_and_keeps_the_current_state(garbage):
    r = Replica()
    r.run(Put(b"x", b"keep me", 9, 4), Put(b"y", b"and me"))
    snap = r.sm.snapshot()
    with pytest.raises(SnapshotFormatError):
        r.sm.restore(garbage)
    assert r.sm.snapshot() == snap
    r.sm.check_invariants()


def test_restore_of_every_truncation_of_a_snapshot_raises_and_keeps_the_state():
    r = Replica()
    r.do(Put(b"x", b"keep me"))
    snap = r.sm.snapshot()
    for length in range(len(_SNAP)):
        with pytest.raises(SnapshotFormatError):
            r.sm.restore(_SNAP[:length])
        assert r.sm.snapshot() == snap


def test_restore_of_non_bytes_raises_snapshot_format_error():
    sm = KVStateMachine()
    with pytest.raises(SnapshotFormatError):
        sm.restore("MRKV")  # type: ignore[arg-type]
    with pytest.raises(SnapshotFormatError):
        sm.restore_chunks([_SNAP[:10], 42])  # type: ignore[list-item]
    with pytest.raises(SnapshotFormatError):
        sm.restore_chunks([_SNAP, None])  # type: ignore[list-item]
    assert sm.applied_index == 0 and len(sm) == 0


def test_restore_accepts_empty_chunks():
    sm = KVStateMachine()
    sm.restore_chunks([b"", _SNAP[:7], b"", _SNAP[7:], b""])
    assert sm.snapshot() == _SNAP


def test_large_store_snapshot_round_trips_in_chunks():
    r = Replica()
    sm = r.sm
    for i in range(1, 20_001):
        sm.apply(i, encode_command(Put(b"key%06d" % (i * 7919 % 20_000), b"v" * (i % 50))))
    fresh = KVStateMachine()
    fresh.restore_chunks(sm.snapshot_chunks(64 * 1024))
    assert fresh.snapshot() == sm.snapshot()
    assert len(fresh) == len(sm) == 20_000
