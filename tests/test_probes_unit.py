"""controller.probing with a fake clock, and the probe rules of
controller.flows through the OpenFlow simulator: sessions come up after
three answers, go down after three unanswered probes while peers answer,
never when nobody answers (the observer's fault), come back after three
answers; odd answers are counted and noted once; probes never cross the
trust boundary, and a host's answers go to the controller."""
import pytest

from contracts import wire
from controller import flows
from controller.fabric import build_graph
from controller.ofsim import FabricSim, rule_kinds
from controller.probing import PROBE_SRC_MAC, Prober, parse_answer, probe_frame
from controller.topology import load_topology

TOPO = "topologies/leaf-spine.yaml"
I = 0.05


@pytest.fixture(scope="module")
def topo():
    return load_topology(TOPO)


def answer_of(frame):
    """What the fast path does to a probe (host_agent/manager.pyx)."""
    f = bytearray(frame)
    f[0:6], f[6:12] = frame[6:12], frame[0:6]
    f[wire.PROBE_KIND_OFFSET] = wire.PROBE_ANSWER
    return bytes(f)


class Fabric:
    """Hosts whose fast path answers unless dead."""

    def __init__(self, topo, dead=()):
        self.prober = Prober(topo, I, token=7)
        self.dpids = {sw.dpid for sw in topo.switches}
        self.dead = set(dead)
        self.now = 0.0

    def tick(self, answered=True):
        self.now = round(self.now + I, 6)
        for p in self.prober.tick(self.now, self.dpids):
            if answered and p.host not in self.dead:
                assert self.prober.answer(p.dpid, p.port, answer_of(p.frame),
                                          self.now + 0.001) == p.host
        return self.prober.changes()


def test_frame_layout_is_the_wire_contract():
    frame = probe_frame("02:00:00:00:00:01", 5, 7, 123)
    assert len(frame) == wire.PROBE_LEN
    assert frame[12:14] == wire.ETH_PROBE.to_bytes(2, "big")
    assert frame[wire.PROBE_KIND_OFFSET] == wire.PROBE_REQUEST
    assert parse_answer(frame) is None, "a request is no answer"
    assert parse_answer(answer_of(frame)) == ("02:00:00:00:00:01", 5, 7, 123)


def test_up_after_three_answers_down_after_three_misses_up_again(topo):
    fab = Fabric(topo)
    assert fab.tick() == [] and fab.tick() == []
    assert fab.prober.verdicts() == {}, "no word before three answers"
    up = fab.tick()
    assert sorted(h for h, ok, _ in up if ok) == sorted(h.name for h in topo.hosts)
    assert up[0][2] == "its fast path answered 3 probes in a row"
    fab.dead.add("h2")
    got = [fab.tick() for _ in range(4)]
    assert got[:3] == [[], [], []]
    assert got[3] == [("h2", False, "its fast path answered none of 3 probes in a row "
                                    "(3 x 50 ms) while its peers answered")]
    assert fab.prober.verdicts()["h2"] is False and fab.prober.verdicts()["h1"] is True
    assert fab.tick() == [], "a verdict changes once"
    fab.dead.clear()
    assert fab.tick() == [] and fab.tick() == []
    assert fab.tick() == [("h2", True, "its fast path answered 3 probes in a row again")]


def test_nobody_answering_is_the_observers_fault_not_the_hosts(topo):
    fab = Fabric(topo)
    for _ in range(3):
        fab.tick()
    for _ in range(10):
        assert fab.tick(answered=False) == []
    notes = fab.prober.notes()
    assert len(notes) == 1 and notes[0].startswith("no host answered probes 4 to 6 within 50 ms each")
    assert all(fab.prober.verdicts().values())
    fab.tick()
    assert fab.prober.notes() == ["probes are answered again; the misses of probes 4 to 14 "
                                  "are not counted against any host (their answers were "
                                  "held up on the way)"]


def test_a_host_that_never_answered_has_no_verdict(topo):
    fab = Fabric(topo, dead={"h1"})
    for _ in range(10):
        fab.tick()
    assert "h1" not in fab.prober.verdicts()


