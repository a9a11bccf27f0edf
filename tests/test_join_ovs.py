"""Hosts that join, end to end: etcd, Mininet with userspace OVS, the
controller with controller.apps.probes, a DPDK agent per host and a chain
carrying 500 packets a second.  A server the topology file lacks is
plugged into a running switch and its agent started: the controller finds
it by its probe answer on a free port, takes it in and, once the file's
hosts are drained, runs the chain's instances there with traffic flowing.
A second server whose MAC is a known host's is refused and nothing
changes."""
import pytest

from conftest import emulation_fixture
from onvm.services import wait_for

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(300)]

TOPOLOGY = """\
name: join-test
switches:
  - {name: spine, dpid: 0x401}
  - {name: leafa, dpid: 0x411}
  - {name: leafb, dpid: 0x412}
hosts:
  - {name: h1, switch: leafa, port: 1, mac: '02:00:00:00:04:01', ip: 10.4.1.1/16, cores: 2}
  - {name: h2, switch: leafb, port: 1, mac: '02:00:00:00:04:02', ip: 10.4.2.1/16, cores: 2}
links:
  - {a: leafa, a_port: 5, b: spine, b_port: 1}
  - {a: leafb, a_port: 5, b: spine, b_port: 2}
edges:
  - {name: outside, switch: spine, port: 7}
  - {name: inside, switch: leafb, port: 7}
nfs: {monitor: {cores: 1, mpps: 14}, forward: {cores: 1, mpps: 20}}
chains:
  - {name: joined, ingress: outside, egress: inside, nfs: [monitor, forward],
     match: {ipv4_dst: 10.9.0.0/16, ip_proto: 17}, mpps: 1.0}
"""
PPS = 500


emu = emulation_fixture("join-test", TOPOLOGY, pps_per_mpps=PPS)


def controller_log(emu):
    with open(emu.file("controller.log"), errors="replace") as f:
        return f.read()


def instances_on(emu, host):
    return (emu.store.plans().get(host) or {}).get("instances", [])


def test_a_server_plugged_in_joins_and_receives_the_chain(emu):
    emu.add_host("h9", "leafb", 3, "02:00:00:00:04:09", "10.4.9.1/16")
    wait_for(lambda: "host h9 joined at leafb port 3: mac 02:00:00:00:04:09, "
                     "ip 10.4.9.1/16" in controller_log(emu), 60, "h9 joined")
    wait_for(lambda: "h9" in emu.store.plans(), 30, "a plan for h9")
    label = emu.store.plans()["h9"]["node_label"]
    assert label not in (16, 17)            # h1's and h2's
    # its transport label is in every switch's table
    for i in range(3):
        flows = emu.ovs.ofctl("dump-flows", f"{emu.prefix}s{i}", "table=1")
        assert f"mpls_label={label}" in flows, i
    # the file's hosts go: the chain can only run on the joined one
    for name in ("h1", "h2"):
        emu.drain_host(name)
    wait_for(lambda: {i["nf"] for i in instances_on(emu, "h9")} == {"monitor", "forward"}
             and not instances_on(emu, "h1") and not instances_on(emu, "h2"),
             60, "the chain's instances on h9 only")
    wait_for(lambda: (emu.store.get_applied("h9") or 0) >=
             emu.store.plans()["h9"]["generation"], 30, "h9 runs its plan")
    before = emu.received("joined").get("received", 0)
    wait_for(lambda: emu.received("joined").get("received", 0) - before >= 200, 30,
             "traffic through the instances on h9")
    wait_for(lambda: (emu.store.get_stats("h9") or {}).get("processed", 0) > 0, 30,
             "h9's fast path counts the packets it processed")


def test_a_joined_host_that_fails_is_lost_and_its_chain_re_placed(emu):
    for name in ("h1", "h2"):
        emu.drain_host(name, drain=False)
    emu.fail_host("h9")             # agent SIGKILLed, link down
    wait_for(lambda: "host h9 lost: no switch reaches it" in controller_log(emu), 30,
             "h9 lost")
    wait_for(lambda: "h9" not in emu.store.plans() and
             {i["nf"] for h in ("h1", "h2") for i in instances_on(emu, h)}
             == {"monitor", "forward"}, 30, "the chain back on h1 and h2")
    before = emu.received("joined").get("received", 0)
    wait_for(lambda: emu.received("joined").get("received", 0) - before >= 200, 30,
             "traffic through h1 and h2 again")


def test_a_server_with_a_known_mac_is_refused_and_nothing_changes(emu):
    def placed():       # generations may move on as weights follow load; instances not
        return {h: sorted((i["nf"], i["id"]) for i in p.get("instances", []))
                for h, p in emu.store.plans().items()}
    plans = placed()
    emu.add_host("h8", "leafa", 3, "02:00:00:00:04:01", "10.4.8.1/16")     # h1's MAC
    refused = ("join refused, nothing changed: host h8 (seen at leafa port 3): "
               "mac: 02:00:00:00:04:01 is already host h1's")
    wait_for(lambda: refused in controller_log(emu), 60, "h8 refused")
    wait_for(lambda: "h8" in emu.store.hosts(), 10, "h8 registered")
    assert "host h8 joined" not in controller_log(emu)
    assert placed() == plans
    leafa = emu.ovs.ofctl("dump-flows", f"{emu.prefix}s1", "table=0")
    assert "in_port=3,dl_type=0x88b5 actions=CONTROLLER" not in leafa    # no probe punt
    assert emu.controller.poll() is None
