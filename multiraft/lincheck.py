"""Linearizability checker for key-value histories.

A history is a list of events (parsed JSON lines, in real-time order)::

    {"process": 3, "type": "invoke", "f": "cas", "key": "r", "value": [1, 4]}
    {"process": 3, "type": "ok",     "f": "cas", "key": "r", "value": [1, 4]}

``type`` is ``invoke`` then one of ``ok`` (took effect; for ``get`` the value
read), ``fail`` (did not take effect) or ``info`` (outcome unknown). ``f`` is
one of get / put / append / delete / cas. The format is described in full in
the README of the reference data set (``lincheck-data/README.md``); the dict
format is the contract with the deterministic simulator, which calls
:func:`check_events` with exactly what it recorded. Line order is the only
clock: an operation whose completion precedes another's invoke happened
before it.

Semantics
---------
* ``ok``: the operation took effect at some instant between its invoke line
  and its completion line.
* ``info``, or no completion at all: the operation may take effect at any
  instant after its invocation -- even after the end of the history -- or
  never (Porcupine's "return time = infinity"). Its output is unknown, so it
  constrains nothing; the search places it only where its effect helps
  explain what others observed. A get with unknown outcome is dropped.
* ``fail`` on get / put / append / delete: the operation did not take effect;
  it is dropped.
* ``fail`` on ``cas``: per the data set's README, "the compare did not match
  at the moment it was applied". So the operation *did* happen, as a read
  that observed ``current != expected`` at some instant inside its interval.
  (The other reading, "a failed cas never happened, drop it", gives the same
  verdict on all 108 reference histories, so the data does not decide; the
  README's wording does, and it is also the stronger check: a failed cas is
  evidence about the state. ``tests/test_lincheck.py`` pins the choice.)

The model, one register per key (``None`` = absent), compared with Python
``==`` on the JSON values (JSON arrays become tuples):

* ``get``        -> valid iff the value read equals the current value;
* ``put v``      -> current = v;
* ``append s``   -> current = (current or "") + s; invalid if current is not a
  string (a store would refuse to append to a non-string);
* ``delete``     -> current = None;
* ``cas [e, n]`` -> ``ok``: valid iff current == e, then current = n;
  ``fail``: valid iff current != e, no change; unknown: current = n if
  current == e. ``e = null`` means "absent".

Algorithm
---------
Operations on different keys are independent (linearizability is *local*,
Herlihy & Wing 1990), so each key is checked on its own and the history is
linearizable iff every key's sub-history is. The per-key searches run
interleaved, a slice of steps each in turn, so one key that fails fast is
reported even if another key's search is long (Porcupine runs them in
parallel for the same reason).

Per key this is the Wing & Gong search with Lowe's memoisation, as in
Porcupine's ``checkSingle``: the call and return instants of all operations
form one doubly linked list in time order. At any point of the search the
operations that may be linearized next are the call entries in front of the
first remaining return entry (an operation may be linearized only once every
operation that returned before its invocation has been). Choosing one
"lifts" its call and return entries out of the list in O(1), undone in O(1)
on backtrack. A configuration is (set of linearized operations, model
state); the set is an ``int`` bitset and the state is the register value, so
a configuration is a hashable pair, and a cache of visited configurations
makes each one searched at most once: many orderings lead to the same place.

Three reductions on top of that, each sound and complete (they never change
a verdict, only the work; ``tests/test_lincheck.py`` compares the checker
with a brute-force enumeration on random small histories):

* **Read-first.** A *read-only* operation never changes the state where it
  is valid: a get, a failed cas, a cas whose new value equals its expected
  one. If one of the candidates is read-only and valid in the current state,
  linearizing it *now* loses nothing: in any solution that places it later,
  moving it here changes no state anyone observes and breaks no real-time
  order (it is already invoked, and moving earlier cannot violate "returned
  before"). So it is taken without branching, and if that fails the
  configuration fails. Most operations are reads, so this removes most of
  the branching. (It does *not* hold for a put of the current value or an
  append of "": moved earlier, their later effect would be lost.)
* **Dead states.** Only gets and cas compare the state with a value, and
  appends only extend a string. So a string state that is not a prefix of
  the value of any not-yet-linearized get or cas (any other state: not equal
  to one) can never be observed again: every such state behaves the same
  until the next put / delete / cas overwrites it. They are all replaced by
  one marker (two: a dead string still accepts appends, a dead int does
  not). Without this, every order of the appends concurrent with an unread
  stretch of history is a distinct state string and the cache cannot merge
  them: ``kv_c50-bad``'s key "0" alone then takes over a minute and 6 GB;
  with it, 35 ms.
* **Unknown outcomes are optional.** Operations with no known return have no
  return entry, so they never block the window, and the search succeeds once
  every operation with a known outcome is linearized (the rest are placed
  "never"). An unknown operation that would leave the state unchanged is
  never tried: skipping it keeps every option it would have kept.

Complexity: deciding linearizability is NP-complete (Gibbons & Korach 1997).
Per key, the search visits at most one node per (downset of the real-time
order, canonical state) pair -- O(2^n * s) in the worst case for n
operations and s distinct states -- and each node costs O(w) to scan a window
of w concurrent operations. In practice the window is bounded by the number
of clients, reads are collapsed by read-first and unobserved permutations by
dead states: the 108 reference histories (up to 4 048 events, 50 clients)
check in well under a second of CPython in total.

A time limit is an absolute ``time.monotonic()`` deadline, checked between
slices of about a thousand search steps; reaching it gives ``UNKNOWN``.

Run as a script::

    python -m multiraft.lincheck HISTORY.jsonl [--timeout-s N]

exits 0 (linearizable), 1 (not linearizable; prints the failing key),
2 (unknown: time limit reached), 3 (bad usage or malformed history; not 2,
argparse's usual code, which would read as "unknown").

This module uses only the standard library and attrs: the deterministic
simulator imports it, and it must stay free of I/O frameworks.
"""