def test_a_disconnected_switch_drops_its_hosts_verdicts(topo):
    fab = Fabric(topo)
    for _ in range(3):
        fab.tick()
    h1 = topo.host("h1")
    gone = next(sw.dpid for sw in topo.switches if sw.name == h1.switch)
    fab.dpids.discard(gone)
    for _ in range(5):
        assert all(ok for _, ok, _ in fab.tick()), "not probed is not unreachable"
    assert "h1" not in fab.prober.verdicts()
    assert any(n.startswith("host h1: probe verdict dropped") for n in fab.prober.notes())


def test_odd_answers_are_counted_and_noted_once_per_port(topo):
    prober = Prober(topo, I, token=7)
    dpids = {sw.dpid for sw in topo.switches}
    probes = prober.tick(1.0, dpids)
    p = probes[0]
    good = answer_of(p.frame)
    edge = topo.edges[0]
    edge_dpid = next(sw.dpid for sw in topo.switches if sw.name == edge.switch)
    for _ in range(3):
        assert prober.answer(edge_dpid, edge.port, good, 1.01) is None
        assert prober.answer(p.dpid, p.port, b"\x00" * 13, 1.01) is None
        assert prober.answer(p.dpid, p.port, p.frame, 1.01) is None     # a request
    other = bytearray(good)
    other[6:12] = bytes.fromhex("020000000099")
    assert prober.answer(p.dpid, p.port, bytes(other), 1.01) is None
    foreign = Prober(topo, I, token=8).tick(1.0, dpids)[0]
    assert prober.answer(p.dpid, p.port, answer_of(foreign.frame), 1.01) is None
    assert prober.answer(p.dpid, p.port, good, 1.01) == p.host
    assert prober.answer(p.dpid, p.port, good, 1.02) is None             # twice: late
    c = prober.counters
    assert (c["unknown"], c["malformed"], c["foreign"], c["answered"], c["late"]) == \
        (4, 6, 1, 1, 1)
    notes = prober.notes()
    assert len(notes) == 3, notes
    assert notes[0] == (f"switch {edge_dpid:#x} port {edge.port}: a probe answer from "
                        f"{p.frame[0:6].hex(':')} on a port that is no host's; ignored "
                        "(counted as unknown, noted once per port)")
    assert "not from" in notes[2] and PROBE_SRC_MAC not in notes[2]


def test_probes_never_cross_the_trust_boundary_and_answers_reach_the_controller(topo):
    rules = flows.switch_rules(topo, build_graph(topo), {})
    fabric = FabricSim(topo, rules)
    probe = {"eth_type": wire.ETH_PROBE, "eth_dst": topo.hosts[0].mac,
             "eth_src": PROBE_SRC_MAC}
    for edge in topo.edges:
        trace = []
        sw = fabric.switches[edge.switch]
        assert sw.process(probe, edge.port, trace) == []
        assert rule_kinds(trace) == ["edge_drop"]
    for server in topo.servers:
        trace = []
        assert fabric.switches[server.switch].process(probe, server.port, trace) == []
        assert rule_kinds(trace) == ["edge_drop"]
    for host in topo.hosts:
        trace = []
        out = fabric.switches[host.switch].process(probe, host.port, trace)
        assert [port for port, _ in out] == [flows.OFPP_CONTROLLER]
        assert rule_kinds(trace) == ["probe"]


@pytest.mark.parametrize("flag, value", [("--lease-ttl", "-1"), ("--stats-publish", "0")])
def test_the_agents_lease_ttl_is_a_flag_and_a_bad_one_is_a_usage_error(flag, value):
    """With probes on, the lease is a backstop: `onvm agent --lease-ttl S`;
    and how often it puts its stats summary, `--stats-publish S` (an
    emulation's publish_interval), is checked alike."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "onvm.cli", "agent", "--host", "h1",
                          "--store", "http://127.0.0.1:1", flag, value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"onvm agent: {flag} must be more than 0 seconds, not {value}"
