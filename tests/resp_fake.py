"""An in-memory stand-in for the RESP backend (multiraft.client.Client).

Each group is a real KVStateMachine, fed the same encoded commands a worker
would apply, so results (INCR parsing, PutMany counts, key pages) are the
real ones; only Raft and the network are missing. `fail_with` makes every
call raise that error (to check the error mapping); `delay_s` makes every
call sleep first, `delays` some methods only (to check pipelining and
ordering).
"""

from __future__ import annotations

import trio

from multiraft import kv
from multiraft.client import WrongValue
from multiraft.sharding import group_for_key

_CONDITIONS = {"always": kv.PUT_IF_ALWAYS, "absent": kv.PUT_IF_ABSENT, "present": kv.PUT_IF_PRESENT}


class MemoryBackend:
    def __init__(self, groups: int = 8, *, scan_bytes_max: int = 16 << 20, scan_items_max: int = 10_000) -> None:
        self.groups_total = groups
        self.machines = [kv.KVStateMachine() for _ in range(groups)]
        self.index = [0] * groups
        self.scan_bytes_max = scan_bytes_max
        self.scan_items_max = scan_items_max
        self.fail_with: Exception | None = None
        self.delay_s = 0.0
        self.delays: dict[str, float] = {}  # per method name, over delay_s
        self.calls: list[str] = []

    async def _enter(self, what: str) -> None:
        self.calls.append(what)
        delay = self.delays.get(what, self.delay_s)
        if delay:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.fail_with is not None:
            raise self.fail_with

    def group_of(self, key: bytes) -> int:
        return group_for_key(key, self.groups_total)

    def _apply(self, g: int, cmd: object) -> object:
        self.index[g] += 1
        return self.machines[g].apply(self.index[g], kv.encode_command(cmd))

    async def get(self, key: bytes) -> bytes | None:
        await self._enter("get")
        return self.machines[self.group_of(key)].get(key)

    async def put(self, key: bytes, value: bytes) -> bool:
        await self._enter("put")
        return self._apply(self.group_of(key), kv.Put(key, value)).prev_existed

    async def put_if(self, key: bytes, value: bytes, condition: str = "always") -> tuple[bool, bytes | None]:
        await self._enter("put_if")
        r = self._apply(self.group_of(key), kv.PutIf(key, value, _CONDITIONS[condition]))
        return r.done, r.previous

    async def write_many(self, items) -> int:
        await self._enter("write_many")
        by_group: dict[int, list] = {}
        for k, v in items:
            by_group.setdefault(self.group_of(k), []).append((k, v))
        return sum(self._apply(g, kv.PutMany(tuple(pairs))).existed for g, pairs in sorted(by_group.items()))

    async def incr(self, key: bytes, delta: int = 1) -> int:
        await self._enter("incr")
        r = self._apply(self.group_of(key), kv.Incr(key, delta))
        if r.error:
            raise WrongValue("incr", {kv.INCR_NOT_INTEGER: "not_integer", kv.INCR_OVERFLOW: "overflow"}[r.error])
        return r.value

    async def append(self, key: bytes, suffix: bytes) -> int:
        await self._enter("append")
        r = self._apply(self.group_of(key), kv.Append(key, suffix))
        if r.length is None:
            raise WrongValue("append", "too_large")
        return r.length

    async def scan_keys(self, group: int, start: bytes = b"", prefix: bytes = b"", limit: int | None = None):
        await self._enter("scan_keys")
        limit = self.scan_items_max if limit is None else min(limit, self.scan_items_max)
        r = self.machines[group].scan_keys(start, limit, prefix=prefix, bytes_max=self.scan_bytes_max)
        return list(r.keys), r.next

    async def count(self, group: int | None = None) -> int:
        await self._enter("count")
        if group is not None:
            return len(self.machines[group])
        return sum(len(m) for m in self.machines)

    async def cluster_status(self) -> dict:
        await self._enter("cluster_status")
        nodes = ["n1", "n2", "n3"]
        return {
            "node": "n1",
            "groups_total": self.groups_total,
            "replicas": 3,
            "nodes": [{"id": n, "address": f"127.0.0.1:{7100 + 100 * i}", "up": True,
                       "workers": [{"index": 0, "up": True}]} for i, n in enumerate(nodes)],
            "groups": [{"id": g, "leader": nodes[g % 3]} for g in range(self.groups_total)],
        }

    def data(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for m in self.machines:
            out.update(m.scan())
        return out
