"""A lossy, duplicating, reordering, corrupting network with partitions, in
simulated steps."""

from __future__ import annotations

import heapq
import random

from multiraft import wire
from multiraft.raft.types import Message

from .safety import SafetyViolation


class SimNetwork:
    def __init__(
        self,
        rng: random.Random,
        drop_rate: float,
        dup_rate: float,
        delay_steps_max: int,
        corrupt_rate: float = 0.0,
    ):
        self.rng = rng
        self.corrupt_rate = corrupt_rate
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
        self.corrupted = 0  # damaged frames the decoder rejected (none delivered)

    def send(self, now: int, group: int, m: Message) -> None:
        self.sent += 1
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1
            return
        if self.corrupt_rate and self.rng.random() < self.corrupt_rate:
            self._corrupt(group, m)
            return
        copies = 2 if self.dup_rate and self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            delay = self.rng.randint(1, self.delay_steps_max)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, group, m))

    def _corrupt(self, group: int, m: Message) -> None:
        """Messages travel as objects; only a damaged one is encoded, with the
        real frame encoder, one bit flipped, and run through the real decoder,
        which must reject it: a damaged frame is never delivered."""
        data = bytearray(wire.encode_raft_batch(f"{m.frm}/w0", f"{m.to}/w0", [(group, m)]))
        bit = self.rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        try:
            frame = wire.decode_frame(bytes(data))
        except wire.FrameError:
            self.corrupted += 1
            return
        raise SafetyViolation(
            f"wire: a frame with bit {bit} of {len(data) * 8} flipped was accepted: {frame.payload!r:.300}"
        )

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
        self.corrupt_rate = 0.0

    def partition(self, side_a: set[str], side_b: set[str], one_way: bool) -> None:
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))
