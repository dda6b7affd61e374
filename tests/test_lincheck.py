"""Tests for multiraft.lincheck, the linearizability checker.

Three layers: the 108 reference histories (verdicts from Porcupine's test
suite) must all agree; small hand-written histories pin down the semantics
one claim at a time; and random small histories are compared with a
brute-force enumeration of every ordering, which checks that the search's
reductions (read-first, dead states, optional unknown ops) never change a
verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from multiraft import lincheck
from multiraft.lincheck import (
    Operation,
    Verdict,
    check_events,
    check_operations,
    load_history,
    main,
    operations_from_events,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(
    os.environ.get("MULTIRAFT_LINCHECK_DATA") or Path(__file__).resolve().parents[2] / "shared" / "lincheck-data"
)
EXPECTED = DATA_DIR / "expected.json"
NO_DATA = f"reference histories not found: no {EXPECTED} (set MULTIRAFT_LINCHECK_DATA to the lincheck-data folder)"


# --------------------------------------------------------------------------
# Helpers to write histories by hand
# --------------------------------------------------------------------------


def invoke(process: int, f: str, value: Any = None, key: str = "k") -> dict:
    return {"process": process, "type": "invoke", "f": f, "key": key, "value": value}


def ok(process: int, f: str, value: Any = None, key: str = "k") -> dict:
    return {"process": process, "type": "ok", "f": f, "key": key, "value": value}


def fail(process: int, f: str, value: Any = None, key: str = "k") -> dict:
    return {"process": process, "type": "fail", "f": f, "key": key, "value": value}


def info(process: int, f: str, key: str = "k") -> dict:
    return {"process": process, "type": "info", "f": f, "key": key, "value": None}


def verdict(events: list[dict]) -> Verdict:
    return check_events(events).verdict


def write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def many_concurrent_puts_then_impossible_read(n: int) -> list[dict]:
    """A history whose refutation must try ~2^n orders: n concurrent puts
    each read by a concurrent get, then a read of a value never written."""
    events = [invoke(p, "put", p) for p in range(n)]
    events += [invoke(n + p, "get") for p in range(n)]
    events += [ok(p, "put", p) for p in range(n)]
    events += [ok(n + p, "get", p) for p in range(n)]
    events += [invoke(0, "get"), ok(0, "get", "never written")]
    return events


# --------------------------------------------------------------------------
# The reference data set
# --------------------------------------------------------------------------


def _reference_cases() -> list:
    if not EXPECTED.is_file():
        return [pytest.param(None, None, id="no-data", marks=pytest.mark.skip(reason=NO_DATA))]
    expected = json.loads(EXPECTED.read_text())
    return [pytest.param(name, want, id=name) for name, want in sorted(expected.items())]


@pytest.mark.parametrize(("name", "want"), _reference_cases())
def test_verdict_agrees_with_reference(name: str, want: str) -> None:
    result = check_events(load_history(DATA_DIR / name))
    assert result.verdict.value == want
    if result.verdict is Verdict.NOT_LINEARIZABLE:
        assert result.failed_key is not None


@pytest.mark.skipif(not EXPECTED.is_file(), reason=NO_DATA)
def test_reference_verdicts_cover_every_history_file() -> None:
    expected = json.loads(EXPECTED.read_text())
    assert {p.name for p in DATA_DIR.glob("*.jsonl")} == set(expected)


# --------------------------------------------------------------------------
# Semantics, one claim at a time
# --------------------------------------------------------------------------


def test_sequential_history_matching_the_model_is_linearizable() -> None:
    events = [
        invoke(0, "get"), ok(0, "get", None),
        invoke(0, "put", "a"), ok(0, "put", "a"),
        invoke(0, "append", "b"), ok(0, "append", "b"),
        invoke(0, "get"), ok(0, "get", "ab"),
        invoke(0, "cas", ["ab", "c"]), ok(0, "cas", ["ab", "c"]),
        invoke(0, "delete"), ok(0, "delete"),
        invoke(0, "append", "x"), ok(0, "append", "x"),  # absent counts as ""
        invoke(0, "get"), ok(0, "get", "x"),
    ]  # fmt: skip
    assert verdict(events) is Verdict.LINEARIZABLE


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    events = [
        invoke(0, "put", 1), ok(0, "put", 1),
        invoke(0, "put", 2), ok(0, "put", 2),
        invoke(1, "get"), ok(1, "get", 1),
    ]  # fmt: skip
    result = check_events(events)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.failed_key == "k"


@pytest.mark.parametrize("read", [None, 1])
def test_concurrent_operations_may_be_ordered_either_way(read: Any) -> None:
    events = [invoke(0, "put", 1), invoke(1, "get"), ok(1, "get", read), ok(0, "put", 1)]
    assert verdict(events) is Verdict.LINEARIZABLE


def test_concurrent_appends_may_apply_in_either_order_but_not_both_orders() -> None:
    appends = [invoke(0, "append", "a"), invoke(1, "append", "b"), ok(0, "append", "a"), ok(1, "append", "b")]
    assert verdict(appends + [invoke(2, "get"), ok(2, "get", "ba")]) is Verdict.LINEARIZABLE
    assert verdict(appends + [invoke(2, "get"), ok(2, "get", "ab")]) is Verdict.LINEARIZABLE
    # Two later reads disagreeing on the order cannot both be right.
    both = appends + [invoke(2, "get"), ok(2, "get", "ab"), invoke(2, "get"), ok(2, "get", "ba")]
    assert verdict(both) is Verdict.NOT_LINEARIZABLE


def test_info_write_may_take_effect_after_a_later_read() -> None:
    events = [
        invoke(0, "put", 1), info(0, "put"),
        invoke(1, "get"), ok(1, "get", None),  # not applied yet...
        invoke(1, "get"), ok(1, "get", 1),  # ...applied now, long after its info line
    ]  # fmt: skip
    assert verdict(events) is Verdict.LINEARIZABLE


def test_info_write_may_never_take_effect() -> None:
    events = [invoke(0, "put", 1), info(0, "put"), invoke(1, "get"), ok(1, "get", None)]
    assert verdict(events) is Verdict.LINEARIZABLE


def test_uncompleted_invoke_is_treated_like_info() -> None:
    events = [invoke(0, "put", 1), invoke(1, "get"), ok(1, "get", None), invoke(1, "get"), ok(1, "get", 1)]
    assert verdict(events) is Verdict.LINEARIZABLE
    (put, _, _) = operations_from_events(events)
    assert put.ret is None and put.unknown


def test_info_write_cannot_take_effect_before_its_invocation() -> None:
    events = [invoke(1, "get"), ok(1, "get", 1), invoke(0, "put", 1), info(0, "put")]
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


def test_info_write_takes_effect_at_most_once() -> None:
    # Applied (1), overwritten (2), and seen again (1): that would need two applications.
    events = [
        invoke(0, "put", 1), info(0, "put"),
        invoke(1, "get"), ok(1, "get", 1),
        invoke(1, "put", 2), ok(1, "put", 2),
        invoke(1, "get"), ok(1, "get", 1),
    ]  # fmt: skip
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


@pytest.mark.parametrize("f", ["put", "append", "delete"])
def test_failed_operation_never_took_effect(f: str) -> None:
    value = {"put": "b", "append": "b", "delete": None}[f]
    events = [
        invoke(0, "put", "a"), ok(0, "put", "a"),
        invoke(0, f, value), fail(0, f, value),
        invoke(1, "get"), ok(1, "get", "a"),
    ]  # fmt: skip
    assert verdict(events) is Verdict.LINEARIZABLE
    # And a read of its effect is therefore impossible.
    events[-1] = ok(1, "get", {"put": "b", "append": "ab", "delete": None}[f])
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


def test_failed_cas_is_a_read_that_saw_a_mismatch() -> None:
    # The README: "fail ... for cas it means the compare did not match at the
    # moment it was applied". With the key surely holding 1, cas [1, 2]
    # cannot fail. (Had a failed cas been dropped, this would pass.)
    events = [invoke(0, "put", 1), ok(0, "put", 1), invoke(1, "cas", [1, 2]), fail(1, "cas", [1, 2])]
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


def test_failed_cas_concurrent_with_the_write_may_see_the_old_value() -> None:
    events = [invoke(0, "put", 1), invoke(1, "cas", [1, 2]), fail(1, "cas", [1, 2]), ok(0, "put", 1)]
    assert verdict(events) is Verdict.LINEARIZABLE


def test_cas_with_null_expected_matches_an_absent_key() -> None:
    events = [invoke(0, "cas", [None, 5]), ok(0, "cas", [None, 5]), invoke(0, "get"), ok(0, "get", 5)]
    assert verdict(events) is Verdict.LINEARIZABLE
    events = [invoke(0, "put", 1), ok(0, "put", 1), invoke(0, "cas", [None, 5]), ok(0, "cas", [None, 5])]
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


def test_info_cas_applies_only_if_its_compare_matches() -> None:
    events = [
        invoke(0, "put", 1), ok(0, "put", 1),
        invoke(1, "cas", [7, 2]), info(1, "cas"),
        invoke(0, "get"), ok(0, "get", 2),
    ]  # fmt: skip
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


def test_write_of_the_current_value_may_still_take_effect_later() -> None:
    # put 1 (slow) finds the key already 1, but must be ordered after put 2
    # for the final read: linearizing it early "because it changes nothing"
    # would be wrong.
    events = [
        invoke(0, "put", 1), ok(0, "put", 1),
        invoke(1, "put", 1), invoke(2, "put", 2), ok(2, "put", 2), ok(1, "put", 1),
        invoke(0, "get"), ok(0, "get", 1),
    ]  # fmt: skip
    assert verdict(events) is Verdict.LINEARIZABLE


def test_unread_append_order_does_not_matter_but_a_later_read_still_does() -> None:
    # The appends' interleaving is never read before the put overwrites it
    # (the checker merges those states), but a later append is still read.
    events = [invoke(p, "append", s) for p, s in enumerate("abc")]
    events += [ok(p, "append", s) for p, s in enumerate("abc")]
    events += [invoke(0, "append", "d"), invoke(1, "put", "x"), ok(1, "put", "x"), ok(0, "append", "d")]
    events += [invoke(1, "get"), ok(1, "get", "xd")]
    assert verdict(events) is Verdict.LINEARIZABLE
    events[-1] = ok(1, "get", "abcd")  # the put came after the appends
    assert verdict(events) is Verdict.NOT_LINEARIZABLE


def test_failing_key_is_named_and_other_keys_are_independent() -> None:
    events = [
        invoke(0, "put", 1, key="a"), ok(0, "put", 1, key="a"),
        invoke(0, "put", 1, key="b"), ok(0, "put", 1, key="b"),
        invoke(1, "get", key="a"), ok(1, "get", 1, key="a"),
        invoke(1, "get", key="b"), ok(1, "get", None, key="b"),  # stale
        invoke(1, "get", key="c"), ok(1, "get", None, key="c"),
    ]  # fmt: skip
    result = check_events(events)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.failed_key == "b"


def test_fast_failing_key_is_found_while_another_key_is_hard() -> None:
    # Keys are searched interleaved, so key "z"'s quick refutation is not
    # stuck behind key "k"'s exponential one.
    events = many_concurrent_puts_then_impossible_read(40)
    events += [invoke(99, "put", 1, key="z"), ok(99, "put", 1, key="z")]
    events += [invoke(99, "get", key="z"), ok(99, "get", 2, key="z")]
    result = check_events(events, timeout_s=60)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.failed_key == "z"


def test_get_with_unknown_outcome_constrains_nothing() -> None:
    events = [invoke(0, "get"), info(0, "get"), invoke(1, "get"), ok(1, "get", None)]
    assert verdict(events) is Verdict.LINEARIZABLE


def test_empty_history_is_linearizable() -> None:
    assert check_events([]).verdict is Verdict.LINEARIZABLE


def test_check_events_accepts_any_iterable_of_event_dicts() -> None:
    events = [invoke(0, "put", [1, 2]), ok(0, "put", [1, 2]), invoke(0, "get"), ok(0, "get", [1, 2])]
    assert check_events(iter(events)).verdict is Verdict.LINEARIZABLE


def test_operations_pair_invokes_with_completions() -> None:
    events = [
        invoke(0, "put", 1),  # 0
        invoke(1, "cas", [1, 2]),  # 1
        ok(0, "put", 1),  # 2
        fail(1, "cas", [1, 2]),  # 3
        invoke(0, "put", 3),  # 4
        fail(0, "put", 3),  # 5: dropped
        invoke(0, "get"),  # 6
        ok(0, "get", 1),  # 7
        invoke(1, "append", "x"),  # 8
        info(1, "append"),  # 9
    ]
    assert operations_from_events(events) == [
        Operation(process=0, f="put", key="k", value=1, output=None, call=0, ret=2),
        Operation(process=1, f="cas", key="k", value=(1, 2), output=False, call=1, ret=3),
        Operation(process=0, f="get", key="k", value=None, output=1, call=6, ret=7),
        Operation(process=1, f="append", key="k", value="x", output=None, call=8, ret=None),
    ]


@pytest.mark.parametrize(
    "events",
    [
        [invoke(0, "put", 1), invoke(0, "put", 2)],  # two in flight on one process
        [ok(0, "put", 1)],  # completion without invoke
        [invoke(0, "put", 1), ok(0, "get", 1)],  # completion of another f
        [invoke(0, "frobnicate")],
        [invoke(0, "cas", 1)],  # cas value must be [expected, new]
        [invoke(0, "put", 1), {"process": 0, "type": "done", "f": "put", "key": "k", "value": 1}],
        [{"process": 0, "type": "invoke"}],
    ],
    ids=["double-invoke", "orphan", "mismatch", "bad-f", "bad-cas", "bad-type", "missing-field"],
)
def test_malformed_history_is_rejected(events: list[dict]) -> None:
    with pytest.raises(ValueError):
        operations_from_events(events)


# --------------------------------------------------------------------------
# Time limit
# --------------------------------------------------------------------------


def test_exhausted_time_limit_gives_unknown() -> None:
    result = check_events(many_concurrent_puts_then_impossible_read(8), timeout_s=0)
    assert result.verdict is Verdict.UNKNOWN
    assert result.unknown_keys == ("k",)


def test_deadline_reached_mid_search_gives_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock advancing one second per reading: the deadline passes
    # after a couple of slices of a search that would take far longer.
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(lincheck, "_clock", lambda: float(next(ticks)))
    result = check_events(many_concurrent_puts_then_impossible_read(40), timeout_s=3)
    assert result.verdict is Verdict.UNKNOWN
    assert next(ticks) > 2  # the search had started before giving up


def test_definite_verdict_within_time_limit_is_kept() -> None:
    events = [invoke(0, "put", 1), ok(0, "put", 1), invoke(0, "get"), ok(0, "get", 2)]
    assert check_events(events, timeout_s=60).verdict is Verdict.NOT_LINEARIZABLE


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def test_cli_exits_0_for_linearizable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", [invoke(0, "put", 1), ok(0, "put", 1), invoke(0, "get"), ok(0, "get", 1)])
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == "linearizable\n"


def test_cli_exits_1_and_names_the_failing_key_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [
        invoke(0, "put", 1, key="x7"), ok(0, "put", 1, key="x7"),
        invoke(0, "get", key="x7"), ok(0, "get", None, key="x7"),
    ]  # fmt: skip
    assert main([str(write_jsonl(tmp_path / "h.jsonl", events))]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "not linearizable" in out and "'x7'" in out


def test_cli_exits_2_when_the_time_limit_is_hit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", many_concurrent_puts_then_impossible_read(40))
    assert main([str(path), "--timeout-s", "0"]) == 2
    assert capsys.readouterr().out.startswith("unknown")


def test_cli_exits_3_for_a_malformed_history_or_bad_usage(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"process": 0, "type": "invoke"\n')
    assert main([str(bad_json)]) == 3
    assert main([str(tmp_path / "missing.jsonl")]) == 3
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 3


@pytest.mark.integration
def test_module_runs_as_a_script_without_io_frameworks(tmp_path: Path) -> None:
    # One interpreter for both claims: `python -m multiraft.lincheck` works,
    # and importing the checker pulls in none of trio / pynng / cbor2 (the
    # deterministic simulator depends on that).
    path = write_jsonl(tmp_path / "h.jsonl", [invoke(0, "put", 1), ok(0, "put", 1), invoke(0, "get"), ok(0, "get", 2)])
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['lincheck', {str(path)!r}]\n"
        "try:\n"
        "    runpy.run_module('multiraft.lincheck', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    loaded = {'trio', 'pynng', 'cbor2'} & set(sys.modules)\n"
        "    assert not loaded, loaded\n"
        "    raise\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "not linearizable: key 'k'\n"


# --------------------------------------------------------------------------
# Agreement with brute force on random small histories
# --------------------------------------------------------------------------


def _apply(state: Any, op: Operation) -> tuple[bool, Any]:
    """The model, written independently of the checker: (valid, new state)."""
    if op.f == "get":
        return op.unknown or state == op.output, state
    if op.f == "put":
        return True, op.value
    if op.f == "delete":
        return True, None
    if op.f == "append":
        if state is None or isinstance(state, str):
            return True, (state or "") + op.value
        return False, state
    expected, new = op.value
    if op.unknown:
        return True, new if state == expected else state
    if op.output:
        return state == expected, new
    return state != expected, state


def _brute_force_linearizable(ops: list[Operation]) -> bool:
    """Try every order (and every subset of the unknown-outcome operations)."""
    for key in {op.key for op in ops}:
        mine = [op for op in ops if op.key == key]

        def extend(placed: frozenset[int], state: Any, mine: list[Operation] = mine) -> bool:
            if all(i in placed or op.unknown for i, op in enumerate(mine)):
                return True
            for i, op in enumerate(mine):
                if i in placed:
                    continue
                if any(j not in placed and o.ret is not None and o.ret < op.call for j, o in enumerate(mine)):
                    continue  # something that returned before op's call is still unplaced
                valid, new_state = _apply(state, op)
                if valid and extend(placed | {i}, new_state):
                    return True
            return False

        if not extend(frozenset(), None):
            return False
    return True


@st.composite
def small_histories(draw: st.DrawFn) -> list[dict]:
    """Up to 7 operations by up to 4 processes on one or two keys, with
    random outcomes (ok / fail / info / never completed) and random reads."""
    processes = draw(st.integers(1, 4))
    n_ops = draw(st.integers(1, 7))
    keys = draw(st.sampled_from([["k"], ["k", "j"]]))
    events: list[dict] = []
    in_flight: dict[int, dict] = {}
    crashed: set[int] = set()
    started = 0
    while (started < n_ops and len(crashed) < processes) or in_flight:
        idle = [p for p in range(processes) if p not in in_flight and p not in crashed]
        if idle and started < n_ops and (not in_flight or draw(st.booleans())):
            p = draw(st.sampled_from(idle))
            f = draw(st.sampled_from(["get", "get", "put", "append", "delete", "cas", "cas"]))
            value = {
                "get": st.none(),
                "delete": st.none(),
                "put": st.sampled_from([1, 2, "a", "b"]),
                "append": st.sampled_from(["a", "b", ""]),
                "cas": st.lists(st.sampled_from([None, 1, 2, "a", "b"]), min_size=2, max_size=2),
            }[f]
            event = invoke(p, f, draw(value), key=draw(st.sampled_from(keys)))
            events.append(event)
            in_flight[p] = event
            started += 1
            continue
        p = draw(st.sampled_from(sorted(in_flight)))
        call = in_flight.pop(p)
        f, key = call["f"], call["key"]
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info", "crash"]))
        if outcome == "crash":
            crashed.add(p)  # never completes
        elif outcome == "info":
            events.append(info(p, f, key=key))
        elif outcome == "fail":
            events.append(fail(p, f, call["value"], key=key))
        elif f == "get":
            events.append(ok(p, f, draw(st.sampled_from([None, 1, 2, "a", "b", "ab", "ba", "aa"])), key=key))
        else:
            events.append(ok(p, f, call["value"], key=key))
    return events


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(small_histories())
def test_verdict_agrees_with_brute_force_on_small_histories(events: list[dict]) -> None:
    ops = operations_from_events(events)
    want = Verdict.LINEARIZABLE if _brute_force_linearizable(ops) else Verdict.NOT_LINEARIZABLE
    assert check_operations(ops).verdict is want
