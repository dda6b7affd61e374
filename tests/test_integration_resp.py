"""The RESP front-end on a real 3-node cluster (`multiraft node --redis` on
every node), driven by redis-py -- and by redis-cli / redis-benchmark when
they are installed (Debian's redis-tools; skipped otherwise).

One cluster serves the module; the tests run in file order: every command
and its reply type, pipelining, errors, a RESP process killed and restarted
by its coordinator, a whole node killed mid-workload (clients see at most
connection errors and retry; no acknowledged write is lost), and a clean
shutdown that leaves no process behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio

redis = pytest.importorskip("redis", reason="redis-py is a test dependency: pip install -e '.[test]'")
from conftest import linux_only  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from multiraft.localcluster import ProcessCluster  # noqa: E402

pytestmark = [pytest.mark.integration, linux_only]

GROUPS = 8


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def connect(address: str, **kw) -> redis.Redis:
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("retry", Retry(NoBackoff(), 0))  # see every error
    return redis.Redis(host="127.0.0.1", port=_port(address), **kw)


def wait_for_resp(address: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if connect(address, socket_timeout=2).ping():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no RESP server on {address}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcessCluster(tmp_path_factory.mktemp("resp"), nodes=3, workers=2, groups=GROUPS, tick_ms=50,
                     election_tick=10, heartbeat_tick=2, poll_interval_ms=200, redis=True)
    c.start()
    try:
        trio.run(lambda: c.wait_healthy(timeout_s=60))
        for address in c.redis_addresses:
            wait_for_resp(address)
        yield c
    finally:
        if c.any_process_left():
            c.stop()
            for n in c.nodes.values():
                n.kill()


@pytest.fixture(scope="module")
def r(cluster):
    return connect(cluster.redis_addresses[0])


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 2])
def test_every_command_through_redis_py(cluster, protocol):
    r = connect(cluster.redis_addresses[0], protocol=protocol)
    other = connect(cluster.redis_addresses[1], protocol=protocol)
    p = f"p{protocol}:"
    assert r.ping() is True
    assert r.echo("hi") == b"hi"
    assert r.execute_command("SELECT", 0) in (b"OK", "OK", True)
    assert r.set(p + "k", "v") is True
    assert other.get(p + "k") == b"v"  # written through n1's front-end, read through n2's
    assert r.get(p + "missing") is None
    assert r.set(p + "k", "w", nx=True) is None
    assert r.set(p + "k", "w", xx=True, get=True) == b"v"
    assert r.set(p + "absent", "w", xx=True) is None
    assert r.setnx(p + "k", "x") is False and r.setnx(p + "n", "x") is True
    assert r.getset(p + "k", "z") == b"w"
    assert r.mset({p + "a": "1", p + "b": "2", p + "c": "3"}) is True
    assert other.mget([p + "a", p + "b", p + "nope", p + "c"]) == [b"1", b"2", None, b"3"]
    assert r.exists(p + "a", p + "a", p + "nope") == 2
    assert r.delete(p + "a", p + "nope") == 1
    assert r.incr(p + "cnt") == 1 and r.incrby(p + "cnt", 10) == 11
    assert r.decr(p + "cnt") == 10 and r.decrby(p + "cnt", 20) == -10
    assert other.get(p + "cnt") == b"-10"
    assert r.append(p + "s", "ab") == 2 and r.append(p + "s", "cd") == 4 and r.strlen(p + "s") == 4
    assert r.type(p + "s") == b"string" and r.ttl(p + "s") == -1
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.incr(p + "s")
    with pytest.raises(redis.ResponseError, match="expiry .* is not supported"):
        r.set(p + "e", "v", ex=10)
    with pytest.raises(redis.ResponseError, match="expiry .* is not supported"):
        r.expire(p + "s", 10)
    keys = {(p + f"scan:{i}").encode() for i in range(120)}
    r.mset({k: b"v" for k in keys})
    assert set(r.scan_iter(match=p + "scan:*", count=17)) == keys
    assert set(other.keys(p + "scan:*")) == keys
    assert r.dbsize() >= len(keys) + 6
    assert r.delete(*keys) == len(keys)
    assert r.client_setname("tester") is True and r.client_getname() in (b"tester", "tester")
    info = r.info()
    assert info["redis_version"] == "7.0.0" and info["multiraft_nodes"] == 3
    cl = r.info("cluster")
    assert cl["multiraft_groups"] == GROUPS and cl["multiraft_groups_with_leader"] == GROUPS
    assert sum(cl["multiraft_leaders"].values()) == GROUPS


def test_pipelines_answer_in_order(r):
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"pipe:{i}", i)
        pipe.incr("pipe:counter")
        pipe.get(f"pipe:{i}")
    pipe.set("pipe:text", "abc")
    pipe.incr("pipe:text")  # an error in the middle of a pipeline
    pipe.get("pipe:counter")
    out = pipe.execute(raise_on_error=False)
    for i in range(100):
        assert out[3 * i : 3 * i + 3] == [True, i + 1, str(i).encode()]
    assert out[300] is True and isinstance(out[301], redis.ResponseError) and out[302] == b"100"


def test_the_native_client_shares_the_data_and_the_new_operations(cluster, r):
    from multiraft.client import SyncClient, WrongValue
    from multiraft.sharding import group_for_key

    with SyncClient(cluster.addresses) as c:
        assert c.write_many([("native:a", "1"), ("native:b", "2"), ("native:a", None)]) == 1  # the delete found a
        assert r.mget(["native:a", "native:b"]) == [None, b"2"]
        assert c.incr("native:b", 40) == 42 and r.get("native:b") == b"42"
        with pytest.raises(WrongValue):
            c.append("native:b", "x" * (1 << 20))
        assert c.append("native:b", "!") == 3 and c.put_if("native:b", "z", "absent") == (False, b"42!")
        g = group_for_key(b"native:b", GROUPS)
        keys, _ = c.scan_keys(g, prefix=b"native:")
        assert keys == [b"native:b"] and c.count(g) >= 1


def test_errors_use_redis_texts_and_bad_input_closes_only_its_connection(cluster, r):
    with pytest.raises(redis.ResponseError, match=r"^unknown command 'NOPE', with args beginning with: 'x' $"):
        r.execute_command("NOPE", "x")
    with pytest.raises(redis.ResponseError, match=r"^wrong number of arguments for 'get' command$"):
        r.execute_command("GET")
    with socket.create_connection(("127.0.0.1", _port(cluster.redis_addresses[0])), timeout=10) as s:
        s.sendall(b"*1\r\n$-5\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data == b"-ERR Protocol error: invalid bulk length\r\n"
    assert r.ping() is True


def _resp_child_pid(cluster: ProcessCluster, node: str) -> int | None:
    """The pid of the node's RESP process (a child of its coordinator)."""
    coordinator = cluster.nodes[node].process.pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[1] == str(coordinator) and fields[0] not in ("Z", "X") and b"multiraft.resp" in cmdline:
            return int(entry.name)
    return None


