"""The client's exactly-once sessions against an in-process fake worker: a
real KVStateMachine behind a loopback TCP listener, in virtual time (no real
sleeps). The fake can lose answers and evict sessions when a test says so."""

from __future__ import annotations

import functools

import pytest
import trio

from multiraft import kv, protocol
from multiraft.client import SESSION_RENEWALS_MAX, Client, Timeout, UnknownOutcome

_OPS = {
    "put": lambda a: kv.Put(a[1], a[2], a[3], a[4]),
    "incr": lambda a: kv.Incr(a[1], a[2], a[3], a[4]),
}


class FakeWorker:
    """Group 0 on one worker; applies requests to a KVStateMachine in order."""

    def __init__(self, sessions_max: int = 100) -> None:
        self.sm = kv.KVStateMachine(sessions_max=sessions_max)
        self.requests: list[list] = []
        self.lose_answers = 0  # apply, but do not answer, the next n writes
        self.expire_everything = False

    def apply(self, cmd) -> object:
        return self.sm.apply(self.sm.applied_index + 1, kv.encode_command(cmd))

    def answer(self, frame: list) -> list | None:
        req_id, op, args = frame[0], frame[1], frame[2:]
        self.requests.append([op, *args])
        if op == "register":
            return [req_id, protocol.OK, self.apply(kv.Register()).client_id]
        if self.expire_everything:
            self.apply(kv.Register())  # another client's session evicts this one
        result = self.apply(_OPS[op](args))
        if self.lose_answers:
            self.lose_answers -= 1
            return None
        if isinstance(result, kv.SessionExpired):
            return [req_id, protocol.SESSION_EXPIRED, repr(result)]
        if isinstance(result, kv.PutResult):
            return [req_id, protocol.OK, result.prev_existed]
        assert isinstance(result, kv.IncrResult), result
        return [req_id, protocol.OK, [result.value, None]]

    async def serve(self, stream: trio.SocketStream) -> None:
        buf = protocol.FrameBuffer()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf.feed(data)
            for frame in buf.frames():
                response = self.answer(frame)
                if response is not None:
                    await stream.send_all(protocol.encode(response))


async def start(nursery: trio.Nursery, worker: FakeWorker, **kwargs) -> Client:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, worker.serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = Client(nursery, ["127.0.0.1:1"], **kwargs)
    client.routing = {
        "groups_total": 1,
        "groups": {0: {"replicas": {"n1": 0}, "leader": "n1"}},
        "nodes": {"n1": {"up": True, "workers": [{"client_address": f"127.0.0.1:{port}"}]}},
    }
    client._routing_at = trio.current_time() + 10**6  # never asks a coordinator
    return client


def _writes(worker: FakeWorker) -> list[list]:
    return [r for r in worker.requests if r[0] != "register"]


async def test_a_session_is_registered_once_and_reused_by_later_writes(autojump_clock):
    worker = FakeWorker()
    async with trio.open_nursery() as nursery:
        c = await start(nursery, worker)
        for i in range(5):
            await c.put(b"k", b"v%d" % i)
        assert [r[0] for r in worker.requests].count("register") == 1
        assert {r[-2] for r in _writes(worker)} == {1}  # the Register entry's index
        assert [r[-1] for r in _writes(worker)] == [1, 2, 3, 4, 5]
        nursery.cancel_scope.cancel()


async def test_a_first_send_that_meets_an_expired_session_registers_again_and_applies_once(autojump_clock):
    worker = FakeWorker(sessions_max=1)
    async with trio.open_nursery() as nursery:
        c = await start(nursery, worker)
        assert await c.incr(b"n") == 1
        worker.apply(kv.Register())  # another client's session evicts ours
        assert await c.incr(b"n") == 2  # transparently: the refused send did not apply
        assert worker.sm.get(b"n") == b"2"
        assert c.stats["sessions_expired"] == 1 and c.stats["sessions_registered"] == 2
        assert [r[0] for r in worker.requests] == ["register", "incr", "incr", "register", "incr"]
        nursery.cancel_scope.cancel()


async def test_a_retried_write_that_meets_an_expired_session_raises_unknown_outcome(autojump_clock):
    worker = FakeWorker(sessions_max=1)
    async with trio.open_nursery() as nursery:
        c = await start(nursery, worker, attempt_timeout_s=0.5)
        worker.lose_answers = 1  # the first attempt applies; its answer is lost
        evicted = False

        def evict_then_answer(frame, answer=worker.answer):
            nonlocal evicted
            if frame[1] == "incr" and worker.requests and not evicted and len(_writes(worker)) == 1:
                evicted = True
                worker.apply(kv.Register())  # evicted while the client waits
            return answer(frame)

        worker.answer = evict_then_answer
        with pytest.raises(UnknownOutcome) as info:
            await c.incr(b"n", timeout_s=5)
        assert info.value.outcome_unknown and "outcome unknown" in str(info.value)
        # Applied exactly once, and never sent again under a new session.
        assert worker.sm.get(b"n") == b"1"
        sends = _writes(worker)
        assert len(sends) == 2 and sends[0] == sends[1]
        assert [r[0] for r in worker.requests].count("register") == 1
        assert not c._free_sessions.get(0)  # the expired session is dropped
        nursery.cancel_scope.cancel()


async def test_a_group_that_evicts_every_new_session_gets_a_timeout_not_a_double_apply(autojump_clock):
    worker = FakeWorker(sessions_max=1)
    worker.expire_everything = True
    async with trio.open_nursery() as nursery:
        c = await start(nursery, worker)
        with pytest.raises(Timeout) as info:
            await c.put(b"k", b"v")
        assert not info.value.outcome_unknown and "not applied" in str(info.value)
        assert len(_writes(worker)) == SESSION_RENEWALS_MAX + 1
        assert worker.sm.get(b"k") is None
        nursery.cancel_scope.cancel()