from __future__ import annotations

import argparse
import collections
import enum
import json
import sys
import time
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "CheckResult",
    "Operation",
    "Verdict",
    "check_events",
    "check_operations",
    "load_history",
    "main",
    "operations_from_events",
]


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"


FUNCTIONS = frozenset({"get", "put", "append", "delete", "cas"})


@attrs.frozen
class Operation:
    """One client operation, with its interval as event indexes.

    ``call`` and ``ret`` are positions in the event list (line order is the
    only clock). ``ret is None`` means the outcome is unknown: the operation
    may take effect at any instant after ``call``, or never.
    """

    process: int
    f: str  # get | put | append | delete | cas
    key: str
    # Input: the value written (put), the suffix (append), (expected, new)
    # for cas, None for get and delete.
    value: Any
    # Result: for get, the value read (None = absent); for cas, True (the
    # compare matched), False (it did not) or None (unknown); None otherwise.
    output: Any
    call: int
    ret: int | None

    @property
    def unknown(self) -> bool:
        """True when the outcome is unknown (``info`` or no completion)."""
        return self.ret is None


@attrs.frozen
class CheckResult:
    verdict: Verdict
    # The key whose sub-history is not linearizable (NOT_LINEARIZABLE only).
    failed_key: str | None = None
    # The keys still being checked when the time limit was reached (UNKNOWN
    # only; a key may fail only after this).
    unknown_keys: tuple[str, ...] = ()
    # Keys whose sub-history was proved linearizable.
    keys_checked: int = 0

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE


