"""onvm.web on loopback: the HTTP server and the TCP client the emulation
runs in its namespaces, as real processes and sockets."""
import os
import socket
import subprocess
import sys
import threading

import pytest

from onvm import procs, web
from onvm.services import free_port, wait_for
from onvm.traffic import read_status


def test_body_is_deterministic_names_the_server_and_has_the_length_asked():
    assert web.body("web1", 5000) == web.body("web1", 5000)
    assert len(web.body("web1", 5000)) == 5000 and len(web.body("web1", 0)) == 0
    assert web.body("web1", 100).startswith(b"web1 serves byte 0\n")
    assert web.body("web1", 100) != web.body("web2", 100)


def test_check_accepts_only_the_full_correct_body():
    good = (b"HTTP/1.0 200 OK\r\nX-Onvm-Server: web1\r\nX-Onvm-Client: 1.2.3.4:5\r\n\r\n"
            + web.body("web1", 300))
    assert web.check("/300", good) == ("web1", "1.2.3.4")
    with pytest.raises(ValueError, match="body of 299 bytes, not 300"):
        web.check("/300", good[:-1])
    with pytest.raises(ValueError, match="wrong body bytes"):
        web.check("/300", good[:-1] + b"?")
    with pytest.raises(ValueError, match="HTTP 404"):
        web.check("/300", b"HTTP/1.0 404 Not Found\r\n\r\n")
    with pytest.raises(ValueError, match="no end of headers"):
        web.check("/300", b"HTTP/1.0 200 OK\r\n")


def serve_process(name, port, status):
    return subprocess.Popen([sys.executable, "-m", "onvm.web", "serve", "--name", name,
                             "--port", str(port), "--status", status], cwd=procs.REPO,
                            env=procs.child_env())


@pytest.fixture
def server(tmp_path):
    """`python -m onvm.web serve`, as the emulation runs it: a process of
    its own (a thread of the test run would share modules that another
    test file's eventlet imports may have left green, and its shutdown
    then waits forever)."""
    port = free_port()
    status = str(tmp_path / "server.json")
    proc = serve_process("web1", port, status)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port)).close() or True, 10,
                 "the server to listen")
        yield port, status
    finally:
        procs.stop(proc, "the web server")


def test_client_gets_full_bodies_counts_servers_and_what_they_saw(server, tmp_path):
    port, server_status = server
    status = web.get("127.0.0.1", port, "/70000", str(tmp_path / "client.json"),
                     rate=200, count=30)
    assert status["ok"] == 30 and status["failed"] == 0, status
    assert status["servers"] == {"web1": 30}
    assert status["seen_as"] == {"127.0.0.1": 30}
    wait_for(lambda: (read_status(server_status) or {}).get("served") == 30, 5,
             "the server's count of 30")
    assert read_status(server_status)["clients"] == {"127.0.0.1": 30}


def test_server_answers_id_as_root(server, tmp_path):
    port, _ = server
    status = web.get("127.0.0.1", port, web.ID_PATH, str(tmp_path / "c.json"), rate=50,
                     count=1)
    assert status["ok"] == 1
    raw = web.fetch("127.0.0.1", port, web.ID_PATH)
    assert raw.endswith(b"uid=0(root) gid=0(root) groups=0(root)\n")


def test_client_counts_refused_connections_as_failed(tmp_path):
    status = web.get("127.0.0.1", free_port(), "/10", str(tmp_path / "c.json"), rate=100,
                     count=5, timeout=2)
    assert status["ok"] == 0 and status["failed"] == 5
    assert "ConnectionRefusedError" in status["errors"][0]


