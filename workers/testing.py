"""In-process workers for tests: several Workers in one trio run, an in-memory
raft network, a routing table built as the coordinator would, and a small
pipelined client speaking multiraft.protocol channel 1.

    async with open_cluster(tmp_path, nodes=("n1", "n2", "n3"), groups=2) as cluster:
        leader = await cluster.wait_leader(0)
        async with cluster.client(leader) as c:
            assert await c.call("put", 0, b"k", b"v", 1, 1) == ["ok", False]

Use with trio.testing.MockClock(autojump_threshold=0) (pytest-trio's
`autojump_clock` fixture) so that elections happen in virtual time; storage
then runs inline (see open_cluster).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from multiraft import protocol
from multiraft.raft.types import StateRole

from .config import WorkerConfig
from .memtransport import MemNetwork
from .worker import Worker

__all__ = ["InProcessCluster", "TestClient", "open_client", "open_cluster"]


class TestClient:
    """Pipelined requests over one TCP connection: `await call(op, *args)`
    returns [status, payload]; any number of calls may be in flight."""

    __test__ = False  # not a pytest test class

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._ids = itertools.count(1)
        self._waiting: dict[int, Any] = {}
        self._send_lock = trio.Lock()
        self.closed = trio.Event()

    async def _reader(self) -> None:
        buf = protocol.FrameBuffer()
        try:
            while True:
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    break
                buf.feed(data)
                for req_id, status, payload in buf.frames():
                    slot = self._waiting.pop(req_id, None)
                    if slot is not None:
                        slot[1] = [status, payload]
                        slot[0].set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            for ev, _ in self._waiting.values():
                ev.set()

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def call_many(self, requests: list[list]) -> list[list]:
        """Send every request ([op, *args]) in one write; their answers, in order."""
        slots = []
        data = []
        for req in requests:
            req_id = next(self._ids)
            slot: list = [trio.Event(), None]
            self._waiting[req_id] = slot
            slots.append(slot)
            data.append(protocol.encode([req_id, *req]))
        await self.send_raw(b"".join(data))
        for slot in slots:
            await slot[0].wait()
            if slot[1] is None:
                raise ConnectionError("connection closed before the response")
        return [slot[1] for slot in slots]

    async def call(self, op: str, *args: Any) -> list:
        req_id = next(self._ids)
        slot: list = [trio.Event(), None]
        self._waiting[req_id] = slot
        await self.send_raw(protocol.encode([req_id, op, *args]))
        await slot[0].wait()
        if slot[1] is None:
            raise ConnectionError("connection closed before the response")
        return slot[1]


@asynccontextmanager
async def open_client(address: str) -> AsyncIterator[TestClient]:
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    client = TestClient(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)


class InProcessCluster:
    """Workers (one per node, worker index 0) on one MemNetwork, in this trio run
    (multiraft.localcluster.ProcessCluster is the kind made of real processes)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        base_dir: Path,
        nodes: tuple[str, ...],
        groups: int,
        io_inline: bool,
        **overrides: Any,
    ) -> None:
        self.nursery = nursery
        self.base_dir = Path(base_dir)
        self.nodes = nodes
        self.groups_total = groups
        self.io_inline = io_inline
        self.overrides = overrides
        self.net = MemNetwork()
        self.workers: dict[str, Worker] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}
        self.version = 0

    def config(self, node: str, **extra: Any) -> WorkerConfig:
        d = {
            "node_id": node,
            "worker_index": 0,
            "data_dir": str(self.base_dir / node),
            "raft_listen_url": f"mem://{node}/w0",
            "client_listen_address": "127.0.0.1:0",
            "groups": {g: list(self.nodes) for g in range(self.groups_total)},
            "groups_total": self.groups_total,
            "seed": sum(map(ord, node)),
            "storage": {"min_free_disk_space": 0},
        }
        d.update(self.overrides)
        d.update(extra)
        return WorkerConfig.from_dict(d)

    def transport_of(self, node: str) -> Any:
        """The transport of `node`'s worker (to inject messages in tests)."""
        return self.workers[node].transport

    async def start(self, node: str, **extra: Any) -> Worker:
        """Start `node`'s worker; `extra` overrides config keys for this start."""
        worker = Worker(
            self.config(node, **extra),
            transport=self.net.transport(f"{node}/w0"),
            io_inline=self.io_inline,
        )
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await worker.run(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run)
        self.workers[node] = worker
        self._scopes[node] = scope
        self._stopped[node] = stopped
        self.publish_routing()
        return worker

    async def stop(self, node: str) -> None:
        worker = self.workers.pop(node)
        worker.stop()
        self._scopes.pop(node).cancel()
        await self._stopped.pop(node).wait()

    def routing_table(self) -> dict:
        self.version += 1
        nodes = {
            n: {
                "address": f"{n}:0",
                "up": n in self.workers,
                "workers": [
                    {
                        "raft_url": f"mem://{n}/w0",
                        "client_address": self.workers[n].client_address if n in self.workers else None,
                    }
                ],
            }
            for n in self.nodes
        }
        groups = {}
        for g in range(self.groups_total):
            leader = self.leader_of(g)
            groups[g] = {"replicas": {n: 0 for n in self.nodes}, "leader": leader, "term": 0}
            # As the coordinator's merge_routing: each running replica's id.
            rids = {n: w.groups[g].raft.id for n, w in self.workers.items() if g in w.groups}
            if any(r != n for n, r in rids.items()):
                groups[g]["replica_ids"] = rids
        return {"version": self.version, "groups_total": self.groups_total, "nodes": nodes, "groups": groups}

    def publish_routing(self) -> None:
        table = self.routing_table()
        for w in self.workers.values():
            w.set_routing(table)

    def leader_of(self, group: int) -> str | None:
        for n, w in self.workers.items():
            if w.groups[group].raft.role == StateRole.LEADER:
                return n
        return None

    async def wait_leader(self, group: int, *, exclude: tuple[str, ...] = ()) -> str:
        while True:
            leader = self.leader_of(group)
            if leader is not None and leader not in exclude:
                return leader
            await trio.sleep(0.05)

    async def wait_applied(self, group: int, index: int, nodes: tuple[str, ...] | None = None) -> None:
        """Until every running (or the given) node's replica applied `index`."""
        while True:
            ws = [self.workers[n] for n in (nodes or tuple(self.workers))]
            if all(w.groups[group].raft.log.applied >= index for w in ws):
                return
            await trio.sleep(0.05)

    def client(self, node: str):
        return open_client(self.workers[node].client_address)


@asynccontextmanager
async def open_cluster(
    base_dir: Path,
    *,
    nodes: tuple[str, ...] = ("n1", "n2", "n3"),
    groups: int = 1,
    io_inline: bool = True,
    **overrides: Any,
) -> AsyncIterator[InProcessCluster]:
    """Start one worker per node; stop them all at the end.

    `io_inline=True` (the default here) runs storage calls in the trio thread:
    under a MockClock with autojump, a worker thread would let the virtual
    clock jump to the next deadline whenever every task waits for it. Use
    io_inline=False with the real clock to exercise the threaded path."""
    async with trio.open_nursery() as nursery:
        cluster = InProcessCluster(nursery, base_dir, nodes, groups, io_inline, **overrides)
        for n in nodes:
            await cluster.start(n)
        try:
            yield cluster
        finally:
            for n in list(cluster.workers):
                await cluster.stop(n)