# --------------------------------------------------------------------------
# Reading histories
# --------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """JSON lists -> tuples, so values can be model states in a hash set."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def load_history(path: str | Path) -> list[dict]:
    """Parse a JSON-lines history file; blank lines are ignored."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
    return events


def operations_from_events(events: Iterable[dict]) -> list[Operation]:
    """Pair each invoke with its process's next completion.

    Returns the operations in invoke order. ``fail`` completions drop the
    operation, except for cas (a compare that did not match, output False).
    ``info`` completions and invokes never completed give ``ret=None``.
    Raises ValueError on a malformed history.
    """
    # Operations in invoke order; a slot becomes None when a `fail` drops it.
    slots: list[Operation | None] = []
    # process -> slot of its operation in flight (at most one per process).
    in_flight: dict[Any, int] = {}

    for index, event in enumerate(events):
        try:
            process, kind, f, key = event["process"], event["type"], event["f"], event["key"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"event {index}: missing field {exc}: {event!r}") from exc
        if f not in FUNCTIONS:
            raise ValueError(f"event {index}: unknown f {f!r}")

        if kind == "invoke":
            if process in in_flight:
                raise ValueError(
                    f"event {index}: process {process!r} invokes while its "
                    f"operation from event {slots[in_flight[process]].call} is in flight"
                )
            value = _freeze(event.get("value"))
            if f == "cas" and not (isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"event {index}: cas value must be [expected, new]")
            if f == "append" and not isinstance(value, str):
                raise ValueError(f"event {index}: append value must be a string")
            in_flight[process] = len(slots)
            slots.append(
                Operation(
                    process=process,
                    f=f,
                    key=key,
                    value=value if f in ("put", "append", "cas") else None,
                    output=None,
                    call=index,
                    ret=None,
                )
            )
            continue

        if process not in in_flight:
            raise ValueError(f"event {index}: {kind!r} for process {process!r} with nothing in flight")
        slot = in_flight.pop(process)
        op = slots[slot]
        assert op is not None
        if op.f != f or op.key != key:
            raise ValueError(f"event {index}: completion does not match the invoke at event {op.call}")
        if kind == "ok":
            if f == "get":
                output: Any = _freeze(event.get("value"))
            elif f == "cas":
                output = True
            else:
                output = None
            slots[slot] = attrs.evolve(op, output=output, ret=index)
        elif kind == "fail":
            # A failed cas was applied and observed a mismatch; anything else
            # that failed never took effect and constrains nothing.
            slots[slot] = attrs.evolve(op, output=False, ret=index) if f == "cas" else None
        elif kind == "info":
            pass  # outcome unknown: keep ret=None
        else:
            raise ValueError(f"event {index}: unknown type {kind!r}")

    return [op for op in slots if op is not None]


# --------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------

# Step kinds, resolved once per operation so the hot loop is a chain of int
# comparisons rather than string compares or method calls.
_GET, _PUT, _APPEND, _DELETE, _CAS_OK, _CAS_FAIL, _CAS_MAYBE = range(7)

# A search yields to the scheduler every this many steps (a step is one new
# configuration or one backtrack, a few microseconds). The scheduler checks
# the deadline between slices, so this also bounds the overshoot past it.
_SLICE_STEPS = 1000

_clock = time.monotonic  # tests monkeypatch this to force a timeout


class _Dead:
    """A register value that no remaining operation can observe.

    See "dead states" in the module docstring. Compares equal only to
    itself (identity), so a get or a cas compare never matches it.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


# Two kinds, because they differ in one observable way: an append to a dead
# string is valid (and leaves it dead), an append to a dead int is not.
_DEAD_STR = _Dead("dead string")
_DEAD_OTHER = _Dead("dead non-string")


class _Entry:
    """A node of the call/return list. Call entries carry the step."""

    __slots__ = ("is_call", "kind", "a", "b", "bit", "definite", "read_only", "match", "prev", "next")

    def __init__(self, is_call: bool) -> None:
        self.is_call = is_call
        self.kind = -1
        self.a: Any = None
        self.b: Any = None
        self.bit = 0
        self.definite = True  # the outcome is known: it must be linearized
        self.read_only = False  # never changes the state where it is valid
        self.match: _Entry | None = None  # call -> its return entry (or None)
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _step_kind(op: Operation) -> tuple[int, Any, Any] | None:
    """(kind, a, b) for the hot loop, or None if the op can never matter."""
    if op.f == "get":
        # A get with unknown output observes nothing and changes nothing.
        return None if op.unknown else (_GET, op.output, None)
    if op.f == "put":
        return (_PUT, op.value, None)
    if op.f == "append":
        return (_APPEND, op.value, None)
    if op.f == "delete":
        return (_DELETE, None, None)
    expected, new = op.value
    if op.unknown:
        return (_CAS_MAYBE, expected, new)
    return (_CAS_OK, expected, new) if op.output else (_CAS_FAIL, expected, None)


