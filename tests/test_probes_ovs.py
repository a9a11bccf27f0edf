"""Liveness from the data plane, end to end: etcd, Mininet with userspace
OVS, the controller with controller.apps.probes, a DPDK agent per host and
a chain carrying 500 packets a second across hosts (onvm.probebench's
data center).  An agent is SIGKILLed with its link up: its fast path stops
answering the controller's probes, the controller declares the host lost
because of the probes (its log says so, before the 1 s lease could) and
traffic comes back on the other hosts.
How fast is BENCHMARKS.md's ("Liveness probes"), never asserted here."""
import os
import re
import signal
import time

import pytest

from conftest import emulation_fixture
from contracts.wire import ETH_PROBE, PROBE_ANSWER, PROBE_KIND_OFFSET
from controller.probing import PROBE_SRC_MAC, probe_frame
from onvm.failover import measure_failover
from onvm.probebench import CHAIN, PPS, TOPOLOGY
from onvm.services import wait_for

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(240)]


emu = emulation_fixture("probes-test", TOPOLOGY, pps_per_mpps=PPS)


def controller_log(emu):
    with open(emu.file("controller.log"), errors="replace") as f:
        return f.read()


def test_every_host_answers_probes_before_anything_fails(emu):
    hosts = [h.name for h in emu.topo.hosts]
    wait_for(lambda: all(f"probe: host {h} reachable" in controller_log(emu)
                         for h in hosts), 30, "every host reachable by probes")


def send_raw(emu, place, frame, count):
    """`count` copies of `frame` out of `place`'s interface, from its namespace."""
    emu.nodes[place].cmd(
        f"python3 -c \"import socket; s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
        f"s.bind(('{emu.intf[place]}', 0)); "
        f"[s.send(bytes.fromhex('{frame.hex()}')) for _ in range({count})]\"")


def test_probes_from_outside_are_dropped_and_odd_answers_logged_once(emu):
    """Trust boundary: probe frames from an edge port are dropped and counted
    by the edge switch (edge_drop).  An answer from a host port with another
    MAC than the host's is counted and logged once, never a crash."""
    edge = emu.topo.edge("outside")
    bridge = f"{emu.prefix}s{[s.name for s in emu.topo.switches].index(edge.switch)}"

    def dropped():
        out = emu.ovs.ofctl("dump-flows", bridge, f"table=0,in_port={edge.port},"
                                                  f"dl_type={ETH_PROBE:#x}")
        return sum(int(x.split("=")[1].rstrip(","))
                   for x in out.split() if x.startswith("n_packets="))
    before = dropped()
    host = emu.topo.hosts[0]
    send_raw(emu, "outside", probe_frame(host.mac, 1, 1, 0), 20)
    wait_for(lambda: dropped() - before >= 20, 10,
             f"20 probes from edge {edge.name} counted by {bridge}'s edge_drop rule")
    forged = bytearray(probe_frame(PROBE_SRC_MAC, 1, 1, 0))
    forged[6:12] = bytes.fromhex("020000000099")       # from the host's port, not its MAC
    forged[PROBE_KIND_OFFSET] = PROBE_ANSWER
    send_raw(emu, host.name, bytes(forged), 5)
    note = f"a probe answer from 02:00:00:00:00:99, not from {host.name}"
    wait_for(lambda: note in controller_log(emu), 10, "the odd answer in the log")
    time.sleep(0.5)
    assert controller_log(emu).count(note) == 1, "logged once"
    assert emu.controller.poll() is None


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
    assert result["recover_s"] is not None and result["chains"] == [CHAIN]
    plans = emu.store.plans()
    assert victim not in plans and len(plans) == 2


def test_a_hung_agent_is_lost_by_probes_and_back_when_it_answers_again(emu):
    """SIGSTOP an agent (its loop hangs, its link and lease stay) until the
    probes declare it unreachable, then SIGCONT: three answers make it
    reachable again, and with its key still there it serves again."""
    victim = sorted(h for h in emu.agents if h not in emu.killed)[0]
    pid = emu.agents[victim].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: re.search(rf"host {victim} lost: probes fail", controller_log(emu)),
                 30, f"{victim} lost by probes while its agent is stopped")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: f"probe: host {victim} reachable: its fast path answered 3 probes "
                     f"in a row again" in controller_log(emu), 30, f"{victim} answers again")
    wait_for(lambda: f"host {victim} alive again" in controller_log(emu), 30,
             f"{victim} serving again")
