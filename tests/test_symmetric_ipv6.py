"""Real TCP over IPv6 through a symmetric chain (issue 12, IPv6 end to
end): an emulation (etcd, Mininet with OVS, ryu-manager, agents) whose
chain web6 matches IPv6 to a server and runs firewall-stateful then
monitor, one NF a host, so the way back crosses hosts too.  The edge's
client opens HTTP connections over IPv6; the server's replies come back
by the IPv6 reply rules its switch learns, through the monitor and the
firewall (whose connection table lets them pass: its rules allow only
new connections to the server), to the client.  A server's packet that
answers nothing is dropped at its switch.

And an IPv6 chain through [firewall-stateful, lb] to a pool of two
servers with ip6: the client connects to the chain's VIP, the lb sends
each connection to a server's ip6 and the replies back from the VIP."""
import contextlib

import pytest

from conftest import need_root_and_tools, started_emulation
from onvm.services import wait_for
from test_symmetric import counter, instances

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(300)]

SERVER6 = "2001:db8:80::10"
TOPOLOGY = f"""\
name: symmetric-ipv6
switches:
  - {{name: s1, dpid: 0x1}}
hosts:
  - {{name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 1}}
  - {{name: h2, switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 1}}
links: []
edges:
  - {{name: internet, switch: s1, port: 10}}
servers:
  - {{name: web1, switch: s1, port: 5, mac: "02:00:00:00:01:10", ip: 10.0.1.10/24}}
nfs:
  firewall-stateful: {{cores: 1, mpps: 1, config: web6.rules}}
  monitor: {{cores: 1, mpps: 1}}
chains:
  - name: web6
    ingress: internet
    egress: web1
    symmetric: true
    match: {{ipv6_dst: "{SERVER6}/128", ip_proto: 6, tcp_dst: 80}}
    nfs: [firewall-stateful, monitor]
    mpps: 0.5
"""
RULES = f"allow tcp any {SERVER6}/128 any 80\ndefault deny\n"


@contextlib.contextmanager
def emulation(tmp_path, prefix, topology, rules, servers):
    """An emulation of `topology` (its firewall rules `rules`) whose chain
    web6 already carried HTTP over IPv6, and 20 connections more of it
    all ok, answered by `servers`; stopped and removed after."""
    need_root_and_tools()
    (tmp_path / "web6.rules").write_text(rules)
    path = tmp_path / "web6.yaml"
    path.write_text(topology)
    with started_emulation(path, prefix, tmp_path) as emu:
        wait_for(lambda: emu.tcp("web6")["ok"] >= 3, 120,
                 "the first HTTP connections over IPv6 through web6")
        status = emu.http("web6", 20, rate=10.0)
        assert status.get("ok") == 20 and not status.get("failed"), status
        assert set(status["servers"]) == set(servers), status
        yield emu
        assert emu.tcp("web6")["failed"] == 0, emu.tcp("web6")


def wait_counters(emu, nf, names, at_least):
    """Wait until every counter of `names` summed over `nf`'s instances
    reaches `at_least` (agents publish their stats every few seconds)."""
    wanted = lambda: all(sum(counter(emu, nf, name).values()) >= at_least for name in names)
    try:
        wait_for(wanted, 30, f"{nf}'s counters {', '.join(names)}")
    except TimeoutError:
        raise AssertionError(instances(emu, nf)) from None


def test_http_over_ipv6_goes_through_the_chain_both_ways(tmp_path, run_prefix):
    with emulation(tmp_path, run_prefix + "6", TOPOLOGY, RULES, ["web1"]) as emu:
        # every connection opened at the firewall; its replies passed by
        # the connection table (the rules would deny them)
        wait_counters(emu, "firewall-stateful", ("opened", "replies"), 23)
        v6 = counter(emu, "firewall-stateful", "connections6")
        assert sum(v6.values()) >= 1, v6           # closed ones linger `closing` seconds
        placed = {nf: {h for h, _ in instances(emu, nf)} for nf in ("firewall-stateful",
                                                                    "monitor")}
        assert len(placed["firewall-stateful"] | placed["monitor"]) == 2, \
            f"one NF a host, so the way back crossed hosts: {placed}"


POOL_VIP6 = "2001:db8:80::100"
POOL_TOPOLOGY = TOPOLOGY.replace("symmetric-ipv6", "pool-ipv6").replace(
    'ip: 10.0.1.10/24}', 'ip: 10.0.1.10/24, ip6: "2001:db8:2::10"}\n'
    '  - {name: web2, switch: s1, port: 6, mac: "02:00:00:00:01:11", ip: 10.0.1.11/24, '
    'ip6: "2001:db8:2::11"}').replace(
    "monitor: {cores: 1, mpps: 1}", "lb: {cores: 1, mpps: 1}").replace(
    "egress: web1", "egress: [web1, web2]").replace(SERVER6, POOL_VIP6).replace(
    "[firewall-stateful, monitor]", "[firewall-stateful, lb]")


def test_http_over_ipv6_through_lb_reaches_both_servers_of_a_pool(tmp_path, run_prefix):
    """The client connects to the VIP; the lb sends each connection to a
    server's ip6 and rewrites the replies back from the VIP."""
    with emulation(tmp_path, run_prefix + "p", POOL_TOPOLOGY,
                   RULES.replace(SERVER6, POOL_VIP6), ["web1", "web2"]) as emu:
        wait_counters(emu, "lb", ("balanced6", "replies6"), 20)
