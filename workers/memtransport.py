"""An in-memory raft transport for tests: the subset of multiraft.transport.Transport
that a worker uses, between workers running in one trio run.

    net = MemNetwork()
    t = net.transport("n1/w0")          # listen_url "mem://n1/w0"
    t.add_peer("n2/w0", "mem://n2/w0")
    t.send("n2/w0", group, message)      # never blocks; False (counted) when dropped

Like the nng transport, `send()` queues per peer and one flusher task per
transport delivers each peer's queue as one batch (`list[(group, Message)]`) to
the target's bounded `receive_channel`; a full inbox drops and counts. Faults for
tests: `net.isolate(address)`, `net.partition(a, b)` (both directions),
`net.heal()`. A message to a worker that is not running is dropped
(`dropped_peer_down`), as nng would.

Messages are immutable (NamedTuples of ints, strings, bytes, tuples, frozen
attrs), so they are shared, not copied.
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from multiraft.raft.types import Message

__all__ = ["MemNetwork", "MemTransport"]


class MemNetwork:
    """The switchboard: every MemTransport made by one network can reach the others."""

    def __init__(self, *, inbox_batches_max: int = 256) -> None:
        self.inbox_batches_max = inbox_batches_max
        self._running: dict[str, MemTransport] = {}
        self._isolated: set[str] = set()
        self._cut: set[frozenset[str]] = set()

    def transport(self, address: str, listen_url: str | None = None, **_options: Any) -> MemTransport:
        return MemTransport(self, address)

    def isolate(self, address: str) -> None:
        """Drop everything to and from `address` until heal()."""
        self._isolated.add(address)

    def partition(self, a: str, b: str) -> None:
        self._cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self._isolated.clear()
        self._cut.clear()

    def can_deliver(self, src: str, dst: str) -> bool:
        if src in self._isolated or dst in self._isolated:
            return False
        return not self._cut or frozenset((src, dst)) not in self._cut


class MemTransport:
    """In-memory stand-in for multiraft.transport.Transport (see the module docstring)."""

    def __init__(self, net: MemNetwork, address: str) -> None:
        self.net = net
        self.address = address
        self.listen_url = f"mem://{address}"
        send, self.receive_channel = trio.open_memory_channel[list[tuple[int, Message]]](
            net.inbox_batches_max
        )
        self._inbox = send
        self._peers: dict[str, str] = {}
        self._outbox: dict[str, list[tuple[int, Message]]] = {}
        self._wakeup = trio.Event()
        self._started = False
        self._stats: collections.Counter[str] = collections.Counter()

    # -- lifecycle --------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError("a MemTransport runs once")
        self._started = True
        if self.net._running.get(self.address) is not None:
            raise RuntimeError(f"{self.address} is already running on this MemNetwork")
        self.net._running[self.address] = self
        try:
            task_status.started(self)
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._flush()
                await trio.lowlevel.checkpoint()
        finally:
            if self.net._running.get(self.address) is self:
                del self.net._running[self.address]
            self._inbox.close()

    def close(self) -> None:
        self._inbox.close()

    # -- peers ------------------------------------------------------------------

    def add_peer(self, address: str, url: str) -> None:
        if address in self._peers:
            raise ValueError(f"peer {address!r} already added")
        self._peers[address] = url

    def remove_peer(self, address: str) -> None:
        del self._peers[address]
        dropped = self._outbox.pop(address, ())
        self._stats["dropped_unknown_peer"] += len(dropped)

    def peers(self) -> dict[str, str]:
        return dict(self._peers)

    def is_connected(self, address: str) -> bool:
        return address in self._peers and address in self.net._running

    # -- data -------------------------------------------------------------------

    def send(self, address: str, group: int, msg: Message) -> bool:
        if address not in self._peers:
            self._stats["dropped_unknown_peer"] += 1
            return False
        box = self._outbox.get(address)
        if box is None:
            box = self._outbox[address] = []
        box.append((group, msg))
        self._wakeup.set()
        return True

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        stats = self._stats
        for dst, batch in outbox.items():
            target = self.net._running.get(dst)
            if target is None:
                stats["dropped_peer_down"] += len(batch)
                continue
            if not self.net.can_deliver(self.address, dst):
                stats["dropped_partitioned"] += len(batch)
                continue
            try:
                target._inbox.send_nowait(batch)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                stats["dropped_inbox_full"] += len(batch)
                continue
            stats["frames_sent"] += 1
            stats["messages_sent"] += len(batch)

    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["peers_connected"] = sum(1 for a in self._peers if a in self.net._running)
        out["outbox_messages"] = sum(len(b) for b in self._outbox.values())
        return out
