"""Worker pieces with no event loop: WorkerConfig validation, client request
parsing and result mapping, routing-table parsing, the in-memory transport."""

from __future__ import annotations

import pytest
import trio

from multiraft import kv, protocol
from multiraft.raft.types import Message, MessageType
from workers.config import Limits, WorkerConfig, WorkerConfigError
from workers.memtransport import MemNetwork
from workers.requests import BadRequest, PingRequest, ReadRequest, WriteRequest, parse_request, write_payload
from workers.worker import RoutingError, Worker

BASE = {
    "node_id": "n1",
    "worker_index": 0,
    "data_dir": "/tmp/x",
    "raft_listen_url": "tcp://127.0.0.1:7101",
    "client_listen_address": "127.0.0.1:7151",
    "groups": {0: ["n1", "n2", "n3"], "5": ["n1"]},
    "groups_total": 8,
}


def test_config_defaults_and_round_trip():
    cfg = WorkerConfig.from_dict(BASE)
    assert cfg.groups == {0: ("n1", "n2", "n3"), 5: ("n1",)}
    assert (cfg.tick_ms, cfg.election_tick, cfg.heartbeat_tick) == (100, 10, 1)
    assert cfg.sync_on_write and not cfg.lease_reads
    assert cfg.snapshot_threshold_entries == 10_000 and cfg.compact_lag_entries == 1_000
    assert cfg.limits == Limits()
    assert cfg.address == "n1/w0"
    assert WorkerConfig.from_dict(cfg.to_dict()) == cfg
    opts = WorkerConfig.from_dict({**BASE, "storage": {"max_segment_size": 1 << 20}}).storage_options()
    assert opts.max_segment_size == 1 << 20 and str(opts.base_dir) == "/tmp/x"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tick_msec": 5}, "unknown config key(s) tick_msec"),
        ({"node_id": None}, "node_id"),
        ({"node_id": "n 1"}, "node_id"),
        ({"worker_index": -1}, "worker_index"),
        ({"worker_index": True}, "worker_index"),
        ({"raft_listen_url": "127.0.0.1:7101"}, "raft_listen_url"),
        ({"raft_listen_url": "udp://x:1"}, "unsupported scheme"),
        ({"client_listen_address": "localhost"}, "client_listen_address"),
        ({"client_listen_address": "h:99999"}, "client_listen_address"),
        ({"groups": {9: ["n1"]}}, "outside 0..7"),
        ({"groups": {0: "n1"}}, "must be a list"),
        ({"groups": {0: ["n1", "n1"]}}, "listed twice"),
        ({"groups": {"x": ["n1"]}}, "group ids must be ints"),
        ({"groups": [0, 1]}, "groups must be a map"),
        ({"groups_total": 0}, "groups_total"),
        ({"tick_ms": 0}, "tick_ms"),
        ({"sync_on_write": "yes"}, "sync_on_write"),
        ({"heartbeat_tick": 10}, "heartbeat_tick must be smaller"),
        ({"limits": {"pending_requests_max": 0}}, "limits.pending_requests_max"),
        ({"limits": {"pending": 5}}, "unknown limits key(s) pending"),
        ({"storage": {"base_dir": "/"}}, "unknown storage key(s) base_dir"),
        ({"storage": {"max_segment_size": -1}}, "storage: max_segment_size"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_config_errors_are_one_clear_line(change, message):
    with pytest.raises(WorkerConfigError) as info:
        WorkerConfig.from_dict({**BASE, **change})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_missing_keys_and_wrong_type():
    with pytest.raises(WorkerConfigError, match="missing config key.*groups_total"):
        WorkerConfig.from_dict({k: v for k, v in BASE.items() if k != "groups_total"})
    with pytest.raises(WorkerConfigError, match="must be a map"):
        WorkerConfig.from_dict(["n1"])


def test_parse_requests():
    assert parse_request([1, "ping"]) == PingRequest(1)
    put = parse_request([2, "put", 3, b"k", b"v", 7, 8])
    assert put == WriteRequest(2, "put", 3, kv.Put(b"k", b"v", 7, 8))
    assert parse_request(["a", "delete", 0, b"k", 0, 0]).command == kv.Delete(b"k", 0, 0)
    assert parse_request([None, "cas", 0, b"k", None, b"n", 1, 2]).command == kv.Cas(b"k", None, b"n", 1, 2)
    get = parse_request([3, "get", 1, b"k", "lease"])
    assert get == ReadRequest(3, "get", 1, kv.Get(b"k"), True)
    assert parse_request([3, "get", 1, b"k"]).lease is False
    scan = parse_request([4, "scan", 0, b"a", b"p", None], scan_items_max=50)
    assert scan.query == kv.Scan(b"a", b"p", 50)
    assert parse_request([4, "scan", 0, b"a", b"p", 10**9], scan_items_max=50).query.limit == 50
    assert parse_request([5, "register", 2]) == WriteRequest(5, "register", 2, kv.Register())


@pytest.mark.parametrize(
    "frame",
    [
        [1],
        [1, 5],
        [1, "put", 0, b"k", b"v", 0],
        [1, "put", 0, "k", b"v", 0, 0],
        [1, "put", 0, b"k", b"v", -1, 0],
        [1, "put", True, b"k", b"v", 0, 0],
        [1, "get", 0, b"k", "stale"],
        [1, "cas", 0, b"k", 5, None, 0, 0],
        [1, "scan", 0, b"", b"", "all"],
        [{"id": 1}, "ping"],
        [[1], "ping"],
        [1, "drop_table"],
        [1, "register"],
        [1, "register", 0, 1],
    ],
)
def test_malformed_requests_raise_bad_request(frame):
    with pytest.raises(BadRequest) as info:
        parse_request(frame)
    if isinstance(frame[0], int):
        assert info.value.req_id == frame[0]
    else:
        assert info.value.req_id is None


def test_write_payloads():
    assert write_payload(kv.PutResult(True)) == ("ok", True)
    assert write_payload(kv.DeleteResult(False)) == ("ok", False)
    assert write_payload(kv.CasResult(False, b"x")) == ("ok", [False, b"x"])
    status, msg = write_payload(kv.StaleRequest(1, 2, 3))
    assert status == "error" and "stale" in msg
    assert write_payload(kv.InvalidCommand("bad"))[0] == "error"
    assert write_payload(kv.Registered(42)) == ("ok", 42)
    status, msg = write_payload(kv.SessionExpired(42, 7))
    assert status == "session_expired" and "not applied" in msg


async def test_routing_table_parsing_and_peers(tmp_path):
    net = MemNetwork()
    cfg = WorkerConfig.from_dict({**BASE, "data_dir": str(tmp_path), "groups": {0: ["n1", "n2"], 1: ["n1"]}})
    worker = Worker(cfg, transport=net.transport("n1/w0"))
    # Groups are built in run(); routing needs only the ids.
    worker.groups = {0: type("G", (), {"peers": {}})(), 1: type("G", (), {"peers": {}})()}
    table = {
        "version": 3,
        "nodes": {
            "n1": {"workers": [{"raft_url": "mem://n1/w0"}]},
            "n2": {"workers": [{"raft_url": "mem://n2/w0"}, {"raft_url": "mem://n2/w1"}]},
        },
        "groups": {"0": {"replicas": {"n1": 0, "n2": 1}}, 7: {"replicas": {"n9": 0}}},
    }
    worker.set_routing(table)
    assert worker.groups[0].peers == {"n2": "n2/w1"}
    assert worker.groups[1].peers == {}
    assert worker.transport.peers() == {"n2/w1": "mem://n2/w1"}
    assert worker.routing_version == 3
    # A moved replica: the old peer goes, the new one comes.
    table["groups"]["0"]["replicas"]["n2"] = 0
    worker.set_routing(table)
    assert worker.transport.peers() == {"n2/w0": "mem://n2/w0"}
    for bad in (
        [],
        {"nodes": {}},
        {"nodes": {}, "groups": {"x": {}}},
        {"nodes": {}, "groups": {0: {"replicas": {"n2": 0}}}},
        {"nodes": {"n2": {"workers": [{}]}}, "groups": {0: {"replicas": {"n2": 0}}}},
        {"nodes": {"n2": {"workers": []}}, "groups": {0: {"replicas": {"n2": "w0"}}}},
    ):
        with pytest.raises(RoutingError):
            worker.set_routing(bad)
    assert worker.transport.peers() == {"n2/w0": "mem://n2/w0"}  # unchanged
    assert worker.counters["routing_errors"] == 6


async def test_memtransport_delivers_batches_and_injects_faults():
    net = MemNetwork()
    a, b = net.transport("a/w0"), net.transport("b/w0")
    m = Message(MessageType.HEARTBEAT, "a", "b", 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        a.add_peer("b/w0", b.listen_url)
        assert not a.send("c/w0", 0, m)
        for g in range(5):
            assert a.send("b/w0", g, m)
        batch = await b.receive_channel.receive()
        assert [g for g, _ in batch] == [0, 1, 2, 3, 4]
        net.isolate("b/w0")
        a.send("b/w0", 0, m)
        await trio.sleep(0.01)
        assert a.stats()["dropped_partitioned"] == 1
        net.heal()
        a.send("b/w0", 9, m)
        assert (await b.receive_channel.receive())[0][0] == 9
        nursery.cancel_scope.cancel()
    assert a.stats()["dropped_unknown_peer"] == 1
    assert protocol.OK == "ok"


def test_every_config_key_the_coordinator_sends_is_accepted():
    import attrs

    sent = set(getattr(protocol, "WORKER_CONFIG_KEYS", ()))
    assert sent <= {f.name for f in attrs.fields(WorkerConfig)}


def test_a_not_leader_hint_names_the_leaders_node_not_its_replica_id() -> None:
    """Clients route to nodes; a leader may be a later incarnation (n3~2:
    multiraft.replica). Every not_leader answer passes Connection.respond."""
    from workers.client_server import Connection

    conn = Connection(None)  # type: ignore[arg-type]  # respond() only queues
    conn.respond(1, protocol.NOT_LEADER, "n3~2")
    conn.respond(2, protocol.NOT_LEADER, None)
    conn.respond(3, protocol.OK, {"leader": "n3~2"})  # other answers are left alone
    buf = protocol.FrameBuffer()
    buf.feed(b"".join(conn.out))
    assert [f[2] for f in buf.frames()] == ["n3", None, {"leader": "n3~2"}]