def test_the_coordinator_restarts_its_resp_process(cluster):
    pid = _resp_child_pid(cluster, "n3")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _resp_child_pid(cluster, "n3") in (None, pid):
        assert time.monotonic() < deadline, "the RESP process was not restarted"
        time.sleep(0.1)
    wait_for_resp(cluster.nodes["n3"].redis_address)
    assert connect(cluster.nodes["n3"].redis_address).set("after-restart", "ok") is True


def test_redis_cli_and_redis_benchmark(cluster):
    cli, bench = shutil.which("redis-cli"), shutil.which("redis-benchmark")
    if not cli or not bench:
        pytest.skip("redis-cli / redis-benchmark not installed (apt-get install redis-tools)")
    port = str(_port(cluster.redis_addresses[1]))

    def run(*args: str) -> str:
        out = subprocess.run([cli, "-p", port, *args], capture_output=True, timeout=30, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("set", "cli:k", "hello world") == "OK"
    assert run("get", "cli:k") == "hello world"
    assert run("incrby", "cli:n", "5") == "5"
    assert run("mset", "cli:a", "1", "cli:b", "2") == "OK"
    assert run("mget", "cli:a", "cli:nope", "cli:b") == "1\n\n2"
    assert run("del", "cli:a", "cli:b") == "2"
    assert set(run("--scan", "--pattern", "cli:*").split()) == {"cli:k", "cli:n"}
    assert run("incr", "cli:k").startswith("ERR value is not an integer")
    out = subprocess.run([bench, "-p", port, "-t", "set,get", "-n", "2000", "-P", "16", "-q"],
                         capture_output=True, timeout=120, text=True)
    text = out.stdout + out.stderr
    print(text.replace("\r", "\n").splitlines()[-3:])
    assert out.returncode == 0, text
    assert "SET:" in text and "GET:" in text and "requests per second" in text
    assert "ERR" not in text and "rror" not in text


def test_leader_node_killed_mid_workload_loses_no_acknowledged_write(cluster):
    status = trio.run(cluster.status)
    led: dict[str, int] = {}
    for g in status["groups"]:
        led[g["leader"]] = led.get(g["leader"], 0) + 1
    victim = max(cluster.nodes, key=lambda n: (led.get(n, 0), n))
    addresses = {n.node_id: n.redis_address for n in cluster.nodes.values()}
    acked: dict[bytes, bytes] = {}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def worker(t: int) -> None:
        nodes = sorted(addresses)
        node = nodes[t % len(nodes)]  # some clients talk to the victim's front-end
        client = connect(addresses[node], socket_timeout=8)
        i = 0
        while not stop.is_set():
            key, value = f"fail:{t}:{i}".encode(), f"v{t}.{i}".encode()
            try:
                if i % 5 == 4:
                    assert client.get(f"fail:{t}:{i - 1}".encode()) == f"v{t}.{i - 1}".encode()
                    ok = True
                else:
                    ok = client.set(key, value)
                if ok and i % 5 != 4:
                    with lock:
                        acked[key] = value
                i += 1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                node = random.choice([n for n in nodes if n != node])  # retry elsewhere
                client = connect(addresses[node], socket_timeout=8)
                time.sleep(0.05)
            except redis.ResponseError as exc:
                # only "retry" answers are acceptable (not applied, or unknown)
                assert str(exc).split()[0] in ("TRYAGAIN", "TIMEOUT", "CLUSTERDOWN"), exc
                with lock:
                    errors[str(exc).split()[0]] = errors.get(str(exc).split()[0], 0) + 1

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(9)]
    for th in threads:
        th.start()
    time.sleep(3)
    before = len(acked)
    cluster.nodes[victim].kill()
    time.sleep(6)
    stop.set()
    for th in threads:
        th.join(30)
    after_kill = len(acked) - before
    print(f"killed {victim}; acknowledged {len(acked)} writes ({after_kill} after the kill); errors {errors}")
    assert before > 20 and after_kill > 20, "the workload did not make progress"
    survivor = next(a for n, a in addresses.items() if n != victim)
    check = connect(survivor)
    items = sorted(acked.items())
    for i in range(0, len(items), 200):
        chunk = items[i : i + 200]
        got = check.mget([k for k, _ in chunk])
        for (key, value), have in zip(chunk, got, strict=True):
            assert have == value, f"acknowledged write lost: {key!r} = {have!r}, expected {value!r}"
    # the node comes back with its RESP front-end
    cluster.nodes[victim].start()
    trio.run(lambda: cluster.wait_healthy(timeout_s=60))
    wait_for_resp(addresses[victim])
    key, value = items[-1]
    assert connect(addresses[victim]).get(key) == value


def test_clean_shutdown_leaves_no_process(cluster):
    assert cluster.stop(timeout_s=20), "a node had to be SIGKILLed"
    assert not cluster.any_process_left()
