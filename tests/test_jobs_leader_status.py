"""Admin jobs decide on the leader's word only when that leader is current:
a leader that another replica has seen a newer term than may not know the
latest config (deleting a replica on its word could delete a voter). Found
by the simulator's stale-leader wipe (seed 1003 of 2,000, issue 9)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from multiraft import protocol
from multiraft.jobs import JobError, JobRunner


def _runner(answers: dict[str, dict]) -> JobRunner:
    coord = SimpleNamespace(routing={"groups": {0: {"replicas": {n: 0 for n in answers}}}})
    runner = JobRunner(coord)  # type: ignore[arg-type]

    async def worker_call(g, node, body):
        return protocol.OK, answers[node]

    runner.worker_call = worker_call  # type: ignore[method-assign]
    return runner


def _st(role: str, term: int) -> dict:
    return {"role": role, "term": term, "voters": ["n1", "n2", "n3"], "learners": [], "voters_outgoing": []}


async def test_the_current_leader_is_taken(autojump_clock) -> None:
    runner = _runner({"n1": _st("leader", 5), "n2": _st("follower", 5), "n3": _st("follower", 4)})
    st = await runner.leader_status(0, timeout_s=1)
    assert st["node"] == "n1" and st["term"] == 5


async def test_a_leader_behind_a_newer_term_is_not_trusted(autojump_clock) -> None:
    # n1 still believes it leads term 5; n2 has voted in term 6 (a newer
    # leader, unreachable here, may hold a newer config).
    runner = _runner({"n1": _st("leader", 5), "n2": _st("follower", 6), "n3": _st("follower", 5)})
    with pytest.raises(JobError, match="leads term 5 but a replica is at term 6"):
        await runner.leader_status(0, timeout_s=1)