def _search_key(ops: Sequence[Operation]) -> Generator[None, None, bool]:
    """Is this single-key history linearizable?

    A generator so that the searches of all keys can be interleaved: it
    yields every _SLICE_STEPS steps and returns the verdict.
    """
    # Build the time-ordered entry list. Event indexes are distinct, so
    # sorting by them is a total order.
    timeline: list[tuple[int, _Entry]] = []
    # (value, bit) of every operation whose step compares the state with a
    # value: gets with a known output and all cas.
    observers: list[tuple[Any, int]] = []
    remaining = 0  # operations with a known outcome not yet linearized
    bit = 1
    for op in ops:
        step = _step_kind(op)
        if step is None:
            continue
        call = _Entry(True)
        call.kind, call.a, call.b = step
        call.bit = bit
        call.read_only = call.kind in (_GET, _CAS_FAIL) or (call.kind == _CAS_OK and call.a == call.b)
        if call.kind in (_GET, _CAS_OK, _CAS_FAIL, _CAS_MAYBE):
            observers.append((call.a, bit))
        bit <<= 1
        timeline.append((op.call, call))
        if op.ret is not None:
            ret = _Entry(False)
            ret.match = call
            call.match = ret
            timeline.append((op.ret, ret))
            remaining += 1
        else:
            call.definite = False
    if remaining == 0:
        return True
    timeline.sort(key=lambda pair: pair[0])

    head = _Entry(False)  # sentinel; head.next is the first live entry
    prev = head
    for _, entry in timeline:
        prev.next = entry
        entry.prev = prev
        prev = entry

    string_observers = [(value, b) for value, b in observers if type(value) is str]
    # value -> bitset of the observers that could ever see it: for a string,
    # those whose value extends it (appends only extend a string); for
    # anything else, those whose value equals it.
    observers_of: dict[Any, int] = {}

    def canonical(value: Any, linearized: int) -> Any:
        """`value`, or a dead marker if no unlinearized observer can see it."""
        if value is None or type(value) is _Dead:
            return value
        mask = observers_of.get(value)
        if mask is None:
            mask = 0
            if type(value) is str:
                for observed, b in string_observers:
                    if observed.startswith(value):
                        mask |= b
            else:
                for observed, b in observers:
                    if observed == value:
                        mask |= b
            observers_of[value] = mask
        if mask & ~linearized:
            return value
        return _DEAD_STR if type(value) is str else _DEAD_OTHER

    def lift(call: _Entry) -> None:
        call.prev.next = call.next
        if call.next is not None:
            call.next.prev = call.prev
        ret = call.match
        if ret is not None:
            ret.prev.next = ret.next
            if ret.next is not None:
                ret.next.prev = ret.prev

    def unlift(call: _Entry) -> None:
        # Exact reverse of lift: return entry first, then the call.
        ret = call.match
        if ret is not None:
            ret.prev.next = ret
            if ret.next is not None:
                ret.next.prev = ret
        call.prev.next = call
        if call.next is not None:
            call.next.prev = call

    linearized = 0  # bitset of linearized operations
    state: Any = canonical(None, linearized)  # every key starts absent
    visited: set[tuple[int, Any]] = set()
    # Frames of (lifted call entry, state before it, forced). A forced frame
    # is a read-only step taken by the read-first rule: when it is undone,
    # the configuration it left has failed, so no sibling is tried.
    stack: list[tuple[_Entry, Any, bool]] = []
    steps_to_yield = _SLICE_STEPS
    entry: _Entry | None = None
    at_new_config = True

    while True:
        steps_to_yield -= 1
        if steps_to_yield == 0:
            steps_to_yield = _SLICE_STEPS
            yield

        if at_new_config:
            if remaining == 0:
                return True
            at_new_config = False
            # Read-first rule: a read-only candidate that is valid here is
            # the only branch this configuration needs.
            forced = None
            e = head.next
            while e is not None and e.is_call:
                if e.read_only:
                    # _GET and _CAS_OK compare equal; _CAS_FAIL unequal.
                    if (state != e.a) if e.kind == _CAS_FAIL else (state == e.a):
                        forced = e
                        break
                e = e.next
            if forced is not None:
                new_linearized = linearized | forced.bit
                # The state is unchanged, but may die with its last observer.
                new_state = canonical(state, new_linearized) if type(state) is not _Dead else state
                config = (new_linearized, new_state)
                if config not in visited:
                    visited.add(config)
                    stack.append((forced, state, True))
                    lift(forced)
                    state = new_state
                    linearized = new_linearized
                    remaining -= 1  # read-only operations are all definite
                    at_new_config = True
                    continue
                entry = None  # seen before, so it failed: backtrack
            else:
                entry = head.next

        # Branch over the remaining candidates, from `entry` onwards. No
        # read-only candidate is valid here (it would have been forced).
        while entry is not None and entry.is_call:
            kind = entry.kind
            ok = True
            if kind == _PUT:
                new_state = entry.a
            elif kind == _APPEND:
                if type(state) is str:
                    new_state = state + entry.a
                elif state is None:
                    new_state = entry.a
                elif state is _DEAD_STR:
                    new_state = state  # still unobservable
                else:
                    ok = False  # append to a non-string
            elif kind == _DELETE:
                new_state = None
            elif kind == _CAS_MAYBE or (kind == _CAS_OK and not entry.read_only):
                ok = state == entry.a
                new_state = entry.b
            else:
                ok = False  # read-only: invalid here, or it would be forced
            # An unknown-outcome op that would change nothing is never
            # needed: leaving it out ("never happened") keeps every option.
            if ok and (entry.definite or new_state != state):
                new_linearized = linearized | entry.bit
                new_state = canonical(new_state, new_linearized)
                config = (new_linearized, new_state)
                if config not in visited:
                    visited.add(config)
                    stack.append((entry, state, False))
                    lift(entry)
                    state = new_state
                    linearized = new_linearized
                    if entry.definite:
                        remaining -= 1
                    at_new_config = True
                    break
            entry = entry.next
        if at_new_config:
            continue

        # Every candidate here fails: undo the last choice and try its next
        # sibling, skipping past forced frames (their parent failed too).
        while True:
            if not stack:
                return False
            undone, state, forced_frame = stack.pop()
            unlift(undone)
            linearized &= ~undone.bit
            if undone.definite:
                remaining += 1
            if not forced_frame:
                entry = undone.next
                break


