"""Liveness from the data plane, end to end: etcd, Mininet with userspace
OVS, the controller with controller.apps.probes, a DPDK agent per host and
a chain carrying 500 packets a second across hosts.  An agent is SIGKILLed
with its link up: its fast path stops answering the controller's probes,
the controller declares the host lost because of the probes (its log says
so, before the 1 s lease could) and traffic comes back on the other hosts.
How fast is BENCHMARKS.md's ("Liveness probes"), never asserted here."""
import re

import pytest

from onvm.emulate import Emulation
from onvm.failover import measure_failover
from onvm.services import wait_for
from test_emulate import need_root_and_tools

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(240)]

# Two one-core NFs on three one-core hosts (two leaves under one spine):
# one host is spare, so the NF of the host whose agent dies can move.
HOSTS = [("p1", "leafa", 1), ("p2", "leafa", 2), ("p3", "leafb", 1)]
TOPOLOGY = "\n".join(
    ["name: probes-test", "switches:"]
    + [f"  - {{name: {sw}, dpid: {dpid:#x}}}" for sw, dpid in
       (("spine", 0x301), ("leafa", 0x311), ("leafb", 0x312))]
    + ["hosts:"]
    + [f"  - {{name: {n}, switch: {sw}, port: {port}, mac: '02:00:00:00:03:0{i}', "
       f"ip: 10.3.{i}.1/16, cores: 1}}" for i, (n, sw, port) in enumerate(HOSTS, 1)]
    + ["links:", "  - {a: leafa, a_port: 5, b: spine, b_port: 1}",
       "  - {a: leafb, a_port: 5, b: spine, b_port: 2}",
       "edges:", "  - {name: outside, switch: spine, port: 7}",
       "  - {name: inside, switch: leafb, port: 7}",
       "nfs: {monitor: {cores: 1, mpps: 14}, forward: {cores: 1, mpps: 20}}",
       "chains:",
       "  - {name: probed, ingress: outside, egress: inside, nfs: [monitor, forward],",
       "     match: {ipv4_dst: 10.9.0.0/16, ip_proto: 17}, mpps: 1.0}", ""])
PPS = 500


@pytest.fixture(scope="module")
def emu(request, tmp_path_factory, run_prefix):
    need_root_and_tools()
    workdir = tmp_path_factory.mktemp("probes")
    topo_path = workdir / "probes-test.yaml"
    topo_path.write_text(TOPOLOGY)
    emulation = Emulation(str(topo_path), prefix=run_prefix, workdir=str(workdir),
                          pps_per_mpps=PPS)
    request.addfinalizer(emulation.remove_files)      # finalizers run last first
    request.addfinalizer(emulation.stop)
    emulation.start()
    return emulation


def controller_log(emu):
    with open(emu.file("controller.log"), errors="replace") as f:
        return f.read()


def test_every_host_answers_probes_before_anything_fails(emu):
    hosts = [h.name for h in emu.topo.hosts]
    wait_for(lambda: all(f"probe: host {h} reachable" in controller_log(emu)
                         for h in hosts), 30, "every host reachable by probes")


def test_an_agent_killed_with_its_link_up_is_lost_by_probes_and_traffic_returns(emu):
    result = measure_failover(emu, settle=2.0, how="crash")
    print("crash with link up, found by probes:", result)
    victim = result["host"]
    log = controller_log(emu)
    unreachable = re.search(rf"probe: host {victim} unreachable: (.*)", log)
    assert unreachable, f"no probe verdict on {victim} in the controller's log"
    lost = re.search(rf"host {victim} lost: (.*)", log)
    assert lost and lost.group(1).startswith("probes fail: its fast path answered none"), \
        f"{victim} was lost for another reason: {lost and lost.group(1)}"
    assert result["recover_s"] is not None and result["chains"] == ["probed"]
    plans = emu.store.plans()
    assert victim not in plans and len(plans) == 2