def test_server_that_sends_a_short_body_fails_the_check(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def liar():
        for _ in range(3):
            conn, _ = listener.accept()
            conn.recv(1000)
            conn.sendall(b"HTTP/1.0 200 OK\r\nX-Onvm-Server: web1\r\n\r\n"
                         + web.body("web1", 99))
            conn.close()
    threading.Thread(target=liar, daemon=True).start()
    status = web.get("127.0.0.1", listener.getsockname()[1], "/100",
                     str(tmp_path / "c.json"), rate=50, count=3)
    listener.close()
    assert status["ok"] == 0 and status["failed"] == 3
    assert "body of 99 bytes, not 100" in status["errors"][0]


def test_processes_run_report_and_stop_on_sigterm(tmp_path):
    port = free_port()
    sstat, cstat, rate = (str(tmp_path / n) for n in ("s.json", "c.json", "rate"))
    env = procs.child_env()
    srv = serve_process("web9", port, sstat)
    cli = None
    try:
        wait_for(lambda: read_status(sstat), 15, "the server's first status")
        with open(rate, "w") as f:
            f.write("20")
        cli = subprocess.Popen([sys.executable, "-m", "onvm.web", "get", "--dst", "127.0.0.1",
                                "--port", str(port), "--path", "/3000", "--rate", "0",
                                "--rate-file", rate, "--status", cstat],
                               cwd=procs.REPO, env=env)
        wait_for(lambda: (read_status(cstat) or {}).get("ok", 0) >= 5, 20,
                 "5 connections through the client process")
        procs.stop(cli, "the client")
        final = read_status(cstat)
        assert final["done"] and final["failed"] == 0 and final["servers"]["web9"] == final["ok"]
    finally:
        procs.stop(cli, "the client")
        procs.stop(srv, "the server")
    assert read_status(sstat)["done"]


# ------------------------------------------------------------ webplan (pure)

def plan_topology():
    from contracts.model import Chain, Edge, Server, Switch, Topology
    servers = (Server("web1", "leaf1", 5, "02:00:00:00:01:10", "10.0.1.10/24"),
               Server("web2", "leaf1", 6, "02:00:00:00:01:11", "10.0.1.11/24"),
               Server("db", "leaf1", 7, "02:00:00:00:01:12", "10.0.1.12/24"))
    chains = (
        Chain("web", "internet", "web1", {"ipv4_dst": "10.0.9.9/32", "ip_proto": 6,
                                          "tcp_dst": 8080}, ("nat", "lb"), 1.0, 16,
              symmetric=True, pool=("web1", "web2")),
        Chain("sql", "wan", "db", {"ipv4_dst": "10.0.1.0/24", "ip_proto": 6,
                                   "ipv4_src": "203.0.113.0/24"}, ("nat",), 1.0, 17,
              symmetric=True),
        Chain("dns", "wan", "db", {"ipv4_dst": "10.0.1.12/32", "ip_proto": 17}, ("nat",),
              1.0, 18),
        Chain("old", "wan", "internet", {"ip_proto": 6}, ("monitor",), 1.0, 19))
    return Topology("t", (Switch("leaf1", 1),), (), (),
                    (Edge("internet", "leaf1", 1), Edge("wan", "leaf1", 2)), {}, chains,
                    servers=servers)


def test_webplan_clients_only_for_tcp_to_servers_toward_vip_or_server():
    from onvm import webplan
    topo = plan_topology()
    clients = {c.chain: c for c in webplan.clients(topo)}
    assert sorted(clients) == ["sql", "web"]     # dns is UDP, old ends at an edge
    web, sql = clients["web"], clients["sql"]
    assert (web.edge, web.dst, web.port, web.dst_mac) == ("internet", "10.0.9.9", 8080,
                                                           "02:00:00:00:01:10")
    assert (sql.edge, sql.dst, sql.port) == ("wan", "10.0.1.12", 80)
    assert web.src == "192.0.2.100" and sql.src.startswith("203.0.113.")
    assert webplan.server_ports(topo) == {"web1": [8080], "web2": [8080], "db": [80]}


def test_webplan_namespace_setup_needs_no_arp():
    from onvm import webplan
    cmds = webplan.server_setup("v0")
    assert "ethtool -K v0 tx off" in cmds and "ip link set v0 mtu 1400" in cmds
    assert any("nud permanent" in c and webplan.GATEWAY_IP in c for c in cmds)
    edge = webplan.edge_setup("e0", webplan.clients(plan_topology())[:1])
    assert "ip neigh replace 10.0.9.9 lladdr 02:00:00:00:01:10 dev e0 nud permanent" in edge


def test_webplan_ipv6_chains_get_ipv6_clients_servers_and_static_neighbours():
    import dataclasses
    from onvm import webplan
    topo = plan_topology()
    web6 = dataclasses.replace(topo.chain("web"), name="web6", spi=40,
                               match={"ipv6_dst": "2001:db8:80::/64", "ip_proto": 6})
    db6 = dataclasses.replace(topo.chain("sql"), name="db6", spi=41,
                              match={"ipv6_dst": "2001:db8:90::/64", "ip_proto": 6})
    servers = tuple(dataclasses.replace(s, ip6=f"2001:db8:2::{s.name[-1]}")
                    if s.name.startswith("web") else s for s in topo.servers)
    topo = dataclasses.replace(topo, chains=topo.chains + (web6, db6), servers=servers)
    client = {c.chain: c for c in webplan.clients(topo)}["web6"]
    assert client.dst == "2001:db8:80::10" and client.src.startswith("2001:db8:ffff::")
    # a pool's servers take their ip6 (its VIP is the lb's); a chain's one
    # server takes the chain's destination
    assert webplan.server_addresses6(topo) == {"web1": ["2001:db8:2::1"],
                                               "web2": ["2001:db8:2::2"],
                                               "db": ["2001:db8:90::10"]}
    server = webplan.server_setup("v0", ["2001:db8:80::10"])
    assert "ip -6 addr replace 2001:db8:80::10/128 dev v0 nodad" in server
    assert any("ip -6 neigh replace fe80::1" in c and "nud permanent" in c for c in server)
    assert "sysctl -qw net.ipv6.conf.v0.disable_ipv6=0" in server
    assert not any("ipv6" in c or "-6" in c for c in webplan.server_setup("v0"))
    edge = webplan.edge_setup("e0", [client])
    assert f"ip -6 neigh replace 2001:db8:80::10 lladdr {client.dst_mac} dev e0 " \
           "nud permanent" in edge