def check_operations(ops: Iterable[Operation], timeout_s: float | None = None) -> CheckResult:
    """Check operations key by key; not linearizable as soon as one key fails.

    The per-key searches run interleaved, round-robin in sorted key order, a
    fixed number of steps at a time: a key that fails quickly is found even
    when another key's search is long (the verdict is the same whichever
    order the keys are checked in, and the interleaving is by step counts,
    not time, so the reported key is deterministic). If the time limit is
    reached first, the verdict is UNKNOWN.
    """
    deadline = None if timeout_s is None else _clock() + timeout_s
    by_key: dict[Any, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    keys = sorted(by_key, key=lambda k: (type(k).__name__, str(k)))
    active = collections.deque((key, _search_key(by_key[key])) for key in keys)
    checked = 0
    while active:
        if deadline is not None and _clock() >= deadline:
            return CheckResult(Verdict.UNKNOWN, unknown_keys=tuple(key for key, _ in active), keys_checked=checked)
        key, search = active.popleft()
        try:
            next(search)
        except StopIteration as done:
            if not done.value:
                return CheckResult(Verdict.NOT_LINEARIZABLE, failed_key=key, keys_checked=checked)
            checked += 1
        else:
            active.append((key, search))
    return CheckResult(Verdict.LINEARIZABLE, keys_checked=checked)


def check_events(events: Iterable[dict], timeout_s: float | None = None) -> CheckResult:
    """Check a history given as event dicts in real-time order."""
    return check_operations(operations_from_events(events), timeout_s=timeout_s)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_UNKNOWN = 2
EXIT_USAGE = 3  # not argparse's 2, which would read as "unknown"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _ArgumentParser(
        prog="python -m multiraft.lincheck",
        description="Check a JSON-lines key-value history for linearizability. "
        "Exit 0: linearizable, 1: not linearizable, 2: unknown (time limit), "
        "3: bad usage or malformed history.",
    )
    parser.add_argument("history", type=Path, help="JSON-lines history file")
    parser.add_argument(
        "--timeout-s", type=float, default=None, metavar="N", help="give up after N seconds (verdict unknown)"
    )
    args = parser.parse_args(argv)
    try:
        events = load_history(args.history)
        ops = operations_from_events(events)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = check_operations(ops, timeout_s=args.timeout_s)
    if result.verdict is Verdict.LINEARIZABLE:
        print("linearizable")
        return EXIT_LINEARIZABLE
    if result.verdict is Verdict.NOT_LINEARIZABLE:
        print(f"not linearizable: key {result.failed_key!r}")
        return EXIT_NOT_LINEARIZABLE
    print(f"unknown: time limit reached while checking keys {', '.join(map(repr, result.unknown_keys))}")
    return EXIT_UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
