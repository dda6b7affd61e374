"""A lossy, duplicating, reordering network with partitions, in simulated steps."""

from __future__ import annotations

import heapq
import random

from multiraft.raft.types import Message


class SimNetwork:
    def __init__(self, rng: random.Random, drop_rate: float, dup_rate: float, delay_steps_max: int):
        self.rng = rng
        self.drop_rate = drop_rate
        self.dup_rate = dup_rate
        self.delay_steps_max = delay_steps_max
        # (deliver_at, sequence, group, message): the sequence keeps heap order
        # deterministic among messages due at the same step.
        self._queue: list[tuple[int, int, int, Message]] = []
        self._seq = 0
        # Directed pairs (from_node, to_node) that cannot talk.
        self.blocked: set[tuple[str, str]] = set()
        self.sent = 0
        self.dropped = 0

    def send(self, now: int, group: int, m: Message) -> None:
        self.sent += 1
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1
            return
        copies = 2 if self.dup_rate and self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.delay_steps_max)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, group, m))

    def due(self, now: int) -> list[tuple[int, Message]]:
        out = []
        q = self._queue
        while q and q[0][0] <= now:
            _, _, group, m = heapq.heappop(q)
            if (m.frm, m.to) in self.blocked:
                self.dropped += 1
                continue
            out.append((group, m))
        return out

    def heal(self) -> None:
        self.blocked.clear()
        self.drop_rate = 0.0
        self.dup_rate = 0.0

    def partition(self, side_a: set[str], side_b: set[str], one_way: bool) -> None:
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))
