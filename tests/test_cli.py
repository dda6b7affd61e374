"""Node options, `multiraft` and `multiraft-admin`: help, bad input, exit codes.

The commands that need a running node use one started with the fake worker
(tests/fake_worker.py), which is quick and independent of the real worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_WORKER_ENV

from multiraft import admin_cli, cli
from multiraft.localcluster import ProcessCluster, free_base_ports
from multiraft.nodeconfig import ConfigError, RawOptions, load_toml, parse_address, parse_peers, resolve

# --- option parsing ---


def test_defaults_are_a_one_node_cluster(tmp_path: Path) -> None:
    o = resolve(RawOptions(workers=8), cwd=tmp_path)
    assert (o.node_id, o.listen_host, o.listen_port) == ("n1", "127.0.0.1", 7100)
    assert o.data_dir == tmp_path / "multiraft-data" / "n1"
    assert (o.workers, o.groups, o.replicas) == (8, 64, 1)
    assert o.peers == {"n1": ("127.0.0.1", 7100)}
    assert o.worker_raft_url(0) == "tcp://127.0.0.1:7101"
    assert o.worker_client_address(7) == "127.0.0.1:7158"


def test_three_node_options(tmp_path: Path) -> None:
    o = resolve(RawOptions(node_id="n2", peers="n3=127.0.0.1:7300, n1=127.0.0.1:7100,n2=127.0.0.1:7200"), cwd=tmp_path)
    assert list(o.peers) == ["n1", "n2", "n3"]
    assert (o.listen_port, o.replicas) == (7200, 3)
    o2 = resolve(
        RawOptions(node_id="n2", listen="0.0.0.0:7200", peers="n1=10.0.0.1:7100,n2=10.0.0.2:7200"), cwd=tmp_path
    )
    assert o2.listen_host == "0.0.0.0" and o2.address == "10.0.0.2:7200"
    assert o2.worker_raft_url(1, advertised=False) == "tcp://0.0.0.0:7202"


@pytest.mark.parametrize(
    "raw, message",
    [
        (RawOptions(workers=50), "--workers"),
        (RawOptions(workers=0), "--workers"),
        (RawOptions(groups=0), "--groups"),
        (RawOptions(replicas=2), "--replicas 2 needs"),
        (RawOptions(listen="localhost"), "HOST:PORT"),
        (RawOptions(listen="h:99999"), "port"),
        (RawOptions(node_id="n 1"), "node id"),
        (RawOptions(node_id="n4", peers="n1=h:7100"), "must list this node"),
        (RawOptions(peers="n1=h:7100,n2=h:7150"), "ports apart"),
        (RawOptions(peers="n1"), "NODE_ID=HOST:PORT"),
        (RawOptions(listen="127.0.0.1:7000", peers="n1=127.0.0.1:7100"), "differs"),
        (RawOptions(election_tick=2, heartbeat_tick=2), "heartbeat"),
        (RawOptions(log_level="loud"), "log-level"),
        (RawOptions(listen="h:65500"), "too high"),
    ],
)
def test_bad_options_are_one_line_errors(raw: RawOptions, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(raw, cwd=tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_helpers() -> None:
    assert parse_address("[::1]:7100") == ("::1", 7100)
    assert parse_peers({"b": "h:2", "a": "h:1"}) == {"a": ("h", 1), "b": ("h", 2)}
    with pytest.raises(ConfigError):
        parse_peers("a=h:1,a=h:2")


def test_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text('node-id = "n2"\nworkers = 3\npeers = {n1 = "127.0.0.1:7100", n2 = "127.0.0.1:7200"}\n')
    raw = load_toml(f)
    o = resolve(RawOptions(workers=4).merged_over(raw), cwd=tmp_path)  # flags win
    assert (o.node_id, o.workers, o.listen_port) == ("n2", 4, 7200)
    f.write_text("workers = 'many'\n")
    with pytest.raises(ConfigError, match="integer"):
        load_toml(f)
    f.write_text("wrokers = 2\n")
    with pytest.raises(ConfigError, match="unknown option"):
        load_toml(f)
    f.write_text("workers = \n")
    with pytest.raises(ConfigError, match="TOML"):
        load_toml(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


# --- the commands, in-process ---


def _run(main, argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_teaches(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "multiraft node --workers 8" in out and "--peers" in out and "demo" in out
    with pytest.raises(SystemExit):
        cli.main(["node", "--help"])
    out = capsys.readouterr().out
    assert "P+51+i" in out and "--config" in out
    with pytest.raises(SystemExit):
        admin_cli.main(["--help"])
    assert "status --json" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, code, fragment",
    [
        (["--frobnicate"], 2, "unrecognized arguments"),
        (["put", "k"], 2, "required"),
        (["get", "k", "--cluster", "nohost"], 2, "HOST:PORT"),
        (["get", "k", "--cluster", "127.0.0.1:1"], 1, "no coordinator"),
        (["--timeout", "0", "get", "k"], 2, "--timeout"),
        (["node", "--workers", "99"], 2, "--workers"),
        (["node", "--config", "/nonexistent/x.toml"], 2, "does not exist"),
    ],
)
def test_bad_input_gets_one_line_and_an_exit_code(argv, code, fragment, capsys) -> None:
    got, out, err = _run(cli.main, argv, capsys)
    assert got == code
    assert fragment in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_admin_bad_input(capsys) -> None:
    got, _, err = _run(admin_cli.main, ["--cluster", "127.0.0.1:1", "status"], capsys)
    assert got == 1 and "no coordinator" in err and len(err.strip().splitlines()) == 1
    got, _, err = _run(admin_cli.main, ["status", "--bogus"], capsys)
    assert got == 2 and len(err.strip().splitlines()) == 1


def test_foreign_data_dir_is_refused(tmp_path: Path, capsys) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "something.txt").write_text("not ours")
    got, _, err = _run(cli.main, ["node", "--data-dir", str(d)], capsys)
    assert got == 2 and "not written by multiraft" in err
    (d / "cluster.json").write_text("{not json")
    got, _, err = _run(cli.main, ["node", "--data-dir", str(d)], capsys)
    assert got == 2 and "unreadable" in err
    (d / "cluster.json").write_text(json.dumps({"format": "other"}))
    got, _, err = _run(cli.main, ["node", "--data-dir", str(d)], capsys)
    assert got == 2 and "not written by multiraft" in err


# --- against a running node (fake worker) ---


@pytest.fixture(scope="module")
def fake_node(tmp_path_factory):
    base = tmp_path_factory.mktemp("clinode")
    cluster = ProcessCluster(base, nodes=1, workers=2, groups=8, env=FAKE_WORKER_ENV)
    cluster.start()
    import trio

    trio.run(lambda: cluster.wait_healthy(timeout_s=30))
    yield cluster
    assert cluster.stop(), "the node did not stop cleanly"
    assert not cluster.any_process_left()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "multiraft.cli", *args], capture_output=True, timeout=60, env=e)


@pytest.mark.integration
def test_put_get_del_through_the_cli(fake_node) -> None:
    cl = fake_node.addresses[0]
    assert _cli("put", "greeting", "hello", "--cluster", cl).returncode == 0
    r = _cli("get", "greeting", "--cluster", cl)
    assert (r.returncode, r.stdout) == (0, b"hello\n")
    r = _cli("get", "greeting", env={"MULTIRAFT_CLUSTER": cl})
    assert r.stdout == b"hello\n"
    assert _cli("--cluster", cl, "del", "greeting").returncode == 0
    r = _cli("get", "greeting", "--cluster", cl)
    assert r.returncode == 1 and b"not found" in r.stderr and r.stdout == b""


@pytest.mark.integration
def test_admin_status_table_and_json(fake_node, capsys) -> None:
    cl = fake_node.addresses[0]
    code, out, _ = _run(admin_cli.main, ["--cluster", cl, "status"], capsys)
    assert code == 0 and "GROUP" in out and "n1" in out and "LEADER" in out
    code, out, _ = _run(admin_cli.main, ["--cluster", cl, "status", "--json"], capsys)
    doc = json.loads(out)
    assert doc["nodes"][0].keys() >= {"id", "address", "up"} and doc["nodes"][0]["up"] is True
    assert len(doc["groups"]) == 8
    assert doc["groups"][0].keys() >= {"id", "leader", "term", "commit", "voters", "learners", "voters_outgoing"}


@pytest.mark.integration
def test_second_node_on_the_same_data_dir_is_refused(fake_node) -> None:
    n = fake_node.nodes["n1"]
    port = free_base_ports(1, 2)[0]
    r = _cli("node", "--data-dir", str(n.data_dir), "--node-id", "n1", "--listen", f"127.0.0.1:{port}",
             "--peers", f"n1=127.0.0.1:{port}")
    assert r.returncode == 2
    assert b"--peers differs" in r.stderr or b"in use" in r.stderr


@pytest.mark.integration
def test_restart_with_another_layout_is_refused(fake_node) -> None:
    n = fake_node.nodes["n1"]
    r = _cli("node", "--data-dir", str(n.data_dir), "--workers", "3")
    assert r.returncode == 2 and b"--workers" in r.stderr and len(r.stderr.splitlines()) == 1


def test_max_clock_drift_ms_from_the_flag_the_toml_file_and_the_default(tmp_path: Path) -> None:
    from multiraft.cli import _raw_node_options, build_parser

    assert resolve(RawOptions(), cwd=tmp_path).max_clock_drift_ms == 200
    args = build_parser().parse_args(["node", "--max-clock-drift-ms", "150"])
    assert resolve(_raw_node_options(args), cwd=tmp_path).max_clock_drift_ms == 150
    f = tmp_path / "n.toml"
    f.write_text("max_clock_drift_ms = 120\n")
    assert resolve(load_toml(f), cwd=tmp_path).max_clock_drift_ms == 120
    f.write_text('max_clock_drift_ms = "lots"\n')
    with pytest.raises(ConfigError, match="max_clock_drift_ms must be an integer"):
        load_toml(f)
    with pytest.raises(ConfigError, match="--max-clock-drift-ms must be an integer"):
        resolve(RawOptions(max_clock_drift_ms=-1), cwd=tmp_path)
