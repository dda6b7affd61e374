"""The RESP command table and server against an in-memory backend
(tests/resp_fake.py: real KV state machines, no Raft), over real sockets.

Replies are read with multiraft.resp.protocol.ReplyParser, which keeps
their RESP types apart: Status (+), ErrorReply (-), int (:), bytes ($),
None ($-1), list (*).
"""

from __future__ import annotations

import pytest
import trio
from resp_fake import MemoryBackend

from multiraft.client import ClusterUnavailable, RequestError, Timeout, UnknownOutcome
from multiraft.resp.protocol import OK, ErrorReply, Limits, ReplyParser, Status, encode_command
from multiraft.resp.scan import CursorTable, compile_glob, literal_prefix
from multiraft.resp.server import Server

E_EXPIRY_START = "ERR key expiry (EX, PX, EXAT, PXAT, KEEPTTL, EXPIRE, SETEX, ...) is not supported"


class Raw:
    """A minimal pipelined RESP client."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = ReplyParser()

    @classmethod
    async def open(cls, address: str) -> Raw:
        host, _, port = address.rpartition(":")
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def send(self, *commands) -> None:
        data = b"".join(c if isinstance(c, bytes) else encode_command(list(c)) for c in commands)
        await self.stream.send_all(data)

    async def reply(self, timeout_s: float = 5.0):
        with trio.fail_after(timeout_s):
            while True:
                ok, value = self.parser.next()
                if ok:
                    return value
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    raise EOFError("connection closed")
                self.parser.feed(data)

    async def call(self, *args):
        await self.send(args)
        return await self.reply()

    async def closed(self, timeout_s: float = 5.0) -> bool:
        with trio.fail_after(timeout_s):
            while True:
                ok, value = self.parser.next()
                if ok:
                    return False
                try:
                    data = await self.stream.receive_some(1 << 16)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
                self.parser.feed(data)


@pytest.fixture
async def env(nursery):
    backend = MemoryBackend(groups=8)
    server = Server(backend)
    address = await nursery.start(server.serve, "127.0.0.1", 0)
    client = await Raw.open(address)
    yield server, backend, address, client
    await client.stream.aclose()


def err(text: str) -> ErrorReply:
    return ErrorReply(text)


# --- connection commands ------------------------------------------------------


async def test_ping_echo_select_quit(env):
    _, _, _, c = env
    assert await c.call("PING") == Status("PONG")
    assert await c.call("ping", "hi") == b"hi"
    assert await c.call("PING", "a", "b") == err("ERR wrong number of arguments for 'ping' command")
    assert await c.call("ECHO", b"\x00bin\r\n") == b"\x00bin\r\n"
    assert await c.call("SELECT", "0") == OK
    assert await c.call("SELECT", "1") == err("ERR DB index is out of range")
    assert await c.call("SELECT", "x") == err("ERR value is not an integer or out of range")
    await c.send(("QUIT",), ("PING",))
    assert await c.reply() == OK
    assert await c.closed()


async def test_hello_client_command_config(env):
    server, _, _, c = env
    assert await c.call("HELLO", "4") == err("NOPROTO sorry, this protocol version is not supported")
    hello = await c.call("HELLO", "2", "SETNAME", "app")
    assert hello[:6] == [b"server", b"redis", b"version", b"7.0.0", b"proto", 2]
    assert await c.call("CLIENT", "GETNAME") == b"app"
    assert await c.call("CLIENT", "SETNAME", "my name") == err(
        "ERR Client names cannot contain spaces, newlines or special characters.")
    assert await c.call("CLIENT", "SETNAME", "") == OK
    assert await c.call("CLIENT", "GETNAME") is None
    assert isinstance(await c.call("CLIENT", "ID"), int)
    assert await c.call("CLIENT", "SETINFO", "LIB-NAME", "redis-py") == OK
    assert b"lib-name=redis-py" in await c.call("CLIENT", "LIST")
    assert await c.call("CLIENT", "SETNAME") == err("ERR wrong number of arguments for 'client|setname' command")
    assert await c.call("CLIENT", "Nope") == err("ERR unknown subcommand 'Nope'. Try CLIENT HELP.")
    assert await c.call("CLIENT") == err("ERR wrong number of arguments for 'client' command")
    count = await c.call("COMMAND", "COUNT")
    assert count == len(await c.call("COMMAND")) and count > 30
    [get_info, missing] = await c.call("COMMAND", "INFO", "get", "nope")
    assert get_info[:6] == [b"get", 2, [Status("readonly"), Status("fast")], 1, 1, 1] and missing is None
    assert await c.call("COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
    assert await c.call("COMMAND", "DOCS") == []
    assert await c.call("CONFIG", "GET", "save") == [b"save", b""]
    assert await c.call("CONFIG", "GET", "append*", "databases") == [b"appendonly", b"no", b"databases", b"1"]
    assert (await c.call("CONFIG", "SET", "save", "")).message.startswith("ERR CONFIG SET is not supported")


async def test_resp3_after_hello_3(env):
    _, _, _, c = env
    hello = await c.call("HELLO", "3")
    assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
    assert await c.call("GET", "missing") is None  # _ in RESP3
    await c.send(("GET", "missing"))
    assert c.parser._buf == b"" and await c.reply() is None


async def test_info_has_server_clients_cluster_and_keyspace_sections(env):
    _, _, _, c = env
    await c.call("SET", "k", "v")
    text = (await c.call("INFO")).decode()
    for line in ("# Server", "redis_version:7.0.0", "# Clients", "connected_clients:1", "# Cluster",
                 "cluster_enabled:0", "multiraft_nodes:3", "multiraft_groups:8", "multiraft_groups_with_leader:8",
                 "multiraft_leaders:n1=3,n2=3,n3=2", "# Keyspace", "db0:keys=1,expires=0,avg_ttl=0"):
        assert line in text.split("\r\n"), line
    only = (await c.call("INFO", "cluster")).decode()
    assert "# Cluster" in only and "# Server" not in only


# --- errors ---------------------------------------------------------------------


async def test_unknown_commands_and_arity_use_redis_texts(env):
    _, _, _, c = env
    assert await c.call("FOO") == err("ERR unknown command 'FOO', with args beginning with: ")
    assert await c.call("foo", "a", "b c") == err("ERR unknown command 'foo', with args beginning with: 'a' 'b c' ")
    long = await c.call("x" * 200, "y" * 200, "z")
    assert long.message == "ERR unknown command '" + "x" * 128 + "', with args beginning with: '" + "y" * 128 + "' "
    for cmd, name in ((("GET",), "get"), (("GET", "a", "b"), "get"), (("SET", "k"), "set"),
                      (("MSET", "a", "1", "b"), "mset"), (("DEL",), "del"), (("INCRBY", "k"), "incrby")):
        assert await c.call(*cmd) == err(f"ERR wrong number of arguments for '{name}' command")
    assert await c.call("PING") == Status("PONG")  # the connection is fine


async def test_backend_errors_become_redis_errors(env):
    _, backend, _, c = env
    for exc, prefix in (
        (ClusterUnavailable("no coordinator"), "CLUSTERDOWN no coordinator"),
        (Timeout("slow", outcome_unknown=True), "TIMEOUT the write may or may not have been applied: slow"),
        (Timeout("slow"), "TRYAGAIN slow"),
        (UnknownOutcome("evicted"), "ERR unknown outcome: the write may or may not have been applied "
                                    "(its session expired): evicted"),
        (RequestError("key too big"), "ERR key too big"),
    ):
        backend.fail_with = exc
        assert await c.call("SET", "k", "v") == err(prefix)
    backend.fail_with = None
    assert await c.call("SET", "k", "v") == OK


async def test_protocol_errors_close_only_that_connection(env):
    _, _, address, c = env
    other = await Raw.open(address)
    await other.send(("PING",), b"*1\r\n$x\r\n", ("PING",))
    assert await other.reply() == Status("PONG")  # what came before is answered
    assert await other.reply() == err("ERR Protocol error: invalid bulk length")
    assert await other.closed()
    bad = await Raw.open(address)
    await bad.send(b'SET "unbalanced\r\n')
    assert await bad.reply() == err("ERR Protocol error: unbalanced quotes in request")
    assert await bad.closed()
    big = await Raw.open(address)
    await big.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + str(64 << 20).encode() + b"\r\n")
    assert await big.reply() == err("ERR Protocol error: invalid bulk length")
    assert await big.closed()
    assert await c.call("PING") == Status("PONG")


async def test_inline_commands_work(env):
    _, _, _, c = env
    await c.send(b'SET greeting "hello world"\r\nGET greeting\r\n')
    assert await c.reply() == OK
    assert await c.reply() == b"hello world"


# --- strings ----------------------------------------------------------------------


async def test_get_set_and_options(env):
    _, _, _, c = env
    assert await c.call("GET", "k") is None
    assert await c.call("SET", "k", "v1") == OK
    assert await c.call("GET", "k") == b"v1"
    assert await c.call("SET", "k", "v2", "NX") is None
    assert await c.call("SET", "n", "v", "nx") == OK
    assert await c.call("SET", "absent", "v", "XX") is None
    assert await c.call("SET", "k", "v3", "XX") == OK
    assert await c.call("SET", "k", "v4", "GET") == b"v3"
    assert await c.call("SET", "new", "v", "GET") is None
    assert await c.call("SET", "k", "v5", "NX", "GET") == b"v4"  # not set, old value
    assert await c.call("GET", "k") == b"v4"
    assert await c.call("SET", "k", "v6", "XX", "GET") == b"v4"
    assert await c.call("SET", "k", "v", "NX", "XX") == err("ERR syntax error")
    assert await c.call("SET", "k", "v", "BOGUS") == err("ERR syntax error")
    assert await c.call("SET", "k", "v", "EX") == err("ERR syntax error")
    for opts in (("EX", "10"), ("PX", "5"), ("EXAT", "1"), ("PXAT", "1"), ("KEEPTTL",), ("NX", "EX", "3")):
        assert (await c.call("SET", "k", "v", *opts)).message.startswith(E_EXPIRY_START)
    assert await c.call("GET", "k") == b"v6"
    assert await c.call("SETNX", "k", "x") == 0
    assert await c.call("SETNX", "fresh", "x") == 1
    assert await c.call("GETSET", "fresh", "y") == b"x"
    assert await c.call("GETSET", "fresh2", "y") is None
    assert await c.call("GET", "fresh") == b"y"


async def test_multi_key_commands(env):
    _, backend, _, c = env
    assert await c.call("MSET", "a", "1", "b", "2", "c", "3", "a", "4") == OK
    assert await c.call("MGET", "a", "b", "zz", "c") == [b"4", b"2", None, b"3"]
    assert await c.call("EXISTS", "a", "a", "zz", "b") == 3
    assert await c.call("DEL", "a", "a", "zz") == 1
    assert await c.call("UNLINK", "b") == 1
    assert await c.call("EXISTS", "a", "b") == 0
    # one atomic entry per group: as many PutMany as groups touched
    keys = [f"k{i}" for i in range(40)]
    before = sum(backend.index)
    await c.call("MSET", *[x for k in keys for x in (k, "v")])
    touched = {backend.group_of(k.encode()) for k in keys}
    assert sum(backend.index) - before == len(touched)
    assert await c.call("DEL", *keys) == 40


async def test_counters(env):
    _, _, _, c = env
    assert await c.call("INCR", "n") == 1
    assert await c.call("INCRBY", "n", "41") == 42
    assert await c.call("DECR", "n") == 41
    assert await c.call("DECRBY", "n", "-9") == 50
    assert await c.call("INCRBY", "n", "-100") == -50
    assert await c.call("GET", "n") == b"-50"
    assert await c.call("DECRBY", "n", "-9223372036854775808") == err("ERR decrement would overflow")
    assert await c.call("INCRBY", "n", "1.5") == err("ERR value is not an integer or out of range")
    assert await c.call("INCRBY", "n", "99999999999999999999") == err("ERR value is not an integer or out of range")
    await c.call("SET", "s", "abc")
    assert await c.call("INCR", "s") == err("ERR value is not an integer or out of range")
    assert await c.call("SET", "big", "9223372036854775807") == OK
    assert await c.call("INCR", "big") == err("ERR increment or decrement would overflow")
    assert await c.call("GET", "big") == b"9223372036854775807"


async def test_append_strlen_type_and_ttl(env):
    _, _, _, c = env
    assert await c.call("APPEND", "s", "ab") == 2
    assert await c.call("APPEND", "s", "cd") == 4
    assert await c.call("GET", "s") == b"abcd"
    assert await c.call("STRLEN", "s") == 4
    assert await c.call("STRLEN", "none") == 0
    assert await c.call("TYPE", "s") == Status("string")
    assert await c.call("TYPE", "none") == Status("none")
    assert await c.call("TTL", "s") == -1
    assert await c.call("PTTL", "none") == -2
    assert await c.call("PERSIST", "s") == 0
    assert await c.call("GETEX", "s") == b"abcd"
    assert await c.call("GETEX", "s", "PERSIST") == b"abcd"
    for cmd in (("EXPIRE", "s", "10"), ("PEXPIRE", "s", "10"), ("SETEX", "s", "10", "v"), ("GETEX", "s", "EX", "1")):
        assert (await c.call(*cmd)).message.startswith(E_EXPIRY_START)


# --- the key space ------------------------------------------------------------------


async def test_dbsize_keys_flushdb(env):
    _, _, _, c = env
    assert await c.call("DBSIZE") == 0
    await c.call("MSET", "user:1", "a", "user:2", "b", "user:10", "c", "other", "d", "u[x]", "e")
    assert await c.call("DBSIZE") == 5
    assert sorted(await c.call("KEYS", "*")) == sorted([b"user:1", b"user:2", b"user:10", b"other", b"u[x]"])
    assert sorted(await c.call("KEYS", "user:?")) == [b"user:1", b"user:2"]
    assert sorted(await c.call("KEYS", "user:1*")) == [b"user:1", b"user:10"]
    assert await c.call("KEYS", "u\\[x\\]") == [b"u[x]"]
    assert await c.call("KEYS", "nomatch*") == []
    assert await c.call("FLUSHDB", "bogus") == err("ERR syntax error")
    assert await c.call("FLUSHALL", "ASYNC") == OK
    assert await c.call("DBSIZE") == 0


async def test_scan_walks_every_group_with_cursors(env):
    server, backend, address, c = env
    keys = {f"key:{i:04d}".encode() for i in range(300)} | {b"other:1", b"other:2"}
    await c.call("MSET", *[x for k in sorted(keys) for x in (k, b"v")])
    seen: list[bytes] = []
    cursor = b"0"
    calls = 0
    while True:
        cursor, page = await c.call("SCAN", cursor, "COUNT", "25")
        seen += page
        calls += 1
        if cursor == b"0":
            break
        assert int(cursor) > 0
    assert sorted(seen) == sorted(keys) and len(seen) == len(keys)
    assert calls > 5
    # MATCH (its literal prefix is pushed down), TYPE, and cursors shared by
    # every connection of the server
    other = await Raw.open(address)
    seen = []
    cursor = b"0"
    while True:
        cursor, page = await (c if len(seen) % 2 else other).call("SCAN", cursor, "MATCH", "other:*", "COUNT", "1")
        seen += page
        if cursor == b"0":
            break
    assert sorted(seen) == [b"other:1", b"other:2"]
    assert await c.call("SCAN", "0", "TYPE", "hash") == [b"0", []]
    cursor, page = await c.call("SCAN", "0", "TYPE", "string", "COUNT", "1000")
    assert cursor == b"0" and len(page) == len(keys)
    assert await c.call("SCAN", "x") == err("ERR invalid cursor")
    assert await c.call("SCAN", str(1 << 40)) == err("ERR invalid cursor")
    assert await c.call("SCAN", "0", "COUNT", "0") == err("ERR syntax error")
    assert await c.call("SCAN", "0", "COUNT", "x") == err("ERR value is not an integer or out of range")
    assert await c.call("SCAN", "0", "MATCH") == err("ERR syntax error")


def test_glob_matching_follows_redis():
    cases = [
        (b"*", b"anything", True), (b"a*", b"abc", True), (b"a*", b"ba", False),
        (b"h?llo", b"hello", True), (b"h?llo", b"hllo", False), (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False), (b"h[^e]llo", b"hallo", True), (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True), (b"h[b-a]llo", b"hbllo", True), (b"h[a-b]llo", b"hcllo", False),
        (b"h\\*llo", b"h*llo", True), (b"h\\*llo", b"hello", False), (b"a\\", b"a\\", True),
        (b"[]x", b"]x", False), (b"[^]x", b"qx", True), (b"a[bc", b"ab", True), (b"a[bc", b"ac", True),
        (b"*.txt", b"dir/a\n.txt", True), (b"[\\]]", b"]", True), (b"a**b", b"ab", True),
    ]
    for pattern, key, expected in cases:
        assert compile_glob(pattern)(key) is expected, (pattern, key)
    assert literal_prefix(b"user:*") == b"user:"
    assert literal_prefix(b"a\\*b?c") == b"a*b"
    assert literal_prefix(b"[ab]") == b""


def test_cursor_table_is_bounded():
    t = CursorTable(entries_max=3, bytes_max=10)
    handles = [t.put(0, b"k%d" % i) for i in range(3)]
    assert all(h >= 1 << 32 for h in handles)
    t.get(handles[0])  # recently used: kept
    t.put(1, b"new")
    assert t.get(handles[1]) is None and t.get(handles[0]) == (0, b"k0")
    t.put(2, b"x" * 9)  # over bytes_max: the oldest go
    assert len(t) <= 2


# --- pipelining and order -----------------------------------------------------------


async def test_a_pipeline_runs_concurrently_and_answers_in_order(env):
    _, backend, _, c = env
    await c.call("MSET", *[x for i in range(100) for x in (f"k{i}", f"v{i}")])
    backend.delay_s = 0.2
    start = trio.current_time()
    await c.send(*[("GET", f"k{i}") for i in range(100)])
    replies = [await c.reply() for _ in range(100)]
    assert replies == [f"v{i}".encode() for i in range(100)]
    assert trio.current_time() - start < 2.0  # not 100 x 0.2 s


async def test_commands_on_one_key_keep_their_order(env):
    _, backend, _, c = env
    backend.delays = {"put": 0.3, "incr": 0.05}
    await c.send(("SET", "k", "1"), ("GET", "k"), ("INCR", "k"), ("INCR", "k"), ("GET", "k"), ("GET", "other"))
    assert [await c.reply() for _ in range(6)] == [OK, b"1", 2, 3, b"3", None]
    # reads of a key do not wait for each other, writes wait for reads
    backend.delays = {"get": 0.2}
    start = trio.current_time()
    await c.send(*[("GET", "k") for _ in range(20)], ("SET", "k", "x"), ("GET", "k"))
    replies = [await c.reply() for _ in range(22)]
    assert replies == [b"3"] * 20 + [OK, b"x"]
    assert trio.current_time() - start < 1.5


async def test_key_space_commands_are_barriers(env):
    _, backend, _, c = env
    backend.delays = {"write_many": 0.3}
    await c.send(("MSET", "a", "1", "b", "2"), ("DBSIZE",), ("DEL", "a"), ("KEYS", "*"))
    assert [await c.reply() for _ in range(4)] == [OK, 2, 1, [b"b"]]


async def test_bounded_in_flight_commands(nursery):
    backend = MemoryBackend(groups=4)
    backend.delay_s = 0.01
    server = Server(backend, inflight_max=4)
    address = await nursery.start(server.serve, "127.0.0.1", 0)
    c = await Raw.open(address)
    await c.send(*[("INCR", f"n{i % 3}") for i in range(60)])
    replies = [await c.reply() for _ in range(60)]
    assert replies == [i // 3 + 1 for i in range(60)]


async def test_connections_beyond_the_limit_are_refused(nursery):
    server = Server(MemoryBackend(), connections_max=1)
    address = await nursery.start(server.serve, "127.0.0.1", 0)
    first = await Raw.open(address)
    assert await first.call("PING") == Status("PONG")
    second = await Raw.open(address)
    assert await second.reply() == err("ERR max number of clients reached")
    assert await second.closed()
    assert await first.call("PING") == Status("PONG")


async def test_limits_are_applied(nursery):
    server = Server(MemoryBackend(), limits=Limits(bulk_bytes_max=100, command_bytes_max=1000))
    address = await nursery.start(server.serve, "127.0.0.1", 0)
    c = await Raw.open(address)
    assert await c.call("SET", "k", "v" * 100) == OK
    assert await c.call("SET", "k", "v" * 101) == err("ERR Protocol error: invalid bulk length")
    assert await c.closed()


async def test_long_backend_errors_are_cut(env):
    _, backend, _, c = env
    backend.fail_with = RequestError("put " + "k" * 70000 + ": too big")
    reply = await c.call("SET", "k", "v")
    assert reply.message.startswith("ERR put kkk") and len(reply.message) == 512
